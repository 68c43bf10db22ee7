"""A training run's OUTPUT_DIR: one live run per folder, and no silent mixing with a previous run.

* :func:`lock_output_dir`: the run (rank 0) holds an exclusive ``fcntl.flock`` on
  ``OUTPUT_DIR/.instfcn_run.lock`` for the life of its process, so the kernel releases it when the
  process ends however it ends (no stale locks). The file holds the pid, host, start time and
  command of the run, for the message that a second run into the same folder fails with at once
  (:class:`OutputDirInUseError`). Taking the lock also removes the temporary files an interrupted
  checkpoint save left (``checkpoint.remove_stale_temporary_files``). A process that holds the
  lock already (a second training in the same process, e.g. a resume) takes it again freely.
* :func:`prepare_output_dir`: a folder a training run used (``last_checkpoint``, ``model_*.pth``
  or a non-empty ``metrics.json``), trained into again without ``--resume``, is refused
  (:class:`OutputDirExistsError`, naming the folder and what is in it), moved aside to
  ``OUTPUT_DIR.<YYYYmmdd-HHMMSS>``, or trained over, as ``train_net.py --output-exists
  {refuse,move,overwrite}`` says (default ``refuse``). ``--resume`` continues the run in it.
* :func:`keep_training_config`: ``--eval-only`` into a training run's folder writes its config to
  ``config_eval.yaml`` rather than over the training's ``config.yaml`` (detectron2's
  ``default_setup`` writes ``config.yaml`` for any run). An evaluation writes no ``metrics.json``
  (detectron2 logs its results, it has no event writers), so it is not refused.

Remote folders (``scheme://``) are neither locked nor checked.
"""
import contextlib
import datetime
import errno
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional

from ..checkpoint import remove_stale_temporary_files, stale_temporary_files_note
from ..data.files import atomic_write

try:
    import fcntl
except ImportError:  # not POSIX: no lock
    fcntl = None

__all__ = [
    "LOCK_FILE",
    "OUTPUT_EXISTS_CHOICES",
    "OutputDirError",
    "OutputDirExistsError",
    "OutputDirInUseError",
    "keep_training_config",
    "lock_output_dir",
    "prepare_output_dir",
    "prepare_training_output_dir",
    "used_output_contents",
]

logger = logging.getLogger(__name__)

LOCK_FILE = ".instfcn_run.lock"
OUTPUT_EXISTS_CHOICES = ("refuse", "move", "overwrite")
TRAINING_CONFIG = "config.yaml"
EVAL_CONFIG = "config_eval.yaml"


class OutputDirError(RuntimeError):
    """OUTPUT_DIR cannot take this training run; the message names the folder and why."""


class OutputDirInUseError(OutputDirError):
    """Another live run holds OUTPUT_DIR's lock; the message names its pid, host and start."""


class OutputDirExistsError(OutputDirError):
    """OUTPUT_DIR holds a previous training run and neither ``--resume`` nor ``--output-exists``
    says what to do with it; the message names what is in it."""


def _local(folder) -> bool:
    return bool(folder) and "://" not in str(folder)


class RunLock:
    """The held lock of one folder (see :func:`lock_output_dir`)."""

    def __init__(self, folder: str, path: str, fd: int):
        self.folder, self.path, self.fd = folder, path, fd
        self.removed: List[str] = []  # temporary files removed when it was taken

    def release(self) -> None:
        """Unlock and close (a run normally never does: the lock ends with its process)."""
        if _HELD.get(_key(self.folder)) is self:
            del _HELD[_key(self.folder)]
        with contextlib.suppress(OSError):
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def _still_ours(self) -> bool:
        """The lock file at the folder's path is still the file this process locked (the folder
        was not moved or deleted since)."""
        try:
            return os.stat(self.path).st_ino == os.fstat(self.fd).st_ino
        except OSError:
            return False


_HELD: Dict[str, RunLock] = {}


def _key(folder: str) -> str:
    return os.path.realpath(os.path.abspath(os.path.expanduser(folder)))


def _holder_info() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now().isoformat(sep=" ", timespec="seconds"),
        "command": " ".join(sys.argv)[:400],
    }


