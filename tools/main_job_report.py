#!/usr/bin/env python
"""Print a training run's final numbers next to the recorded baselines trained for the same budget.

  python tools/main_job_report.py OUTPUT_DIR --config-file CFG --budget-minutes 8
  python tools/main_job_report.py OUTPUT_DIR --config-file CFG --budget-minutes 8 --record   # store as a baseline

Reads the run's ``metrics.json`` (the final evaluation: COCO ``segm`` / ``bbox`` AP, BiSeg's
``sem_seg`` mean IU) and ``log.txt`` (iterations and training time). Baselines live in
``docs/main_job_baselines.json``: one entry per (config, budget), with the date and machine of the
run that made it (``--record`` adds or replaces the run's entry).
"""
import argparse
import datetime
import json
import os
import platform
import sys

from instfcn_d2.engine.run_summary import read_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINES = os.path.join(REPO, "docs", "main_job_baselines.json")
COLUMNS = [("segm/AP", "mask AP"), ("segm/AP50", "mask AP50"), ("bbox/AP", "box AP"), ("sem_seg/mIoU", "mean IU")]


def load_baselines() -> list:
    if not os.path.isfile(BASELINES):
        return []
    with open(BASELINES) as f:
        return json.load(f)


def row(name: str, run: dict) -> str:
    cells = [f"{run['metrics'][k]:.1f}" if k in run["metrics"] else "-" for k, _ in COLUMNS]
    return f"| {name} | {run['iterations']} | {run.get('training_time') or '-'} | " + " | ".join(cells) + " |"


def report(output_dir: str, config: str, budget: float) -> str:
    run = read_run(output_dir)
    lines = [
        f"Results on the built-in dataset's val split after {budget:g} minutes of training (x100):",
        "",
        "| model | iterations | training time | " + " | ".join(label for _, label in COLUMNS) + " |",
        "|---|---:|---:|" + "---:|" * len(COLUMNS),
        row(f"{config} (this run)", run),
    ]
    others = [b for b in load_baselines() if b["budget_minutes"] == budget and b["config"] != config]
    for b in others:
        lines.append(row(f"{b['config']} (recorded {b['date']}, {b['machine']})", b))
    if not others:
        lines.append(f"(no recorded baseline for a {budget:g}-minute budget in {os.path.relpath(BASELINES, REPO)})")
    return "\n".join(lines)


def record(output_dir: str, config: str, budget: float) -> dict:
    from instfcn_d2.supported import describe_stack

    entry = {
        "config": config,
        "budget_minutes": budget,
        "date": datetime.date.today().isoformat(),
        "machine": f"{os.cpu_count()}-core {platform.machine()} CPU, {describe_stack()}",
        **read_run(output_dir),
    }
    baselines = [b for b in load_baselines() if (b["config"], b["budget_minutes"]) != (config, budget)] + [entry]
    with open(BASELINES, "w") as f:
        json.dump(baselines, f, indent=1, sort_keys=True)
        f.write("\n")
    return entry


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir")
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--budget-minutes", type=float, required=True)
    parser.add_argument("--record", action="store_true", help=f"store this run as a baseline in {BASELINES}")
    args = parser.parse_args(argv)
    if args.record:
        record(args.output_dir, args.config_file, args.budget_minutes)
    print(report(args.output_dir, args.config_file, args.budget_minutes))
    out = args.output_dir
    print(f"\ntraining curves: {out}/training_curves.png")
    print(f"predictions:     {out}/vis/*_pred_vs_gt.png (instances), {out}/vis/*_sem_seg.png (semantic maps, BiSeg)")
    print(f"score maps:      {out}/score_maps/*_score_maps.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
