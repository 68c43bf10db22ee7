"""The project's checkpointers: detectron2's ``DetectionCheckpointer`` made safe to resume from and
to evaluate with.

:class:`InstFCNCheckpointer` (the trainer's, ``instfcn_d2.engine.Trainer.checkpointer``):

* a file that is not a checkpoint (a text file, garbage, an empty or truncated file) raises
  :class:`NotACheckpointError` naming the file, instead of torch's unpickling errors (whose
  "re-run with ``weights_only=False``" advice does not apply to such a file);
* checkpoints and ``last_checkpoint`` are written atomically: to a hidden temporary file in the
  same folder, then renamed, so a run killed while saving never leaves a half-written file under
  a checkpoint's name;
* a file that unpickles to something other than a checkpoint (a list, a tensor, a whole pickled
  ``nn.Module``, a dict of strings, a dict without ``"model"`` whose values are not tensors) raises
  :class:`NotACheckpointError` naming the file and what it holds; a checkpoint is a dict of tensors
  (a plain ``torch.save(model.state_dict())``) or ``{'model': {...}, ...}`` (detectron2's);
* resuming (``resume_or_load(..., resume=True)``) from a damaged newest checkpoint, or from an
  empty or dangling ``last_checkpoint``, falls back to the newest loadable ``model_*.pth`` of the
  folder, with a warning naming what was skipped;
* a resume from a checkpoint whose parameters have other shapes than the model's (most often: the
  dataset's number of classes changed since) stops before loading, with
  :class:`CheckpointMismatchError` naming the checkpoint, the number of classes it was trained for
  and the config's (detectron2 would skip those weights and fail in the optimizer's step). The
  trainer records the config's class count in every checkpoint it saves (``extra_data``);
* :func:`remove_stale_temporary_files`: the temporary files a save killed outright (``SIGKILL``,
  power loss) leaves behind, removed when a run takes its OUTPUT_DIR
  (:mod:`instfcn_d2.engine.output_dir`).

:class:`StrictDetectionCheckpointer` adds strict loading: detectron2 only logs a warning and skips
a parameter whose shape differs (right for fine-tuning from ImageNet weights, wrong for using a
trained model: it would silently run with random weights). ``strict=True`` turns shape
mismatches, model parameters missing from the checkpoint and checkpoint parameters the model
lacks into an error naming the file and the parameters.

The weights check that every tool using a trained model makes (``tools/demo.py``,
``tools/visualize_predictions.py``, ``tools/visualize_score_maps.py``, ``tools/export_model.py``,
``tools/train_net.py --eval-only``), in two steps:

* :func:`require_trained_weights`, before anything is built: an empty ``MODEL.WEIGHTS`` (a
  randomly initialised model, whose output means nothing) is refused unless the user asked for
  it (``--allow-random-weights``), and a local file that does not exist is named;
* :func:`load_trained_weights`: the strict load above.
"""
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from fvcore.common.checkpoint import Checkpointer

from .data.files import atomic_write

