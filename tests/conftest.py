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


# A short real training of BiSeg (the project's flagship) through tools/train_net.py on a small split
# of the built-in synthetic shapes (128-px images): the model of docs' shapes config at half its
# heads' width, 300 iterations. About 45 s of CPU on one thread. After it the model detects and
# segments the shapes (measured: mask AP 4.2, box AP 6.0, mean IU 19.5), which a model that does
# not learn does not (SOLVER.BASE_LR 0.0: mask AP 0.07, box AP 0.1, mean IU 11.4).
LEARNED_CONFIG = "configs/shapes/biseg_fused_7_9_R18_cpu.yaml"
LEARNED_DATASET = "learned_shapes"
LEARNED_OPTS = [
    "DATASETS.TRAIN", f"('{LEARNED_DATASET}_train',)",
    "DATASETS.TEST", f"('{LEARNED_DATASET}_val',)",
    "INPUT.MIN_SIZE_TRAIN", "(128,)",
    "INPUT.MAX_SIZE_TRAIN", "256",
    "INPUT.MIN_SIZE_TEST", "128",
    "INPUT.MAX_SIZE_TEST", "256",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
    "MODEL.FCIS.CONV_NEW_DIM", "64",
    "MODEL.FCIS.BATCH_SIZE_PER_IMAGE", "32",
    "MODEL.FCIS.DETECTIONS_PER_IMAGE", "20",
    "MODEL.BISEG.SEM_SEG_CONV_DIM", "32",
    "SOLVER.IMS_PER_BATCH", "4",
    "SOLVER.MAX_ITER", "300",
    "SOLVER.STEPS", "(240,)",
    "SOLVER.WARMUP_ITERS", "30",
    "SOLVER.CHECKPOINT_PERIOD", "100000",
    "TEST.EVAL_PERIOD", "0",
]


def register_learned_dataset():
    """The synthetic split :data:`LEARNED_OPTS` trains and evaluates on: 64 + 16 images of 128 px."""
    import instfcn_d2  # noqa: F401
    from instfcn_d2.data import register_synthetic_shapes

    return register_synthetic_shapes(LEARNED_DATASET, num_train=64, num_val=16, image_size=128, seed=3)


def train_learned_model(output_dir, *opts):
    """Train :data:`LEARNED_CONFIG` with :data:`LEARNED_OPTS` (then ``opts``) through
    ``tools/train_net.py``'s ``main`` on one torch thread (a loaded 2-core machine runs the
    multi-threaded kernels many times slower); returns its final evaluation."""
    import torch

    register_learned_dataset()
    train_net = load_tool("train_net")
    argv = ["--config-file", str(REPO_ROOT / LEARNED_CONFIG), *LEARNED_OPTS, *opts, "OUTPUT_DIR", str(output_dir)]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_net.main(train_net.argument_parser().parse_args(argv))
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def learned_model(tmp_path_factory):
    """:func:`train_learned_model` once per session: ``(output_dir, results)``; the weights are
    ``output_dir / "model_final.pth"``."""
    out = tmp_path_factory.mktemp("learned") / "run"
    return out, train_learned_model(out)


def pytest_report_header(config):
    import warnings

    with warnings.catch_warnings():  # the header is printed before pytest's warning filters apply
        warnings.simplefilter("ignore")
        from instfcn_d2.supported import describe_stack

        return f"instfcn-d2 stack: {describe_stack()}"
