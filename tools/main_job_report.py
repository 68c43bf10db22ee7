#!/usr/bin/env python
"""Print the main job's numbers: the run and the baseline trained next to it on this machine for
the same budget, with their iteration counts, and a sentence that compares them.

  python tools/main_job_report.py OUTPUT_DIR --config-file CFG --budget-minutes 8 \\
      --baseline BASELINE_DIR --baseline-config BASELINE_CFG [--threads 1]
  python tools/main_job_report.py OUTPUT_DIR --config-file CFG --budget-minutes 8 --record   # store as a baseline

Reads each run's ``metrics.json`` (the final evaluation: COCO ``segm`` / ``bbox`` AP, BiSeg's
``sem_seg`` mean IU) and ``log.txt`` (iterations and training time). ``tools/main_job.sh`` trains
both side by side, each on half the cores (``--threads`` each), so both see the same machine at the
same time. Runs recorded on other days and machines (``docs/main_job_baselines.json``, one entry
per (config, budget), with the date and machine of the run that made it; ``--record`` adds or
replaces the run's entry) are shown after them, labelled as a reference only: their iteration
counts depend on that machine's speed, so they are not compared with this run.
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


def model_name(config: str) -> str:
    """A short name for a config's model: ``BiSeg``, ``FCIS``, ``InstanceFCN`` or ``Mask R-CNN``."""
    base = os.path.basename(config).lower()
    for key, name in (("biseg", "BiSeg"), ("fcis", "FCIS"), ("instance_fcn", "InstanceFCN"), ("mask_rcnn", "Mask R-CNN")):
        if key in base:
            return name
    return os.path.splitext(os.path.basename(config))[0]


def _ap(run: dict, key: str = "segm/AP"):
    value = run["metrics"].get(key)
    return None if value is None else float(value)


def _seconds(clock):
    """``"h:mm:ss"`` -> seconds (``None`` for ``None``)."""
    if not clock:
        return None
    seconds = 0
    for part in str(clock).split(":"):
        seconds = seconds * 60 + int(part)
    return seconds


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def comparison(config: str, run: dict, baseline_config: str, baseline: dict, budget: float, threads=None) -> str:
    """The plain sentence under the table: same budget, both iteration counts, the mask APs."""
    ours, theirs = model_name(config), model_name(baseline_config)
    if ours == theirs:
        ours, theirs = config, baseline_config
    how = f", side by side with {threads} thread{'s' if threads != 1 else ''} each" if threads else ""
    text = (f"Both were trained here, on this machine, for the same {budget:g}-minute budget{how}: "
            f"{ours} ran {run['iterations']} iterations, {theirs} {baseline['iterations']}.")
    t1, t2 = _seconds(run.get("training_time")), _seconds(baseline.get("training_time"))
    if t1 and t2:
        text += (f" Their training took {run['training_time']} and {baseline['training_time']} of the budget's"
                 f" {_clock(budget * 60)}")
        if max(t1, t2) > 1.25 * min(t1, t2):
            shorter = ours if t1 < t2 else theirs
            text += (f"; {shorter}'s schedule, fitted to the speed measured at its start and shortened when the"
                     " machine ran slower, ended early: compare the iterations as well as the budget")
        text += "."
    a, b = _ap(run), _ap(baseline)
    if a is not None and b is not None:
        if abs(a - b) < 0.05:
            verdict = f"{ours} and {theirs} reach the same mask AP ({a:.1f})"
        else:
            better, worse = (ours, theirs) if a > b else (theirs, ours)
            verdict = f"{better} reaches the higher mask AP, {max(a, b):.1f} against {min(a, b):.1f} for {worse}"
        text += f" {verdict}."
    return text


def report(output_dir: str, config: str, budget: float, baseline_dir=None, baseline_config=None, threads=None) -> str:
    run = read_run(output_dir)
    lines = [
        f"Results on the built-in dataset's val split after {budget:g} minutes of training (x100):",
        "",
        "| model | iterations | training time | " + " | ".join(label for _, label in COLUMNS) + " |",
        "|---|---:|---:|" + "---:|" * len(COLUMNS),
        row(f"{config} (trained here)", run),
    ]
    baseline = None
    if baseline_dir:
        baseline = read_run(baseline_dir)
        lines.append(row(f"{baseline_config} (trained here, same budget)", baseline))
    recorded = [b for b in load_baselines() if b["budget_minutes"] == budget and b["config"] != config]
    for b in recorded:
        lines.append(row(f"{b['config']} (reference only: recorded {b['date']} on a {b['machine']})", b))
    lines.append("")
    if baseline is not None:
        lines.append(comparison(config, run, baseline_config, baseline, budget, threads))
    else:
        lines.append(f"No baseline was trained next to {config} in this run (tools/main_job.sh trains one "
                     "unless BASELINE_CONFIG is empty).")
    if recorded:
        lines.append(f"The recorded row{'s' if len(recorded) > 1 else ''} ({os.path.relpath(BASELINES, REPO)}) "
                     "ran on another day and machine: a reference, not a comparison with this run.")
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
    parser.add_argument("--baseline", metavar="DIR", help="OUTPUT_DIR of the baseline trained next to the run")
    parser.add_argument("--baseline-config", metavar="FILE", help="the baseline's config (with --baseline)")
    parser.add_argument("--threads", type=int, help="torch threads each training had (side by side)")
    parser.add_argument("--record", action="store_true", help=f"store this run as a baseline in {BASELINES}")
    args = parser.parse_args(argv)
    if args.baseline and not args.baseline_config:
        parser.error("--baseline needs --baseline-config")
    if args.record:
        record(args.output_dir, args.config_file, args.budget_minutes)
    print(report(args.output_dir, args.config_file, args.budget_minutes, args.baseline, args.baseline_config,
                 args.threads))
    out = args.output_dir
    print(f"\ntraining curves: {out}/training_curves.png")
    print(f"predictions:     {out}/vis/*_pred_vs_gt.png (instances), {out}/vis/*_sem_seg.png (semantic maps, BiSeg)")
    print(f"score maps:      {out}/score_maps/*_score_maps.png")
    if args.baseline:
        print(f"baseline run:    {args.baseline} (log.txt, metrics.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
