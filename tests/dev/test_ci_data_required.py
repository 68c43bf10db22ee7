""".ci/run and tests/conftest.py: in CI the real data is required. Without the data folder beside
the checkout (coco128), the coco128 tests would skip and CI pass untested, so .ci/run stops with a message; and
INSTFCN_D2_REQUIRE_DATA=1 (exported in CI) turns a data test's skip into a failure."""
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

# stands in for dev/run_tests.sh: shows what .ci/run exported, then stops the script
_STUB_RUN_TESTS = """#!/usr/bin/env bash
echo "REQUIRE=${INSTFCN_D2_REQUIRE_DATA:-} DATASETS=${DETECTRON2_DATASETS:-}"
exit 7
"""


def _ci_checkout(tmp_path, with_data):
    """``tmp_path/checkout`` holding .ci/run and a stub dev/run_tests.sh, ``tmp_path/shared`` beside
    it (with ``data/coco128`` if ``with_data``)."""
    root = tmp_path / "checkout"
    (root / ".ci").mkdir(parents=True)
    (root / "dev").mkdir()
    shutil.copy(REPO_ROOT / ".ci" / "run", root / ".ci" / "run")
    (root / "dev" / "run_tests.sh").write_text(_STUB_RUN_TESTS)
    (root / "dev" / "run_tests.sh").chmod(0o755)
    if with_data:
        (tmp_path / "shared" / "data" / "coco128").mkdir(parents=True)
    return root


def _run_ci(root, ci):
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "INSTFCN_D2_REQUIRE_DATA", "DETECTRON2_DATASETS")}
    env["PATH"] = "/usr/bin:/bin"  # no nvcc: the stub is called without FORCE_CUDA either way
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(["bash", str(root / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60)


def test_ci_without_the_data_fails_before_running_the_tests(tmp_path):
    proc = _run_ci(_ci_checkout(tmp_path, with_data=False), ci="true")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "real data is missing" in proc.stderr and "shared/data/coco128 not found" in proc.stderr
    assert "REQUIRE=" not in proc.stdout and "stack 1" not in proc.stdout  # stopped before the tests


def test_ci_with_the_data_requires_it_in_the_tests(tmp_path):
    proc = _run_ci(_ci_checkout(tmp_path, with_data=True), ci="true")
    assert proc.returncode == 7, proc.stdout + proc.stderr  # the stub ran
    data = (tmp_path / "checkout" / ".." / "shared" / "data").resolve()
    line = next(x for x in proc.stdout.splitlines() if x.startswith("REQUIRE="))
    assert line.split()[0] == "REQUIRE=1"
    assert os.path.realpath(line.split("DATASETS=", 1)[1]) == str(data)


def test_outside_ci_the_missing_data_is_allowed(tmp_path):
    """A developer's clone without the data folder beside it: the suite runs, the data tests skip with the reason."""
    proc = _run_ci(_ci_checkout(tmp_path, with_data=False), ci=None)
    assert proc.returncode == 7, proc.stdout + proc.stderr
    assert "REQUIRE= DATASETS=" in proc.stdout


@pytest.mark.parametrize("require", ["1", None])
def test_conftest_fails_a_data_test_when_the_data_is_required(tmp_path, require):
    """A coco128 test on a machine without coco128: skipped, or failed with INSTFCN_D2_REQUIRE_DATA=1."""
    env = {k: v for k, v in os.environ.items() if k != "INSTFCN_D2_REQUIRE_DATA"}
    env["DETECTRON2_DATASETS"] = str(tmp_path / "no_data_here")
    if require:
        env["INSTFCN_D2_REQUIRE_DATA"] = require
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfEs",
         "tests/data/test_coco128.py::test_prepare_is_idempotent"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert "coco128 not found at" in out, out[-3000:]
    if require:
        assert proc.returncode == 1 and "1 error" in out, out[-3000:]
    else:
        assert proc.returncode == 0 and "1 skipped" in out, out[-3000:]
