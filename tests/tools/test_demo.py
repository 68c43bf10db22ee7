"""tools/demo.py: images (a glob) -> one PNG each, a video -> a video, for tiny checkpoints of
FCIS, BiSeg, InstanceFCN and Mask R-CNN; the score threshold mapping; the errors."""
import os
import re

import cv2
import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, load_tool
from tiny_models import TINY_TRUNK  # the tiny trunks of the checkpoint compatibility tests

pytestmark = pytest.mark.usefixtures("one_thread")

FCIS_HEADS = [
    "MODEL.ROI_HEADS.NUM_CLASSES", "2",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "30",
    "MODEL.FCIS.CONV_NEW_DIM", "16",
    "MODEL.FCIS.GROUP_SIZE", "3",
    "MODEL.FCIS.MASK_SIZE", "7",
    "MODEL.FCIS.DETECTIONS_PER_IMAGE", "10",
]
MODELS = {
    "fcis": ("configs/shapes/fcis_R18_cpu.yaml", TINY_TRUNK + FCIS_HEADS),
    "biseg": (
        "configs/shapes/biseg_fused_7_9_R18_cpu.yaml",
        TINY_TRUNK + FCIS_HEADS + ["MODEL.BISEG.GROUP_SIZE_FINE", "5", "MODEL.BISEG.SEM_SEG_CONV_DIM", "16",
                                   "MODEL.BISEG.FINE_CONV_NEW_DIM", "8", "MODEL.BISEG.MASK_SIZE", "0"],
    ),
    "instance_fcn": (
        "configs/shapes/instance_fcn_R18_cpu.yaml",
        TINY_TRUNK + ["MODEL.INSTANCE_FCN.MASK_BRANCH_DIM", "16", "MODEL.INSTANCE_FCN.OBJECTNESS_DIM", "16",
                      "MODEL.INSTANCE_FCN.REDUCE_DIM", "0", "MODEL.INSTANCE_FCN.DETECTIONS_PER_IMAGE", "20",
                      "TEST.AUG.ENABLED", "False"],
    ),
    # detectron2's R18 needs a 64-wide res2; the rest is shrunk
    "mask_rcnn": (
        "configs/shapes/mask_rcnn_R18_FPN_GN_cpu.yaml",
        TINY_TRUNK + ["MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.FPN.OUT_CHANNELS", "16", "MODEL.FPN.NORM", "",
                      "MODEL.ROI_MASK_HEAD.NORM", "", "MODEL.ROI_MASK_HEAD.CONV_DIM", "16",
                      "MODEL.ROI_BOX_HEAD.FC_DIM", "32", "MODEL.ROI_HEADS.NUM_CLASSES", "2",
                      "MODEL.RPN.POST_NMS_TOPK_TEST", "30", "TEST.DETECTIONS_PER_IMAGE", "10"],
    ),
}
IMAGE_SIZES = [(64, 80), (72, 96), (80, 64)]  # (H, W)
SCALE = 2.0


@pytest.fixture(scope="module")
def demo():
    return load_tool("demo")


