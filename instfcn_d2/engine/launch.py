"""Multi-process and multi-machine runs of ``tools/train_net.py`` on detectron2's ``launch``.

detectron2's ``launch`` (``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url``)
spawns the processes of one machine and joins them into one process group. Added here:

* **one process per machine runs in the ``train_net.py`` process itself** (:func:`launch`), not
  in a spawned worker;
* **a timeout of our choosing** (``--dist-timeout-minutes``, :data:`DEFAULT_DIST_TIMEOUT_MINUTES`)
  instead of detectron2's 30 minutes: how long a collective (gloo on the CPU, NCCL on GPUs) waits
  for the other processes before it fails; it bounds how long the survivors of a hung or
  unreachable machine wait, and how long the first machine waits for the others to join;
* **a message when a peer is lost**: :func:`report_lost_peer` turns the backend's error (gloo:
  ``Connection closed by peer [ADDRESS]:PORT`` when a process died, ``Timed out waiting ... ms``
  when one stopped answering) into :class:`LostPeerError`, which says what happened, names the
  peer and this process's rank, and how to resume; the process then exits non-zero;
* **the results of ``--eval-only`` in a file** (:func:`write_eval_results`):
  ``OUTPUT_DIR/inference/results.json``, written by the main process. detectron2's ``launch``
  runs ``main`` in spawned processes and drops what it returns, so with ``--num-gpus`` /
  ``--num-machines`` the log's rounded tables were the only record of the numbers;
* **a resume check** (:func:`check_resume_consistency`): every process of a ``--resume`` must
  find the same checkpoint. A machine whose OUTPUT_DIR holds none (no shared file system) would
  otherwise start from iteration 0 while the others continue, and the processes would wait on
  each other's collectives until the timeout; instead all of them stop with a message saying
  which rank found which checkpoint.
"""

import contextlib
import json
import logging
import math
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Iterator, List, Optional

from detectron2.utils import comm

__all__ = [
    "DEFAULT_DIST_TIMEOUT_MINUTES",
    "EVAL_RESULTS_FILE",
    "LostPeerError",
    "ResumeMismatchError",
    "check_resume_consistency",
    "dist_timeout",
    "is_lost_peer_error",
    "launch",
    "lost_peer_message",
    "report_lost_peer",
    "write_eval_results",
]

logger = logging.getLogger(__name__)

# Long enough for what one process does while the others wait in a collective: the main process
# alone writes checkpoints and computes the final metrics (COCOeval, cityscapesscripts), and the
# slowest first iteration; short enough that losing a machine costs minutes, not detectron2's 30.
DEFAULT_DIST_TIMEOUT_MINUTES = 10.0

# What the backends say when a peer is gone (gloo's tcp transport, NCCL, the c10d store).
_LOST_PEER_PATTERNS = (
    "Connection closed by peer",  # gloo: the peer's process is gone
    "Connection reset by peer",
    "Broken pipe",
    "Timed out waiting",  # gloo: no answer within the timeout
    "Socket Timeout",  # the c10d store
    "NCCL communicator was aborted",  # NCCL's watchdog after its timeout
    "Watchdog caught collective operation timeout",
)


class LostPeerError(RuntimeError):
    """Another process of the distributed run died or stopped answering (see
    :func:`report_lost_peer`); chained to the backend's error."""


class ResumeMismatchError(RuntimeError):
    """The processes of a ``--resume`` do not find the same checkpoint."""


def dist_timeout(minutes: float) -> timedelta:
    """``minutes`` (> 0, finite) as the ``timedelta`` that ``launch`` passes to ``init_process_group``."""
    if not (isinstance(minutes, (int, float)) and math.isfinite(minutes) and minutes > 0):
        raise ValueError(f"the distributed timeout must be a finite number of minutes > 0, got {minutes!r}")
    return timedelta(minutes=float(minutes))


def launch(
    main_func,
    num_gpus_per_machine: int,
    *,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = None,
    args=(),
    timeout_minutes: float = DEFAULT_DIST_TIMEOUT_MINUTES,
):
    """detectron2's ``launch`` with the collective timeout ``timeout_minutes`` (see the module
    docstring). Called on every machine; ``main_func(*args)`` runs in each process of the run.

    One process per machine (``num_gpus_per_machine`` 1, several machines): that process is this
    one. detectron2 would spawn a single worker and wait for it; here this process joins the
    process group itself (detectron2's worker function, called directly), which saves a second
    start of Python and keeps signals, exit codes and ``fork`` working as in a plain run: in a
    spawned worker ``multiprocessing`` defaults to ``spawn``, so e.g. detectron2's Cityscapes loader
    starts its pool of fresh interpreters (40 s on 2 cores) where a forked pool takes a second.
    Returns ``main_func``'s value in that case (``None`` otherwise, as detectron2's)."""
    from detectron2.engine import launch as d2_launch

    timeout = dist_timeout(timeout_minutes)
    world_size = num_machines * num_gpus_per_machine
    if world_size > 1 and num_gpus_per_machine == 1:
        from detectron2.engine.launch import _distributed_worker

        if not dist_url or dist_url == "auto":
            raise ValueError(
                f"--num-machines {num_machines}: give --dist-url tcp://HOST:PORT (HOST: machine 0's address)"
            )
        results = []
        _distributed_worker(
            0, lambda *a: results.append(main_func(*a)), world_size, 1, machine_rank, dist_url, args, timeout
        )
        return results[0] if results else None
    return d2_launch(
        main_func,
        num_gpus_per_machine,
        num_machines=num_machines,
        machine_rank=machine_rank,
        dist_url=dist_url,
        args=args,
        timeout=timeout,
    )


