"""tools/main_job.sh's plumbing, with a stub Python that records what it is asked to run: the
flagship and the baseline trained side by side for the same budget with the same threads each,
into sibling folders, the report given both; run twice, the first runs are moved aside."""
import os
import shutil
import subprocess

from conftest import REPO_ROOT

# Records each call (its arguments and thread variables, one line per call); a training writes the
# files a finished run leaves; `train_net.py --help` lists --output-exists as the current one does.
_STUB_PYTHON = r"""#!/usr/bin/env bash
echo "OMP=${OMP_NUM_THREADS:-} $*" >> "$CALLS"
if [ "$1" = tools/train_net.py ]; then
  if [ "$2" = --help ]; then echo "  --output-exists {refuse,move,overwrite}"; exit 0; fi
  out=""; prev=""
  for a in "$@"; do if [ "$prev" = OUTPUT_DIR ]; then out=$a; fi; prev=$a; done
  mkdir -p "$out" && echo '{"iteration": 0, "total_loss": 1.0}' > "$out/metrics.json" && touch "$out/model_final.pth"
  if [ -n "${FAIL_BASELINE:-}" ] && [[ "$*" == *mask_rcnn* ]]; then echo "baseline broke" >&2; exit 3; fi
fi
exit 0
"""


def _checkout(tmp_path):
    root = tmp_path / "repo"
    (root / "tools").mkdir(parents=True)
    (root / "dev").mkdir()
    shutil.copy(REPO_ROOT / "tools" / "main_job.sh", root / "tools" / "main_job.sh")
    (root / "dev" / "setup_env.sh").write_text("#!/usr/bin/env bash\nexit 0\n")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(_STUB_PYTHON)
    for path in (root / "dev" / "setup_env.sh", venv / "bin" / "python"):
        path.chmod(0o755)
    return root, venv


def _run(root, venv, calls, **env):
    full = {**os.environ, "INSTFCN_VENV": str(venv), "CALLS": str(calls), "BUDGET_MINUTES": "3", "THREADS": "1", **env}
    return subprocess.run(["bash", str(root / "tools" / "main_job.sh"), "SOLVER.BASE_LR", "0.01"], cwd=root,
                          env=full, capture_output=True, text=True, timeout=60)


def _trainings(calls):
    return [line for line in calls.read_text().splitlines() if "tools/train_net.py --config-file" in line]


def test_both_models_train_side_by_side_for_the_same_budget(tmp_path):
    root, venv = _checkout(tmp_path)
    calls = tmp_path / "calls.txt"
    proc = _run(root, venv, calls)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trainings = _trainings(calls)
    assert len(trainings) == 2
    baseline = next(t for t in trainings if "mask_rcnn_R18_FPN_GN_cpu.yaml" in t)
    flagship = next(t for t in trainings if "biseg_fused_7_9_R18_cpu.yaml" in t)
    for line in (baseline, flagship):
        assert line.startswith("OMP=1 ") and "--budget-minutes 3 --output-exists move" in line
    assert "OUTPUT_DIR output/main_job_mask_rcnn" in baseline and "SOLVER.BASE_LR" not in baseline
    assert flagship.endswith("OUTPUT_DIR output/main_job SOLVER.BASE_LR 0.01")  # the overrides go to CONFIG only
    report = next(line for line in calls.read_text().splitlines() if "tools/main_job_report.py" in line)
    assert report.endswith("output/main_job --config-file configs/shapes/biseg_fused_7_9_R18_cpu.yaml --budget-minutes 3 "
                           "--baseline output/main_job_mask_rcnn --baseline-config "
                           "configs/shapes/mask_rcnn_R18_FPN_GN_cpu.yaml --threads 1")
    assert (root / "output" / "main_job_mask_rcnn" / "console.log").is_file()

    # run again: the previous runs are moved aside, both train afresh
    calls.unlink()
    proc = _run(root, venv, calls)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(_trainings(calls)) == 2
    moved = sorted(p.name for p in (root / "output").iterdir() if "." in p.name)
    assert [name.split(".")[0] for name in moved] == ["main_job", "main_job_mask_rcnn"], moved
    assert "moving the previous run in output/main_job aside" in proc.stdout


def test_a_failed_baseline_fails_the_job_and_no_baseline_trains_alone(tmp_path):
    root, venv = _checkout(tmp_path)
    calls = tmp_path / "calls.txt"
    proc = _run(root, venv, calls, FAIL_BASELINE="1")
    assert proc.returncode == 3 and "the training of configs/shapes/mask_rcnn_R18_FPN_GN_cpu.yaml failed" in proc.stderr
    assert "baseline broke" in proc.stderr  # the tail of its console
    assert "main_job_report.py" not in calls.read_text()

    calls.unlink()
    proc = _run(root, venv, calls, BASELINE_CONFIG="", THREADS_ALONE="2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (training,) = _trainings(calls)
    assert training.startswith("OMP=2 ") and "biseg" in training
    report = next(line for line in calls.read_text().splitlines() if "tools/main_job_report.py" in line)
    assert "--baseline" not in report