def _config(name):
    return str(REPO_ROOT / MODELS[name][0])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """name -> path of a tiny checkpoint of that model (built on first use)."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    import instfcn_d2  # noqa: F401
    from instfcn_d2.config import get_instfcn_cfg

    folder = tmp_path_factory.mktemp("demo_checkpoints")
    built = {}

    def get(name):
        if name not in built:
            torch.manual_seed(0)
            model = build_model(get_instfcn_cfg(_config(name), MODELS[name][1]))
            if name != "mask_rcnn":  # trained-looking weights: the from-scratch score maps are nearly zero
                with torch.no_grad():
                    for p in model.parameters():
                        p.add_(torch.randn_like(p) * 0.05)
            DetectionCheckpointer(model, str(folder)).save(f"{name}_model")
            built[name] = str(folder / f"{name}_model.pth")
        return built[name]

    return get


def _image(seed, size):
    rng = np.random.default_rng(seed)
    H, W = size
    yy, xx = np.mgrid[:H, :W]
    img = 90 + 40 * np.sin(xx / 7.0 + seed)[..., None] + rng.normal(0, 5, (H, W, 3))
    img[H // 5:H // 2, W // 6:W // 2] = (200, 60, 40)
    img[((yy - 2 * H // 3) ** 2 + (xx - 2 * W // 3) ** 2) < (min(H, W) // 5) ** 2] = (40, 180, 220)
    return np.clip(img, 0, 255).astype(np.uint8)


def _write_images(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for i, size in enumerate(IMAGE_SIZES):
        cv2.imwrite(str(folder / f"img{i}.png"), _image(i, size))
    return folder


def _argv(name, *extra, weights=None):
    opts = list(MODELS[name][1]) + (["MODEL.WEIGHTS", weights] if weights else [])
    return ["--config-file", _config(name), *extra, "--opts", *opts]


def _png_size(path):
    image = cv2.imread(str(path))
    assert image is not None, path
    return image.shape[:2]


# ------------------------------------------------------------------ model runs
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_images_from_a_glob_give_one_png_each(demo, checkpoint, tmp_path, capsys, name):
    images = _write_images(tmp_path / "in")
    out = tmp_path / "out"
    semantic = ["--semantic"] if name == "biseg" else []
    written = demo.main(_argv(name, "--input", str(images / "*.png"), "--output", str(out) + "/",
                              "--confidence-threshold", "0.0", "--scale", str(SCALE), *semantic,
                              weights=checkpoint(name)))
    expected = sorted(f"img{i}.png" for i in range(len(IMAGE_SIZES)))
    if semantic:
        expected = sorted(expected + [f"img{i}_sem_seg.png" for i in range(len(IMAGE_SIZES))])
    assert sorted(os.listdir(out)) == expected
    assert sorted(os.path.basename(p) for p in written) == expected
    for i, (h, w) in enumerate(IMAGE_SIZES):
        assert _png_size(out / f"img{i}.png") == (h * SCALE, w * SCALE)
        if semantic:
            assert _png_size(out / f"img{i}_sem_seg.png") == (h * SCALE, w * SCALE)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[demo] ")]
    progress = [line for line in lines if " instances in " in line]
    assert [line.split()[1] for line in progress] == ["1/3", "2/3", "3/3"]
    assert str(images / "img0.png") in progress[0]
    # threshold 0: the tiny models give detections, so the drawing path is exercised
    assert sum(int(line.split(": ")[1].split()[0]) for line in progress) > 0


@pytest.mark.slow
def test_one_image_to_a_file_name(demo, checkpoint, tmp_path):
    images = _write_images(tmp_path / "in")
    target = tmp_path / "drawn.png"
    written = demo.main(_argv("fcis", "--input", str(images / "img1.png"), "--output", str(target),
                              "--confidence-threshold", "0.0", weights=checkpoint("fcis")))
    assert written == [str(target)]
    assert _png_size(target) == IMAGE_SIZES[1]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fcis", "biseg"])
def test_video_gives_a_video_of_the_same_frames(demo, checkpoint, tmp_path, capsys, name):
    H, W, frames = 64, 80, 5
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (W, H))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(_image(i, (H, W)))
    writer.release()
    out = tmp_path / "out"
    semantic = ["--semantic"] if name == "biseg" else []
    written = demo.main(_argv(name, "--video-input", str(video), "--output", str(out), "--confidence-threshold", "0.0",
                              *semantic, weights=checkpoint(name)))
    expected = [str(out / "clip.mp4")] + ([str(out / "clip_sem_seg.mp4")] if semantic else [])
    assert written == expected
    for path in written:
        capture = cv2.VideoCapture(path)
        count = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            assert frame.shape == (H, W, 3)
            count += 1
        capture.release()
        assert count == frames, path
    assert "5 frames" in capsys.readouterr().out


# ------------------------------------------------------------------ errors and set-up
def test_help_has_the_examples(demo, capsys):
    with pytest.raises(SystemExit) as e:
        demo.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--config-file", "--webcam", "--video-input", "--input", "--output", "--confidence-threshold",
                 "--opts", "--semantic", "--allow-random-weights", "Examples"):
        assert flag in text


def test_refuses_to_run_without_weights(demo, tmp_path):
    images = _write_images(tmp_path / "in")
    with pytest.raises(demo.DemoError, match="MODEL.WEIGHTS.*--allow-random-weights"):
        demo.main(_argv("fcis", "--input", str(images / "*.png"), "--output", str(tmp_path / "out")))
    with pytest.raises(demo.DemoError, match="checkpoint not found: .*nowhere.pth"):
        demo.main(_argv("fcis", "--input", str(images / "*.png"), "--output", str(tmp_path / "out"),
                        weights=str(tmp_path / "nowhere.pth")))
    assert not (tmp_path / "out").exists()


def test_glob_matching_nothing_is_named(demo, tmp_path):
    pattern = str(tmp_path / "in" / "*.jpg")
    with pytest.raises(demo.DemoError, match=re.escape(f"pattern '{pattern}' matches no file")):
        demo.main(_argv("fcis", "--input", pattern, "--output", str(tmp_path / "out"), "--allow-random-weights"))
    with pytest.raises(demo.DemoError, match="image not found: .*missing.png"):
        demo.main(_argv("fcis", "--input", str(tmp_path / "missing.png"), "--output", str(tmp_path / "out"),
                        "--allow-random-weights"))


def test_unreadable_image_is_named(demo, tmp_path):
    images = _write_images(tmp_path / "in")
    bad = images / "a_broken.png"  # sorted first: the error comes before any model run
    bad.write_bytes(b"not a png")
    with pytest.raises(demo.DemoError, match=re.escape(f"cannot read image {bad}")):
        demo.main(_argv("fcis", "--input", str(images / "*.png"), "--output", str(tmp_path / "out"),
                        "--allow-random-weights"))


def test_output_errors(demo, tmp_path, monkeypatch):
    images = _write_images(tmp_path / "in")
    with pytest.raises(demo.DemoError, match="is a file name but there are 3 input images"):
        demo.main(_argv("fcis", "--input", str(images), "--output", str(tmp_path / "x.png"), "--allow-random-weights"))
    with pytest.raises(demo.DemoError, match="would overwrite"):
        demo.main(_argv("fcis", "--input", str(images / "img0.png"), "--output", str(images),
                        "--allow-random-weights"))
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(demo.DemoError, match="give --output"):
        demo.main(_argv("fcis", "--input", str(images), "--allow-random-weights"))
    with pytest.raises(demo.DemoError, match="FCIS gives no sem_seg output"):
        demo.main(_argv("fcis", "--semantic", "--input", str(images), "--output", str(tmp_path / "out"),
                        "--allow-random-weights"))


@pytest.mark.parametrize("name,key", [
    ("fcis", "MODEL.FCIS.SCORE_THRESH_TEST"),
    ("biseg", "MODEL.FCIS.SCORE_THRESH_TEST"),
    ("instance_fcn", "MODEL.INSTANCE_FCN.SCORE_THRESH_TEST"),
    ("mask_rcnn", "MODEL.ROI_HEADS.SCORE_THRESH_TEST"),
])
def test_confidence_threshold_goes_to_the_models_key(demo, name, key):
    import instfcn_d2  # noqa: F401

    args = demo.get_parser().parse_args(_argv(name, "--input", "x.png", "--confidence-threshold", "0.37"))
    cfg = demo.setup_cfg(args)
    node = cfg
    for part in key.split("."):
        node = node[part]
    assert node == pytest.approx(0.37)
    metadata = demo.demo_metadata(cfg)
    if name == "instance_fcn":
        assert metadata.thing_classes == ["proposal"]
    else:  # the shapes dataset has 4 classes, the tiny models 2
        assert metadata.thing_classes == ["class 0", "class 1"]
        assert metadata.stuff_classes == ["background", "class 0", "class 1"]


def test_checkpoint_of_another_model_is_refused(demo, checkpoint, tmp_path):
    images = _write_images(tmp_path / "in")
    with pytest.raises(demo.DemoError, match="(?s)does not fit the model.*MODEL.WEIGHTS must be a checkpoint"):
        demo.main(_argv("biseg", "--input", str(images), "--output", str(tmp_path / "out"),
                        weights=checkpoint("fcis")))
    assert not (tmp_path / "out").exists()
