"""dev/setup_env.py: choices it makes and the guarantees of its re-runs (no build happens here,
except a deliberately failing one)."""
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, load_dev

pytestmark = pytest.mark.smoke


@pytest.fixture(scope="module")
def setup_env():
    return load_dev("setup_env")


def test_cpu_torch_beside_cuda_torchvision_is_reported_before_any_build(setup_env, monkeypatch):
    info = {"python": [3, 11, 7], "torch": "2.13.0+cpu", "torch_cuda": None, "torchvision_dist": "0.29.1",
            "torchvision_error": "RuntimeError: operator torchvision::nms does not exist"}
    monkeypatch.setattr(setup_env, "run", lambda *a, **k: pytest.fail("nothing may be installed or built"))
    monkeypatch.delenv("INSTFCN_TORCH_VERSION", raising=False)
    with pytest.raises(setup_env.SetupError, match=r"CPU-only build but torchvision 0.29.1 was built for a CUDA torch"):
        setup_env.ensure_torch(Path(sys.executable), False, info)


def test_a_users_torch_outside_the_range_is_left_alone_with_a_reason(setup_env, monkeypatch):
    info = {"python": [3, 11, 7], "torch": "2.9.1", "torch_cuda": "12.8", "torchvision_dist": "0.24.1", "torchvision": "0.24.1"}
    monkeypatch.setattr(setup_env, "run", lambda *a, **k: pytest.fail("a user's environment is not changed"))
    monkeypatch.delenv("INSTFCN_TORCH_VERSION", raising=False)
    with pytest.raises(setup_env.SetupError, match=r"torch 2.9.1 is outside the range.*it is not changed"):
        setup_env.ensure_torch(Path(sys.executable), False, info)


def test_pip_constraints_on_torch_are_found(setup_env, tmp_path, monkeypatch):
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("# cap\ntorch<=2.14.1\nnumpy<3\ntorchvision<=0.29.1  # on disk\n")
    monkeypatch.setenv("PIP_CONSTRAINT", str(constraints))
    found = setup_env.pip_constraints(Path(sys.executable))
    assert f"torch<=2.14.1 ({constraints})" in found and f"torchvision<=0.29.1 ({constraints})" in found
    assert not any("numpy" in f for f in found)


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_unpack_finds_the_source_root(setup_env, tmp_path, kind):
    tree = tmp_path / "detectron2-abc"
    (tree / "detectron2").mkdir(parents=True)
    (tree / "setup.py").write_text("")
    archive = tmp_path / f"src.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as z:
            z.write(tree / "setup.py", "detectron2-abc/setup.py")
    else:
        with tarfile.open(archive, "w:gz") as t:
            t.add(tree, "detectron2-abc")
    assert setup_env.unpack(archive, tmp_path / "out") == tmp_path / "out" / "detectron2-abc"


def test_cuda_home_prefers_the_variable(setup_env, monkeypatch):
    monkeypatch.setenv("CUDA_HOME", "/opt/my-cuda")
    assert setup_env.find_cuda_home("13.0") == "/opt/my-cuda"


def test_a_failed_rebuild_keeps_the_working_extension(setup_env, tmp_path, monkeypatch):
    """Sources changed, the new build fails: the extension in place is untouched and still loads."""
    (current,) = setup_env.current_ext()
    root = tmp_path / "tree"
    shutil.copytree(REPO_ROOT / "layers", root / "layers")
    shutil.copy(REPO_ROOT / "setup.py", root / "setup.py")
    (root / "instfcn_d2").mkdir()
    shutil.copy(REPO_ROOT / "instfcn_d2" / "supported.py", root / "instfcn_d2" / "supported.py")
    old = root / "instfcn_d2" / os.path.basename(current)
    shutil.copy(current, old)
    (root / "instfcn_d2" / "_C.build.json").write_text(json.dumps({"flavour": "cpu", "sources": "an older digest"}))
    for name, value in {"ROOT": root, "PKG": root / "instfcn_d2", "EXT_STAMP": root / "instfcn_d2" / "_C.build.json"}.items():
        monkeypatch.setattr(setup_env, name, value)
    monkeypatch.setenv("CC", "false")  # every compile fails at once
    monkeypatch.setenv("CXX", "false")
    monkeypatch.delenv("FORCE_CUDA", raising=False)
    info = setup_env.probe(Path(sys.executable), str(old))
    assert info["ext"] in ("cpu", "cuda")
    info["instfcn_d2_path"] = str(root / "instfcn_d2")  # registered: no editable install of the copy
    info["cuda_available"] = False
    before = old.read_bytes()
    with pytest.raises(setup_env.SetupError, match="command failed"):
        setup_env.ensure_instfcn(Path(sys.executable), info)
    assert old.read_bytes() == before
    assert sorted(p.name for p in (root / "instfcn_d2").iterdir()) == sorted(["supported.py", old.name, "_C.build.json"])
    assert setup_env.probe(Path(sys.executable), str(old))["ext"] == info["ext"]


@pytest.mark.slow
def test_a_second_run_only_checks(tmp_path):
    """The environment these tests run in is complete: setup_env.sh installs and builds nothing."""
    env = dict(os.environ, INSTFCN_VENV=sys.prefix)
    proc = subprocess.run([str(REPO_ROOT / "dev" / "setup_env.sh")], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "up to date" in out and "present" in out and "ready in" in out
    for word in ("installing", "building", "downloading", "choosing"):
        assert word not in out, out
    assert f"torch {torch.__version__}" in out
