#!/usr/bin/env python
"""Plot the losses and evaluation metrics of a detectron2 run (its ``metrics.json``) to a PNG.

  python tools/plot_training_curves.py OUTPUT_DIR [--out OUTPUT_DIR/training_curves.png]
"""
import argparse
import json
import os
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(path):
    """``metrics.json`` is one JSON object per line; later runs (``--resume``) append."""
    series = defaultdict(dict)
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not JSON ({e})") from None
            it = row.get("iteration")
            for key, value in row.items():
                if key != "iteration" and isinstance(value, (int, float)):
                    series[key][it] = value
    return series


def plot(series, out_png, title=""):
    losses = sorted(k for k in series if k.startswith("loss") or k == "total_loss")
    # COCO AP ("segm/AP"), proposal recall ("proposals/AR@100"), VOC region AP, semantic mIoU
    metrics = sorted(
        k for k in series
        if k.endswith(("/AP", "/AP50", "/mIoU")) or "AR@" in k.split("/")[-1] or "mAPr@" in k
    )
    fig, axes = plt.subplots(1, 2 if metrics else 1, figsize=(13 if metrics else 7, 4.5), squeeze=False)
    ax = axes[0, 0]
    for key in losses:
        its = sorted(series[key])
        ax.plot(its, [series[key][i] for i in its], label=key, lw=2 if key == "total_loss" else 1)
    ax.set_xlabel("iteration"), ax.set_ylabel("loss"), ax.set_yscale("log"), ax.legend(fontsize=7)
    ax.set_title("training losses")
    if metrics:
        ax = axes[0, 1]
        for key in metrics:
            its = sorted(series[key])
            ax.plot(its, [series[key][i] for i in its], "o-", label=key)
        ax.set_xlabel("iteration"), ax.set_ylabel("metric"), ax.legend(fontsize=7)
        ax.set_title("evaluation")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", help="a detectron2 OUTPUT_DIR holding metrics.json")
    parser.add_argument("--out", default=None, help="PNG path (default OUTPUT_DIR/training_curves.png)")
    args = parser.parse_args(argv)
    path = os.path.join(args.output_dir, "metrics.json")
    if not os.path.isfile(path):
        parser.error(f"no metrics.json in {args.output_dir}")
    out = args.out or os.path.join(args.output_dir, "training_curves.png")
    plot(read_metrics(path), out, title=args.output_dir)
    print(f"[plot_training_curves] wrote {out}")


if __name__ == "__main__":
    main()