def _describe_holder(text: str) -> str:
    try:
        info = json.loads(text)
        described = f"pid {info['pid']} on {info['host']}, started {info['started']}"
        return described + (f" ({info['command']})" if info.get("command") else "")
    except (ValueError, KeyError, TypeError):
        return f"lock file says: {text.strip()[:200]!r}" if text.strip() else "it has not written its pid yet"


def lock_output_dir(folder: str, *, log: bool = True) -> Optional[RunLock]:
    """Take the run lock of ``folder`` (created if needed) for the life of this process, or raise
    :class:`OutputDirInUseError` naming the live run that holds it. The first time this process
    takes it, the temporary files of interrupted checkpoint saves are removed from the folder
    (logged when ``log``, and kept in the returned lock's ``removed``). Returns ``None`` where no
    lock can be taken (a remote folder, no ``fcntl``, a filesystem without ``flock``: logged)."""
    if not _local(folder) or fcntl is None:
        return None
    os.makedirs(folder, exist_ok=True)
    held = _HELD.get(_key(folder))
    if held is not None:
        if held._still_ours():
            held.removed = []
            return held
        held.release()
    path = os.path.join(folder, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = os.pread(fd, 4096, 0).decode("utf-8", "replace") if e.errno in (errno.EAGAIN, errno.EACCES) else ""
        os.close(fd)
        if e.errno not in (errno.EAGAIN, errno.EACCES):  # ENOLCK, EOPNOTSUPP, ...: no flock here
            logger.warning(f"cannot lock OUTPUT_DIR {folder} ({e}): runs started into it are not kept apart")
            return None
        raise OutputDirInUseError(
            f"OUTPUT_DIR {folder} is in use by another training run ({_describe_holder(holder)}). Two runs in one "
            "folder would mix their checkpoints, config.yaml and metrics.json: wait for that run to end, or give "
            "this one another OUTPUT_DIR"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(_holder_info()) + "\n").encode("utf-8"), 0)
    lock = RunLock(folder, path, fd)
    _HELD[_key(folder)] = lock
    lock.removed = remove_stale_temporary_files(folder, log=log)
    return lock


def used_output_contents(folder: str) -> List[str]:
    """What in ``folder`` shows that a training run used it: ``last_checkpoint``, the
    ``model_*.pth`` checkpoints (summarised), a non-empty ``metrics.json`` (an empty one is left by
    a run that stopped before its first iteration). ``[]``: a fresh folder."""
    try:
        names = set(os.listdir(folder))
    except OSError:
        return []
    found = []
    if "last_checkpoint" in names:
        found.append("last_checkpoint")
    checkpoints = sorted(n for n in names if n.startswith("model_") and n.endswith(".pth"))
    if len(checkpoints) > 3:
        found.append(f"{len(checkpoints)} checkpoints ({checkpoints[0]} ... {checkpoints[-1]})")
    else:
        found += checkpoints
    metrics = os.path.join(folder, "metrics.json")
    if "metrics.json" in names and os.path.isfile(metrics) and os.path.getsize(metrics) > 0:
        with open(metrics, "rb") as f:
            lines = sum(1 for _ in f)
        found.append(f"metrics.json ({lines} line{'s' if lines != 1 else ''})")
    return found


def _moved_name(folder: str, now: datetime.datetime) -> str:
    base = f"{os.path.normpath(folder)}.{now:%Y%m%d-%H%M%S}"
    moved, n = base, 1
    while os.path.lexists(moved):
        n += 1
        moved = f"{base}-{n}"
    return moved