__all__ = [
    "CheckpointMismatchError",
    "InstFCNCheckpointer",
    "MissingWeightsError",
    "NotACheckpointError",
    "StrictDetectionCheckpointer",
    "describe_checkpoint_content",
    "load_trained_weights",
    "remove_stale_temporary_files",
    "require_trained_weights",
]

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last_checkpoint"
# The entry of a checkpoint's extra data recording the config's class count(s), e.g.
# {"MODEL.ROI_HEADS.NUM_CLASSES": 20}: written by the trainer's checkpointer, compared on resume.
NUM_CLASSES_ENTRY = "num_classes"
# What atomic_write leaves when killed while writing a checkpoint or last_checkpoint:
# ".<name>.<random>.tmp" beside the file (instfcn_d2.data.files.atomic_write).
_STALE_TEMPORARY = re.compile(r"^\.(?:.+\.pth|last_checkpoint)\.[A-Za-z0-9_]+\.tmp$")
# The start of torch's legacy (pre-zip) format: the pickled magic number it writes first.
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit the model (missing or unexpected parameters, other shapes); the
    message names the file and the parameters."""


class MissingWeightsError(ValueError):
    """``MODEL.WEIGHTS`` is empty (a randomly initialised model) or names a file that does not exist."""


class NotACheckpointError(ValueError):
    """The file is not a readable checkpoint (text, garbage, empty, truncated); the message names it."""


def _describe_non_checkpoint(path: str) -> str:
    """Why ``path`` is not a torch checkpoint, or ``""`` when it looks like one (a zip archive, or
    torch's legacy format)."""
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        return "the file is empty"
    if zipfile.is_zipfile(path) or head.startswith(_TORCH_LEGACY_MAGIC):
        return ""
    if head.startswith(b"PK"):
        return "the zip archive is truncated or damaged (no central directory)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and "".join(text.split()).isprintable():
        return f"it is a text file (starts with {text[:40]!r})"
    return f"it is neither a zip archive nor torch's legacy format (starts with {head[:16]!r})"


def _not_a_checkpoint(path: str, why: str) -> NotACheckpointError:
    return NotACheckpointError(
        f"{path} is not a checkpoint: {why}. Expected a file written by torch.save / detectron2's "
        "checkpointer (e.g. OUTPUT_DIR/model_final.pth); check MODEL.WEIGHTS, or delete or replace the file"
    )


CHECKPOINT_FORM = "a dict of tensors or {'model': {...}}"


def _a(name: str) -> str:
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _kind(obj) -> str:
    """What ``obj`` is, for a message: "a list", "a tensor of shape (3, 4)", "an int", ..."""
    if isinstance(obj, torch.Tensor):
        return f"a tensor of shape {tuple(obj.shape)}"
    if isinstance(obj, torch.nn.Module):
        return f"a whole pickled model ({type(obj).__module__}.{type(obj).__qualname__})"
    if isinstance(obj, Mapping) and not obj:
        return "an empty dict"
    if isinstance(obj, Mapping):
        return "a dict"
    if isinstance(obj, str):
        return f"a str ({obj[:30]!r})"
    return _a(type(obj).__name__)


def _is_weights(value) -> bool:
    return isinstance(value, (torch.Tensor, np.ndarray))  # detectron2 converts numpy arrays


def _entries(items, limit=3) -> str:
    shown = [f"{k!r}: {repr(v[:20]) if isinstance(v, str) else _kind(v)}" for k, v in items[:limit]]
    return ", ".join(shown) + (", ..." if len(items) > limit else "")


def _content_problem(obj) -> Tuple[str, str]:
    """(what ``obj`` holds, a hint) when it is not a checkpoint, else ``("", "")``."""
    if not isinstance(obj, Mapping) or not obj:
        return _kind(obj), ""
    if "model" in obj:
        state = obj["model"]
        if not isinstance(state, Mapping) or not state:
            return f"a dict whose 'model' entry is {_kind(state)}", ""
        bad = [(k, v) for k, v in state.items() if not _is_weights(v)]
        return (f"a dict whose 'model' entry holds values that are not tensors ({_entries(bad)})" if bad else ""), ""
    bad = [(k, v) for k, v in obj.items() if not _is_weights(v)]
    if not bad:
        return "", ""
    if len(bad) == len(obj) and all(isinstance(v, str) for _, v in bad):
        return f"a dict of strings ({_entries(bad)})", ""
    what = f"a dict without 'model' whose values are not tensors ({_entries(bad)})"
    nested = [k for k, v in obj.items() if isinstance(v, Mapping) and v and all(_is_weights(x) for x in v.values())]
    if nested:  # e.g. {"state_dict": {...}, "epoch": 3} (Lightning and others)
        return what, f"; its {nested[0]!r} entry holds tensors: save that entry alone (torch.save(ckpt[{nested[0]!r}], PATH))"
    return what, ""


def describe_checkpoint_content(obj) -> str:
    """``""`` when ``obj`` (what a weights file unpickles to) is a checkpoint: a dict of tensors (a
    plain state dict) or a dict whose ``"model"`` is one (detectron2's; numpy arrays count as
    tensors); else what it holds, for :class:`NotACheckpointError` (``"a list"``, ``"a dict of
    strings ('a': 'b')"``, ...)."""
    return _content_problem(obj)[0]


def _check_content(path: str, obj) -> None:
    what, hint = _content_problem(obj)
    if what:
        raise _holds_other_than_a_checkpoint(path, what, hint)


def _holds_other_than_a_checkpoint(path: str, what: str, hint: str = "") -> NotACheckpointError:
    return NotACheckpointError(
        f"{path} holds {what}, not a checkpoint: {CHECKPOINT_FORM}{hint}. Expected a file written by "
        "torch.save(model.state_dict()) or detectron2's checkpointer (e.g. OUTPUT_DIR/model_final.pth); "
        "check MODEL.WEIGHTS"
    )


def _pickled_objects(path: str, error: Exception) -> Optional[NotACheckpointError]:
    """torch's weights-only loading refused ``path``: the error naming the Python objects pickled in
    it (a whole model saved with ``torch.save(model)``), or ``None`` to keep torch's own message
    (numpy arrays only: a checkpoint that torch's advice does apply to)."""
    if "Weights only load failed" not in str(error):
        return None
    find = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    try:
        names = list(find(path)) if find is not None else []
    except Exception:  # noqa: BLE001 - only used to describe the file
        names = []
    if not names or all(n.split(".")[0] == "numpy" for n in names):
        return None
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    if any(n.startswith("torch.nn.modules.") for n in names):
        what = f"a whole pickled model ({shown})"
        hint = "; a model saved whole with torch.save(model) loads only with its code: save model.state_dict() instead"
    else:
        what = f"pickled Python objects ({shown})"
        hint = ""
    return NotACheckpointError(f"{path} holds {what}, not a checkpoint: {CHECKPOINT_FORM}{hint}. Check MODEL.WEIGHTS")


class _CheckedTorchLoad(Checkpointer):
    """fvcore's ``torch.load`` of a checkpoint file, its result checked before detectron2 reads it.

    :class:`InstFCNCheckpointer` derives from ``DetectionCheckpointer`` and this class, so this
    ``_load_file`` is the one detectron2's own calls for the raw file (``super()._load_file`` in
    v0.6, ``_torch_load`` on main): the file is read once, and checked before detectron2 wraps a
    non-dict into ``{"model": ...}`` (or fails on a tensor with ``Tensor.__contains__``)."""

    def _load_file(self, f):
        try:
            loaded = super()._load_file(f)
        except pickle.UnpicklingError as e:
            clearer = _pickled_objects(f, e)
            if clearer is not None:
                raise clearer from None
            raise
        _check_content(f, loaded)
        return loaded


class InstFCNCheckpointer(DetectionCheckpointer, _CheckedTorchLoad):
    """``DetectionCheckpointer`` with clear errors for non-checkpoints, atomic writes and a resume
    that skips damaged checkpoints (see the module docstring). Same constructor."""

    # ---- reading ------------------------------------------------------------------------------
    def _load_file(self, filename):
        if filename.endswith((".pkl", ".pyth")):  # detectron2 / pycls model zoo formats (pickle)
            try:
                loaded = super()._load_file(filename)
            except (pickle.UnpicklingError, EOFError) as e:
                raise _not_a_checkpoint(filename, f"it does not unpickle ({type(e).__name__}: {e})") from e
            except (AttributeError, TypeError) as e:  # detectron2 reading a list, a tensor, ... as a dict
                try:
                    with open(filename, "rb") as f:
                        raw = pickle.load(f, encoding="latin1")
                except Exception:  # noqa: BLE001 - only used to describe the file
                    raw = None
                what = describe_checkpoint_content(raw) if raw is not None else ""
                raise _holds_other_than_a_checkpoint(filename, what or f"something detectron2 cannot read ({e})") from e
            _check_content(filename, loaded)
            return loaded
        why = _describe_non_checkpoint(filename)
        if why:
            raise _not_a_checkpoint(filename, why)
        try:
            return super()._load_file(filename)
        except (EOFError, zipfile.BadZipFile) as e:
            raise _not_a_checkpoint(filename, f"it is truncated or damaged ({type(e).__name__}: {e})") from e
        except (RuntimeError, pickle.UnpicklingError) as e:
            # torch's messages for a damaged archive / cut-off pickle; other errors (e.g. a valid
            # file holding objects that weights_only loading refuses) keep torch's own message.
            message = str(e)
            if any(s in message for s in ("PytorchStreamReader", "truncated", "unexpected EOF", "zip archive")):
                raise _not_a_checkpoint(filename, f"it is truncated or damaged ({message.splitlines()[0]})") from e
            raise

    def load(self, path, *args, **kwargs):
        try:
            return super().load(path, *args, **kwargs)
        finally:
            # detectron2 main resets this only when the load succeeds; a failed load must not
            # block the next one (resume tries older checkpoints after a damaged one).
            if hasattr(self, "_parsed_url_during_load"):
                self._parsed_url_during_load = None

    # ---- writing ------------------------------------------------------------------------------
    #: Written into every checkpoint besides the model and the checkpointables (the trainer sets
    #: ``{"num_classes": {"MODEL.ROI_HEADS.NUM_CLASSES": N}}``, which a resume checks).
    extra_data: Dict = {}

    def _local(self) -> bool:
        return "://" not in str(self.save_dir)

    def save(self, name: str, **kwargs) -> None:
        kwargs = {**self.extra_data, **kwargs}
        if not self._local():  # a remote folder (PathManager handler): fvcore's plain write
            return super().save(name, **kwargs)
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        assert os.path.basename(save_file) == basename, basename
        os.makedirs(self.save_dir, exist_ok=True)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write(Path(save_file), lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not self._local():
            return super().tag_last_checkpoint(last_filename_basename)
        path = os.path.join(self.save_dir, LAST_CHECKPOINT)
        atomic_write(Path(path), lambda f: f.write(last_filename_basename.encode("utf-8")))

    # ---- resuming -----------------------------------------------------------------------------
    def _named_in_last_checkpoint(self) -> str:
        try:
            with self.path_manager.open(os.path.join(self.save_dir, LAST_CHECKPOINT), "r") as f:
                return f.read().strip()
        except IOError:
            return ""

    def _resume_candidates(self, warn: bool = False) -> List[str]:
        """The checkpoints to resume from, in order: the one ``last_checkpoint`` names (when it
        names an existing file), then the folder's other ``model_*.pth``, newest first."""
        named = self._named_in_last_checkpoint()
        named_path = os.path.join(self.save_dir, named) if named else ""
        found = named_path and self.path_manager.isfile(named_path)
        if warn and not found:
            what = "is empty" if not named else f"names {named}, which does not exist"
            logger.warning(f"{os.path.join(self.save_dir, LAST_CHECKPOINT)} {what}: resuming from the newest model_*.pth instead")
        others = [
            p
            for p in self.get_all_checkpoint_files()
            if os.path.basename(p).startswith("model_") and p != named_path
        ]
        local = self._local()
        others.sort(key=lambda p: (os.path.getmtime(p) if local else 0.0, os.path.basename(p)), reverse=True)
        return ([named_path] if found else []) + others

    def has_checkpoint(self) -> bool:
        """``last_checkpoint`` exists and there is a checkpoint to resume from."""
        return super().has_checkpoint() and bool(self._resume_candidates())

    def get_checkpoint_file(self) -> str:
        """The checkpoint to resume from: the one ``last_checkpoint`` names, or the newest
        ``model_*.pth`` when that is empty or dangling (``""`` when there is none). Whether it loads
        is checked by :meth:`resume_or_load`, which falls back further."""
        candidates = self._resume_candidates()
        return candidates[0] if candidates else ""

    def resume_or_load(self, path: str, *, resume: bool = True):
        """As detectron2's, but a resume skips checkpoints that are not loadable (truncated,
        garbage) for the next newest, with a warning; it fails only when none loads."""
        if not (resume and self.has_checkpoint()):
            if resume and super().has_checkpoint():
                logger.warning(
                    f"{os.path.join(self.save_dir, LAST_CHECKPOINT)} exists but there is no model_*.pth to resume "
                    f"from: starting from {path or 'scratch'} (MODEL.WEIGHTS)"
                )
            return self.load(path, checkpointables=[])
        self.check_resume_fits()
        skipped = []
        for candidate in self._resume_candidates(warn=True):
            try:
                loaded = self.load(candidate)
            except NotACheckpointError as e:
                logger.warning(f"skipping damaged checkpoint {candidate} for the previous one: {e}")
                skipped.append(candidate)
                continue
            if skipped:
                logger.warning(f"resumed from {candidate}; skipped {', '.join(skipped)} (not loadable)")
            return loaded
        raise NotACheckpointError(
            f"cannot resume from {self.save_dir}: none of its checkpoints loads ({', '.join(skipped)}); "
            "delete them and last_checkpoint to train from the start"
        )


    def check_resume_fits(self) -> None:
        """Before a resume loads anything: raise :class:`CheckpointMismatchError` when the
        checkpoint it would resume from (the newest loadable one) was trained for another number
        of classes than the config's (the class count recorded in it, see :attr:`extra_data`), or
        has parameters of other shapes than the model's (a checkpoint without the record: the
        number of classes is read from the shapes where they tell it). detectron2 would skip those
        parameters with a warning and fail in the optimizer's first step (tensor sizes)."""
        if not self._local():
            return
        for candidate in self._resume_candidates():
            checkpoint = _peek(candidate)
            if checkpoint is not None and not describe_checkpoint_content(checkpoint):
                break
        else:
            return  # nothing loadable: resume_or_load says so
        expected = self.extra_data.get(NUM_CLASSES_ENTRY) or {}
        problem = _resume_mismatch(checkpoint, self.model.state_dict(), expected)
        if not problem:
            return
        where, key, n, m = problem
        if n is not None:
            raise CheckpointMismatchError(
                f"cannot resume from {candidate}: the checkpoint in OUTPUT_DIR ({self.save_dir}) was trained for "
                f"{n} classes, the config has {key} = {m}{where}. A resume continues that model and its optimizer "
                f"state, which fails at the first step: set {key} {n} (with the {n}-class dataset) to resume it, or "
                f"train the {m}-class model into another OUTPUT_DIR, starting from these weights with "
                f"MODEL.WEIGHTS {candidate} (without --resume)"
            )
        raise CheckpointMismatchError(
            f"cannot resume from {candidate}: its parameters do not fit the model built from this config{where}. "
            "A resume continues the model the checkpoint was trained with: go back to the config it was trained "
            "with to resume it, or train the changed model into another OUTPUT_DIR, starting from these "
            f"weights with MODEL.WEIGHTS {candidate} (without --resume)"
        )


def _peek(path: str):
    """The checkpoint at ``path`` (memory-mapped where torch can: only the shapes are needed), or
    ``None`` when it does not load."""
    for kwargs in ({"mmap": True}, {}):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, **kwargs)
        except Exception:  # noqa: BLE001 - damaged files are resume_or_load's to report
            continue
    return None


def _infer_num_classes(mismatched: Sequence[Tuple[str, tuple, tuple]], m: int) -> Optional[int]:
    """The class count ``N`` that the checkpoint's shapes of the ``mismatched`` parameters imply,
    when the model's are for ``m`` classes: class-dependent parameters are predictors whose
    outputs (the first dimension) alone differ, ``a * (m + b)`` in the model (``b`` 0 or 1: with a
    background class) and ``a * (N + b)`` in the checkpoint. ``None`` unless every differing
    parameter is such a one and all tell the same ``N`` (a changed trunk changes inputs too)."""
    candidates = None
    for _, in_checkpoint, in_model in mismatched:
        if len(in_checkpoint) != len(in_model) or not in_model or in_checkpoint[1:] != in_model[1:]:
            return None
        for c, d in zip(in_checkpoint[:1], in_model[:1]):
            found = set()
            for b in (0, 1):
                if m + b > 0 and d % (m + b) == 0:
                    a = d // (m + b)
                    if c % a == 0 and c // a - b > 0:
                        found.add(c // a - b)
            candidates = found if candidates is None else candidates & found
    if candidates is None or len(candidates) != 1:
        return None
    (n,) = candidates
    return n if n != m else None


def _resume_mismatch(checkpoint, model_state, expected: Dict[str, int]):
    """``None`` when ``checkpoint`` fits ``model_state`` (and records the ``expected`` class counts,
    where it records them); else ``(where, key, n, m)``: the differing parameters for the message,
    the config key, the checkpoint's class count ``n`` (``None``: unknown) and the config's ``m``."""
    state = checkpoint["model"] if "model" in checkpoint else checkpoint
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    mismatched = [
        (name, tuple(state[name].shape), tuple(value.shape))
        for name, value in model_state.items()
        if name in state
        and _is_weights(state[name])
        and not isinstance(value, torch.nn.parameter.UninitializedParameter)
        and tuple(state[name].shape) != tuple(value.shape)
    ]
    recorded = checkpoint.get(NUM_CLASSES_ENTRY)
    recorded = recorded if isinstance(recorded, Mapping) else {}
    changed = [(key, int(recorded[key]), int(m)) for key, m in expected.items() if key in recorded and int(recorded[key]) != int(m)]
    if not changed and not mismatched:
        return None
    where = ""
    if mismatched:
        shown = "; ".join(f"{name}: checkpoint {c} vs model {d}" for name, c, d in mismatched[:4])
        where = f" ({len(mismatched)} parameter(s) of other shapes: {shown}" + ("; ..." if len(mismatched) > 4 else "") + ")"
    if changed:
        return (where, *changed[0])
    if expected and not any(key in recorded for key in expected):  # not recorded: read from the shapes
        key, m = next(iter(expected.items()))
        return where, key, _infer_num_classes(mismatched, int(m)), int(m)
    return where, None, None, None


def remove_stale_temporary_files(folder: str, log: bool = True) -> List[str]:
    """Remove the temporary files that a checkpoint save killed outright (``SIGKILL``, a lost
    machine) left in ``folder`` (``.model_0000999.pth.<random>.tmp``, ``.last_checkpoint.<random>.tmp``:
    the pattern of the checkpointer's atomic writes); returns them as ``"name (size MB)"``, and
    with ``log`` logs a warning naming them. Only for the run that holds the folder
    (:mod:`instfcn_d2.engine.output_dir`): a live run's save in progress has such a file too."""
    try:
        names = sorted(n for n in os.listdir(folder) if _STALE_TEMPORARY.match(n))
    except OSError:
        return []
    removed = []
    for name in names:
        path = os.path.join(folder, name)
        try:
            size = os.path.getsize(path)
            os.remove(path)
        except OSError:
            continue
        removed.append(f"{name} ({size / 2**20:.1f} MB)")
    if removed and log:
        logger.warning(stale_temporary_files_note(folder, removed))
    return removed


def stale_temporary_files_note(folder: str, removed: List[str]) -> str:
    """The log line for what :func:`remove_stale_temporary_files` removed."""
    return f"removed {len(removed)} temporary file(s) left in {folder} by an interrupted checkpoint save: {', '.join(removed)}"


class StrictDetectionCheckpointer(InstFCNCheckpointer):
    def __init__(self, model, save_dir="", *, strict=True, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.strict = strict
        self._loading = None

    def _load_file(self, filename):
        self._loading = filename
        return super()._load_file(filename)

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        if self.strict and incompatible is not None:
            problems = [
                f"  {name}: checkpoint {tuple(shape_ckpt)} vs model {tuple(shape_model)}"
                for name, shape_ckpt, shape_model in incompatible.incorrect_shapes
            ]
            problems += [f"  {name}: missing from the checkpoint" for name in incompatible.missing_keys]
            problems += [f"  {name}: in the checkpoint, not in the model" for name in incompatible.unexpected_keys]
            if problems:
                raise CheckpointMismatchError(
                    f"checkpoint {self._loading} does not fit the model built from this config "
                    f"({len(problems)} parameter(s)):\n" + "\n".join(problems[:20])
                )
        return incompatible


# ---- the tools' weights check -------------------------------------------------------------------
ALLOW_RANDOM_WEIGHTS_FLAG = "--allow-random-weights"


def require_trained_weights(
    cfg,
    allow_random_weights: bool = False,
    *,
    tool: str = "",
    example: str = "MODEL.WEIGHTS path/to/model_final.pth",
    alternative: str = "",
) -> bool:
    """Check, before anything is built, that ``cfg.MODEL.WEIGHTS`` names trained weights.

    * empty: a randomly initialised model, whose output means nothing. Raises
      :class:`MissingWeightsError` (naming ``--allow-random-weights``) unless
      ``allow_random_weights``; then logs a warning and returns ``False``;
    * a local path that is not a file: raises :class:`MissingWeightsError` naming it (URLs and
      ``detectron2://`` paths are checked when loaded);
    * otherwise returns ``True``: load them with :func:`load_trained_weights`.

    ``tool`` starts the messages (e.g. ``"demo.py"``); ``example`` shows how the tool takes the
    weights (e.g. ``"--opts MODEL.WEIGHTS path/to/model_final.pth"``); ``alternative`` is another
    way the tool has to get weights, added to the message (``train_net.py``'s ``--resume``).
    """
    prefix = f"{tool}: " if tool else ""
    weights = cfg.MODEL.WEIGHTS
    if not weights:
        if allow_random_weights:
            logger.warning(
                f"{prefix}MODEL.WEIGHTS is empty ({ALLOW_RANDOM_WEIGHTS_FLAG}): the model is randomly "
                "initialised, its output is meaningless"
            )
            return False
        raise MissingWeightsError(
            f"{prefix}MODEL.WEIGHTS is empty: the model would be randomly initialised and its output meaningless. "
            f"Give the trained weights, e.g. `{example}`{alternative}; "
            f"{ALLOW_RANDOM_WEIGHTS_FLAG} runs a random model on purpose"
        )
    if "://" not in weights and not os.path.isfile(os.path.expanduser(weights)):
        raise MissingWeightsError(f"{prefix}MODEL.WEIGHTS: checkpoint not found: {weights}")
    return True


def load_trained_weights(model, weights: str) -> dict:
    """Load the checkpoint ``weights`` into ``model`` strictly (:class:`StrictDetectionCheckpointer`):
    one that does not fit the model (parameters missing from it, parameters the model lacks, other
    shapes) raises :class:`CheckpointMismatchError`, and a file that is not a checkpoint
    :class:`NotACheckpointError`, both naming the file. Returns what else the checkpoint holds
    (as detectron2's ``Checkpointer.load``)."""
    return StrictDetectionCheckpointer(model).load(os.path.expanduser(weights) if "://" not in weights else weights)