def is_lost_peer_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a backend's report of a lost peer (a ``RuntimeError``, torch's
    ``DistError`` family included, with one of the backends' phrases) in a distributed run."""
    if isinstance(exc, LostPeerError):
        return False  # already reported
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc)
    return any(p in text for p in _LOST_PEER_PATTERNS)


def _peer_in(text: str) -> str:
    """``"ADDRESS:PORT"`` of the peer that the backend's message names (gloo: ``[ADDRESS]:PORT``),
    or ``""``."""
    m = re.search(r"\[([^\]\s]+)\]:(\d+)", text)
    return f"{m.group(1)}:{m.group(2)}" if m else ""


def lost_peer_message(
    exc: BaseException,
    *,
    timeout_minutes: Optional[float] = None,
    output_dir: Optional[str] = None,
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
) -> str:
    """The message of :class:`LostPeerError` for the backend's error ``exc``."""
    rank = comm.get_rank() if rank is None else rank
    world_size = comm.get_world_size() if world_size is None else world_size
    text = str(exc).strip()
    first_line = text.splitlines()[0] if text else type(exc).__name__
    peer = _peer_in(text)
    others = [r for r in range(world_size) if r != rank]
    ranks = f"rank {others[0]}" if len(others) == 1 else f"one of ranks {others[0]}-{others[-1]}"
    timed_out = "timed out" in text.lower() or "timeout" in text.lower()
    if timed_out:
        what = "stopped answering" + (
            f" for {timeout_minutes:g} minute(s) (--dist-timeout-minutes)" if timeout_minutes else ""
        )
    else:
        what = "closed its connection (it crashed, was killed or its machine went down)"
    where = f" at {peer}" if peer else ""
    lines = [
        f"lost a peer of the distributed run: {ranks}{where} {what}; this process (rank {rank} of {world_size}) stops.",
        f"Backend error: {first_line}",
        "Check the other machines' logs (OUTPUT_DIR/log.txt.rank<N>) for why it stopped; then restart every "
        "machine with the same command plus --resume, which continues from OUTPUT_DIR/last_checkpoint"
        + (f" ({_last_checkpoint(output_dir)})" if output_dir and _last_checkpoint(output_dir) else "")
        + ".",
    ]
    return "\n".join(lines)


def _last_checkpoint(output_dir: str) -> str:
    try:
        with open(os.path.join(output_dir, "last_checkpoint")) as f:
            name = f.read().strip()
    except OSError:
        return ""
    return os.path.join(output_dir, name) if name else ""


@contextlib.contextmanager
def report_lost_peer(
    *, timeout_minutes: Optional[float] = None, output_dir: Optional[str] = None, log: Optional[logging.Logger] = None
) -> Iterator[None]:
    """Around the training or evaluation of one process of a distributed run: a backend error that
    says a peer is gone (:func:`is_lost_peer_error`) is logged as :func:`lost_peer_message` and
    raised as :class:`LostPeerError` (chained to it), so the process exits non-zero with a message
    instead of a bare gloo / NCCL traceback. Other errors, and every error of a single-process
    run, pass unchanged."""
    try:
        yield
    except Exception as e:
        if comm.get_world_size() <= 1 or not is_lost_peer_error(e):
            raise
        message = lost_peer_message(e, timeout_minutes=timeout_minutes, output_dir=output_dir)
        (log or logger).error(message)
        raise LostPeerError(message) from e


def check_resume_consistency(checkpointer) -> None:
    """Before a ``--resume`` of several processes: every process must find the same checkpoint to
    resume from (``checkpointer.get_checkpoint_file()``'s file name, ``""`` for none). Raises
    :class:`ResumeMismatchError` on every process otherwise (the check is itself a collective)."""
    if comm.get_world_size() <= 1:
        return
    mine = os.path.basename(checkpointer.get_checkpoint_file()) if checkpointer.has_checkpoint() else ""
    found: List[str] = comm.all_gather((mine, str(checkpointer.save_dir)))
    if len({name for name, _ in found}) == 1:
        return
    rows = "; ".join(f"rank {r}: {name or 'no checkpoint'} in {folder}" for r, (name, folder) in enumerate(found))
    raise ResumeMismatchError(
        f"--resume: the processes do not find the same checkpoint ({rows}). Every machine must resume from the "
        "same one: give them an OUTPUT_DIR on a file system they share, or copy the main machine's last checkpoint "
        "file and its last_checkpoint into the others' OUTPUT_DIR before resuming."
    )


EVAL_RESULTS_FILE = "results.json"


def _json_number(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def write_eval_results(results, output_dir: str) -> str:
    """Write ``results`` (what ``Trainer.test`` returns: ``{task: {metric: value}}``, or one such
    dict per dataset) to ``output_dir/inference/results.json`` and return the path. Numbers keep
    every digit (Python's float repr); NaN is written as ``NaN``, which Python's ``json`` reads back."""
    from ..data.files import atomic_write

    folder = os.path.join(output_dir, "inference")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, EVAL_RESULTS_FILE)
    text = json.dumps(results, indent=1, default=_json_number) + "\n"
    atomic_write(Path(path), lambda f: f.write(text.encode("utf-8")))
    return path
