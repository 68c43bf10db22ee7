"""Shared pytest fixtures: where the real data lives and an isolated cache per test session."""
import atexit
import os
import shutil
import tempfile
import types
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """The dataset root holding ``coco128/``: ``$DETECTRON2_DATASETS``, default ``./datasets``
    (detectron2's convention)."""
    return Path(os.environ.get("DETECTRON2_DATASETS", REPO_ROOT / "datasets")).expanduser().resolve()


@pytest.fixture(scope="session")
def coco128_dir() -> Path:
    """The real coco128 data. Tests that need it are skipped where it is absent (a fresh clone),
    unless ``INSTFCN_D2_REQUIRE_DATA=1`` (CI) makes its absence a failure."""
    path = data_root() / "coco128"
    if not path.is_dir():
        message = f"coco128 not found at {path}: set DETECTRON2_DATASETS to the folder holding coco128/"
        if os.environ.get("INSTFCN_D2_REQUIRE_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def pytest_configure(config):
    """Generated datasets and derived annotations go to a fresh temp dir per test session unless
    the caller set ``INSTFCN_D2_CACHE``. Set here, before test modules are imported, because
    ``import instfcn_d2`` registers the datasets (their loaders read the variable when called)."""
    if "INSTFCN_D2_CACHE" not in os.environ:
        path = tempfile.mkdtemp(prefix="instfcn_d2_test_cache_")
        os.environ["INSTFCN_D2_CACHE"] = path
        atexit.register(shutil.rmtree, path, ignore_errors=True)


def cfg_get(cfg, dotted: str):
    """``cfg.A.B.C`` for ``"A.B.C"`` (comparing the same keys of several configs)."""
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def load_script(path) -> "types.ModuleType":
    """Import the script at ``path`` (relative to the repository root) as a module, from its path:
    ``tools/`` and ``dev/`` hold scripts, not packages."""
    import importlib.util

    path = REPO_ROOT / path
    spec = importlib.util.spec_from_file_location(f"instfcn_script_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_tool(name: str):
    """Import ``tools/<name>.py`` as a module."""
    return load_script(f"tools/{name}.py")


def load_dev(name: str):
    """Import ``dev/<name>.py`` (set-up and CI scripts) as a module."""
    return load_script(f"dev/{name}.py")


@pytest.fixture(scope="module")
def one_thread():
    """torch on 1 thread for a module of tiny-tensor tests: on a shared 2-core machine OpenMP
    threads contend and run 10-40x slower. Opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_report_header(config):
    import warnings

    with warnings.catch_warnings():  # the header is printed before pytest's warning filters apply
        warnings.simplefilter("ignore")
        from instfcn_d2.supported import describe_stack

        return f"instfcn-d2 stack: {describe_stack()}"
