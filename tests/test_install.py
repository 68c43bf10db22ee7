"""The installed stack: supported versions, registrations, the extension and detectron2's ops."""
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT

pytestmark = pytest.mark.smoke


def test_import_registers_models_datasets_and_ops():
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import META_ARCH_REGISTRY

    import instfcn_d2  # noqa: F401

    for name in ("InstanceFCN", "FCIS", "BiSeg"):
        assert META_ARCH_REGISTRY.get(name) is not None
    assert "instfcn_shapes_train" in DatasetCatalog.list()
    assert hasattr(torch.ops.instfcn_d2, "ps_roi_assemble") and hasattr(torch.ops.instfcn_d2, "window_assemble")


def test_installed_versions_are_inside_the_supported_ranges():
    import torchvision

    from instfcn_d2 import supported

    assert supported.torch_problem(torch.__version__) == ""
    assert supported.python_problem(sys.version_info) == ""
    assert supported.TORCHVISION_MIN <= supported.major_minor(torchvision.__version__) <= supported.TORCHVISION_MAX
    version = supported.detectron2_version()
    assert version in supported.DETECTRON2_VERSIONS
    if version == "main":  # installed with its compiled ops
        from detectron2 import _C  # noqa: F401


@pytest.mark.parametrize("version,ok", [("2.14.1+cu130", True), ("2.11.0", True), ("2.15.0", True),
                                        ("2.10.0", False), ("2.16.0", False), ("1.13.1+cpu", False)])
def test_torch_range(version, ok):
    from instfcn_d2.supported import major_minor, torch_problem

    assert major_minor("2.14.1+cu130") == (2, 14)
    problem = torch_problem(version)
    assert (problem == "") == ok
    if not ok:
        assert version in problem and "2.11 to 2.15" in problem and "INSTFCN_D2_ALLOW_UNTESTED_TORCH" in problem


def test_setup_py_refuses_an_unsupported_torch(tmp_path):
    code = (
        "import sys, runpy, torch; torch.__version__ = '2.9.1'; "
        f"sys.argv = ['setup.py', '--name']; runpy.run_path({str(REPO_ROOT / 'setup.py')!r}, run_name='__main__')"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "torch 2.9.1 is outside the range instfcn-d2 supports" in proc.stderr
