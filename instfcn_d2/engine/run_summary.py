"""The final numbers of a finished training run, read from its ``OUTPUT_DIR``.

Used by ``tools/main_job_report.py`` and ``tools/custom_dataset_table.py``.
"""
import json
import os
import re

__all__ = ["read_run"]


def read_run(output_dir: str) -> dict:
    """``{"metrics": {...}, "iterations": n, "training_time": "h:mm:ss"}`` of a finished run.

    ``metrics``: the last value of every evaluation key (``segm/*``, ``bbox/*``, ``sem_seg/*``,
    ``proposals/*``) in ``metrics.json``; ``iterations``: the training iterations it logged;
    ``training_time``: detectron2's "Overall training speed" line of ``log.txt`` (``None``
    without one)."""
    metrics, iterations = {}, 0
    path = os.path.join(output_dir, "metrics.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: is {output_dir} the OUTPUT_DIR of a finished run?")
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            if "total_loss" in row:
                iterations = max(iterations, int(row["iteration"]) + 1)
            metrics.update({k: v for k, v in row.items() if k.split("/")[0] in ("segm", "bbox", "sem_seg", "proposals")})
    training_time = None
    log = os.path.join(output_dir, "log.txt")
    if os.path.isfile(log):
        with open(log) as f:
            for line in f:
                m = re.search(r"Overall training speed: (\d+) iterations in ([\d:]+)", line)
                if m:
                    training_time = m.group(2)
    return {"metrics": metrics, "iterations": iterations, "training_time": training_time}
