"""tools/deploy/: a whole FCIS exported by AOTInductor (image to detections, one .pt2), run from
C++ without Python, gives the detections of Python's deployed model and of the eager model.

The artefact is compiled once for the module (AOTInductor takes minutes); the C++ program is
built with CMake against the torch wheel's headers and libraries, then run on two images of
different sizes (different detection counts) with a plain environment: no Python on its path.
"""
import os
import shutil
import struct
import subprocess

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT
from tiny_models import TINY_CHECKPOINTS, tiny_checkpoint_cfg, tiny_checkpoint_image

from instfcn_d2.checkpoint import StrictDetectionCheckpointer
from instfcn_d2.deploy import load
from instfcn_d2.export import export_model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (shutil.which("cmake") and shutil.which("c++")), reason="needs cmake and a C++ compiler"),
]


@pytest.fixture(scope="module")
def whole_fcis(tmp_path_factory):
    """The tiny FCIS checkpoint, exported whole with AOTInductor: (model, artefact folder)."""
    from detectron2.modeling import build_model

    cfg = tiny_checkpoint_cfg("fcis", "MODEL.WEIGHTS", str(TINY_CHECKPOINTS / "fcis_model.pth"),
                              "MODEL.FCIS.DETECTIONS_PER_IMAGE", "300")
    model = build_model(cfg)
    StrictDetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    folder = tmp_path_factory.mktemp("whole_fcis")
    export_model(model, "aoti", tiny_checkpoint_image().float(), str(folder), input_format=cfg.INPUT.FORMAT, whole=True)
    return model, folder


@pytest.fixture(scope="module")
def cpp_program(tmp_path_factory):
    build = tmp_path_factory.mktemp("cpp_build")
    torch_root = os.path.dirname(torch.__file__)
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    configure = subprocess.run(
        ["cmake", "-S", str(REPO_ROOT / "tools" / "deploy"), "-B", str(build), *generator, f"-DTORCH_ROOT={torch_root}",
         f"-DTORCH_CXX11_ABI={abi}", "-DCMAKE_BUILD_TYPE=Release"],
        capture_output=True, text=True, timeout=300,
    )
    assert configure.returncode == 0, configure.stdout[-2000:] + configure.stderr[-2000:]
    made = subprocess.run(["cmake", "--build", str(build)], capture_output=True, text=True, timeout=1200)
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    return build / "instfcn_detect"


def _images():
    image = tiny_checkpoint_image().float()  # (3, 128, 160)
    second = image[:, 16:112, 8:128].flip(-1).contiguous()  # (3, 96, 120)
    return [(image, (256, 320)), (second, (96, 120))]


def _ops_library() -> str:
    import instfcn_d2

    (path,) = [os.path.join(os.path.dirname(instfcn_d2.__file__), f)
               for f in os.listdir(os.path.dirname(instfcn_d2.__file__)) if f.startswith("_C") and f.endswith(".so")]
    return path


def _run_cpp(program, folder, image, size, prefix):
    h, w = image.shape[-2:]
    with open(f"{prefix}.bin", "wb") as f:
        f.write(struct.pack("<4i", h, w, size[0], size[1]))
        f.write(image.contiguous().numpy().astype("<f4").tobytes())
    # a plain environment: no PYTHONPATH / PYTHONHOME, nothing of the interpreter running this test
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(program), str(folder / "whole_aoti.pt2"), _ops_library(), f"{prefix}.bin", prefix],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = np.loadtxt(f"{prefix}.txt", ndmin=2)
    k = len(rows)
    masks = np.fromfile(f"{prefix}.masks", dtype=np.uint8).reshape(k, size[0], size[1])
    return {"classes": torch.as_tensor(rows[:, 0]).long(), "scores": torch.as_tensor(rows[:, 1]).float(),
            "boxes": torch.as_tensor(rows[:, 2:6]).float(), "masks": torch.as_tensor(masks).bool()}


def test_whole_aoti_in_python_equals_eager(whole_fcis):
    model, folder = whole_fcis
    deployed = load(str(folder))
    assert deployed.whole and deployed.format == "aoti"
    counts = []
    with torch.no_grad():
        for image, (h, w) in _images():
            ref = model([{"image": image, "height": h, "width": w}])[0]["instances"]
            got = deployed(image, (h, w))
            counts.append(len(ref))
            assert len(got.scores) == len(ref) > 0
            assert torch.equal(got.classes, ref.pred_classes)
            torch.testing.assert_close(got.boxes, ref.pred_boxes.tensor, atol=1e-3, rtol=0)
            torch.testing.assert_close(got.scores, ref.scores, atol=1e-5, rtol=0)
            assert got.masks.shape == ref.pred_masks.shape
            assert (got.masks != ref.pred_masks).sum() <= 2 * len(ref)  # a flipped pixel at most, here and there
    assert counts[0] != counts[1], counts


def test_cpp_example_writes_the_detections_of_python(whole_fcis, cpp_program, tmp_path):
    _, folder = whole_fcis
    deployed = load(str(folder))
    for i, (image, size) in enumerate(_images()):
        got = _run_cpp(cpp_program, folder, image, size, str(tmp_path / f"image{i}"))
        ref = deployed(image, size)
        assert len(got["scores"]) == len(ref.scores) > 0
        assert torch.equal(got["classes"], ref.classes)
        torch.testing.assert_close(got["scores"], ref.scores.float(), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(got["boxes"], ref.boxes.float(), atol=1e-4, rtol=1e-6)
        assert torch.equal(got["masks"], ref.masks)


def test_cpp_example_names_what_is_wrong(cpp_program, whole_fcis, tmp_path):
    _, folder = whole_fcis
    short = tmp_path / "short.bin"
    short.write_bytes(struct.pack("<4i", 64, 64, 64, 64) + b"\0" * 100)
    proc = subprocess.run([str(cpp_program), str(folder / "whole_aoti.pt2"), _ops_library(), str(short), str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "fewer than the 3*h*w float32 pixels" in proc.stderr
    proc = subprocess.run([str(cpp_program), str(folder / "whole_aoti.pt2"), str(tmp_path / "none.so"), str(short), "o"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "cannot load the operator library" in proc.stderr
    proc = subprocess.run([str(cpp_program)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "usage:" in proc.stderr