def prepare_output_dir(
    folder: str, *, resume: bool, output_exists: str = "refuse", now: Optional[datetime.datetime] = None
) -> List[str]:
    """Make ``folder`` this training run's (rank 0, before anything is written into it): take its
    lock (:func:`lock_output_dir`), then, if a previous run used it (:func:`used_output_contents`)
    and this one does not ``resume`` it, do what ``output_exists`` says:

    * ``"refuse"``: raise :class:`OutputDirExistsError` naming the folder, what is in it and the ways on;
    * ``"move"``: rename the folder to ``<folder>.<YYYYmmdd-HHMMSS>`` (``now``), and start in a new,
      empty one;
    * ``"overwrite"``: train over it (detectron2's own behaviour: checkpoints overwritten,
      ``metrics.json`` appended to).

    Returns the lines to log (once the run's logger writes to OUTPUT_DIR/log.txt): what was
    moved, overwritten or removed (temporary files of interrupted saves)."""
    if output_exists not in OUTPUT_EXISTS_CHOICES:
        raise ValueError(f"output_exists must be one of {OUTPUT_EXISTS_CHOICES}, got {output_exists!r}")
    if not folder:
        return []
    if not _local(folder):
        return [f"OUTPUT_DIR {folder} is not a local folder: not locked, not checked for a previous run"]
    notes = []
    lock = lock_output_dir(folder, log=False)
    contents = used_output_contents(folder)
    if contents and not resume:
        listed = ", ".join(contents)
        if output_exists == "refuse":
            raise OutputDirExistsError(
                f"OUTPUT_DIR {folder} already holds a training run ({listed}): training into it without --resume "
                "would overwrite its checkpoints and append to its metrics.json. Use --resume to continue that run, "
                f"--output-exists move to move it aside (to {os.path.normpath(folder)}.<date>-<time>), "
                "--output-exists overwrite to train over it, or another OUTPUT_DIR"
            )
        if output_exists == "move":
            moved = _moved_name(folder, now or datetime.datetime.now())
            if lock is not None:
                _HELD.pop(_key(folder), None)  # the lock stays held (on the moved file) until the new one is
            try:
                try:
                    os.rename(folder, moved)
                except OSError as e:
                    raise OutputDirExistsError(f"--output-exists move: cannot move OUTPUT_DIR {folder} to {moved}: {e}") from e
                new_lock = lock_output_dir(folder, log=False)
            finally:
                if lock is not None:
                    lock.release()
                    with contextlib.suppress(OSError):
                        os.remove(os.path.join(moved, LOCK_FILE))
            lock = new_lock
            notes.append(f"--output-exists move: moved the previous run in {folder} ({listed}) to {moved}; "
                         f"this run starts in an empty {folder}")
        else:
            notes.append(f"--output-exists overwrite: training over the previous run in {folder} ({listed}): "
                         "its checkpoints are overwritten, its metrics.json is appended to")
    if lock is not None and lock.removed:
        notes.append(stale_temporary_files_note(folder, lock.removed))
    return notes


def prepare_training_output_dir(folder: str, *, resume: bool, output_exists: str = "refuse") -> List[str]:
    """:func:`prepare_output_dir` in a (possibly multi-process) training: rank 0 prepares the
    folder, every process raises its error (so that none waits for a rank 0 that has stopped).
    Returns rank 0's lines to log (``[]`` elsewhere)."""
    from detectron2.utils import comm

    notes, error = [], None
    if comm.is_main_process():
        try:
            notes = prepare_output_dir(folder, resume=resume, output_exists=output_exists)
        except OutputDirError as e:
            error = e
    if comm.get_world_size() > 1:
        gathered = comm.all_gather(None if error is None else (type(error).__name__, str(error)))[0]
        if error is None and gathered is not None:
            kind = OutputDirInUseError if gathered[0] == OutputDirInUseError.__name__ else OutputDirExistsError
            error = kind(gathered[1])
    if error is not None:
        raise error
    return notes


@contextlib.contextmanager
def keep_training_config(folder: str, enabled: bool = True) -> Iterator[List[str]]:
    """Around detectron2's ``default_setup`` of an ``--eval-only`` run (``enabled``): when
    ``folder`` holds a training run (:func:`used_output_contents`) and its ``config.yaml``, that
    file is kept, and the config ``default_setup`` wrote there goes to ``config_eval.yaml``.
    Yields the list it adds the line to log to (after the block)."""
    notes: List[str] = []
    path = os.path.join(folder, TRAINING_CONFIG) if _local(folder) else ""
    from detectron2.utils import comm

    keep = enabled and path and comm.is_main_process() and os.path.isfile(path) and used_output_contents(folder)
    original = Path(path).read_bytes() if keep else None
    try:
        yield notes
    finally:
        if original is not None and os.path.isfile(path) and Path(path).read_bytes() != original:
            os.replace(path, os.path.join(folder, EVAL_CONFIG))
            atomic_write(Path(path), lambda f: f.write(original))
            notes.append(f"--eval-only: {path} is the training run's and stays; this evaluation's config is "
                         f"{os.path.join(folder, EVAL_CONFIG)}")
