"""The project's checkpointers: detectron2's ``DetectionCheckpointer`` made safe to resume from and
to evaluate with.

:class:`InstFCNCheckpointer` (the trainer's, ``instfcn_d2.engine.Trainer.checkpointer``):

* a file that is not a checkpoint (a text file, garbage, an empty or truncated file) raises
  :class:`NotACheckpointError` naming the file, instead of torch's unpickling errors (whose
  "re-run with ``weights_only=False``" advice does not apply to such a file);
* checkpoints and ``last_checkpoint`` are written atomically: to a hidden temporary file in the
  same folder, then renamed, so a run killed while saving never leaves a half-written file under
  a checkpoint's name;
* resuming (``resume_or_load(..., resume=True)``) from a damaged newest checkpoint, or from an
  empty or dangling ``last_checkpoint``, falls back to the newest loadable ``model_*.pth`` of the
  folder, with a warning naming what was skipped.

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
import zipfile
from pathlib import Path
from typing import List

import torch
from detectron2.checkpoint import DetectionCheckpointer

from .data.files import atomic_write

__all__ = [
    "CheckpointMismatchError",
    "InstFCNCheckpointer",
    "MissingWeightsError",
    "NotACheckpointError",
    "StrictDetectionCheckpointer",
    "load_trained_weights",
    "require_trained_weights",
]

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last_checkpoint"
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


class InstFCNCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with clear errors for non-checkpoints, atomic writes and a resume
    that skips damaged checkpoints (see the module docstring). Same constructor."""

    # ---- reading ------------------------------------------------------------------------------
    def _load_file(self, filename):
        if filename.endswith((".pkl", ".pyth")):  # detectron2 / pycls model zoo formats (pickle)
            try:
                return super()._load_file(filename)
            except (pickle.UnpicklingError, EOFError) as e:
                raise _not_a_checkpoint(filename, f"it does not unpickle ({type(e).__name__}: {e})") from e
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
    def _local(self) -> bool:
        return "://" not in str(self.save_dir)

    def save(self, name: str, **kwargs) -> None:
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
