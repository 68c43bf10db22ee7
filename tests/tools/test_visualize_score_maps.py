"""tools/visualize_score_maps.py: the panels are the model's own tensors, and the PNGs are written."""
import cv2
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from conftest import REPO_ROOT, load_tool
from tiny_models import TINY_CHECKPOINT_MODELS, TINY_CHECKPOINTS, TINY_TRUNK, tiny_checkpoint_cfg, tiny_checkpoint_image

from instfcn_d2.layers import window_assemble


@pytest.fixture(scope="module")
def tool():
    import instfcn_d2  # noqa: F401

    return load_tool("visualize_score_maps")


def _model_and_input(tool, name, tmp_path):
    cfg = tiny_checkpoint_cfg(name, "MODEL.WEIGHTS", str(TINY_CHECKPOINTS / f"{name}_model.pth"))
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    path = tmp_path / "image.png"
    cv2.imwrite(str(path), tiny_checkpoint_image().permute(1, 2, 0).numpy())  # BGR, as the configs read it
    return cfg, model, tool.prepare(cfg, str(path)), path


def test_instance_fcn_windows_are_the_assembled_maps(tool, tmp_path):
    cfg, model, prepared, _ = _model_and_input(tool, "instance_fcn", tmp_path)
    panels = tool.instance_fcn_panels(model, prepared, num_windows=4)
    k, m = model.mask_head.group_size, model.window_size
    assert panels["maps"].shape[0] == k * k and panels["windows"].shape == (4, m, m)
    # the window panel is the op's output on the map panels at the listed corners
    expected = window_assemble(panels["maps"][None], m, k, panels["positions"])
    assert torch.equal(panels["windows"], expected)
    assert torch.all(panels["scores"][:-1] >= panels["scores"][1:])  # top windows by objectness


@pytest.mark.parametrize("name", ["fcis", "biseg"])
def test_fcis_and_biseg_panels_are_what_inference_reads(tool, tmp_path, name):
    cfg, model, prepared, _ = _model_and_input(tool, name, tmp_path)
    panels = tool.fcis_panels(model, prepared)
    reader = model.roi_heads.reader  # what inference reads the maps with
    c, box = int(panels["class_index"]), panels["box"]
    rois = torch.cat([box.new_zeros(1), box])[None]
    with torch.no_grad():
        images = model.preprocess_image([prepared.inputs])
        features = model.backbone(images.tensor)
        maps = model.score_maps(images, features)
        io = reader.roi_inside_outside_of_class(maps, rois, c)[0]
    k = reader.group_size
    assert panels["cell_maps"].shape[:2] == (2, k * k)
    if name == "fcis":  # the assembled panel is the inside/outside pair inference reads
        torch.testing.assert_close(panels["assembled"], io)
    else:  # BiSeg: prior x likelihood = posterior, and the posterior is what inference reads
        torch.testing.assert_close(panels["posterior"], io)
        torch.testing.assert_close(panels["posterior"][0], panels["likelihood"][0] * panels["prior"])  # "product"
        torch.testing.assert_close(panels["posterior"][1], panels["likelihood"][1])  # outside unchanged
    torch.testing.assert_close(panels["mask"], torch.softmax(io, dim=0)[0])


@pytest.mark.parametrize("name", ["instance_fcn", "fcis", "biseg"])
def test_main_writes_a_png_per_image(tool, tmp_path, name):
    _, _, _, path = _model_and_input(tool, name, tmp_path)
    config, opts = TINY_CHECKPOINT_MODELS[name]
    written = tool.main(["--config-file", str(REPO_ROOT / config), "--input", str(path), "--output", str(tmp_path / "out"),
                         *TINY_TRUNK, *opts, "MODEL.WEIGHTS", str(TINY_CHECKPOINTS / f"{name}_model.pth")])
    assert len(written) == 1 and written[0].endswith("image_score_maps.png")
    image = cv2.imread(written[0])
    assert image is not None and image.shape[0] > 200 and image.shape[1] > 200


def test_main_refuses_a_random_model(tool, tmp_path):
    with pytest.raises(SystemExit):
        tool.main(["--config-file", "configs/shapes/fcis_R18_cpu.yaml", "--input", str(tmp_path / "x.png"),
                   "--output", str(tmp_path)])


def test_fcis_panels_of_maps_on_several_levels_read_the_detections_level(tool, tmp_path):
    """With maps on p2 ... p5 the panels show the level the detection is read from."""
    from instfcn_d2.config import get_instfcn_cfg

    opts = TINY_TRUNK + TINY_CHECKPOINT_MODELS["fcis"][1] + [
        "MODEL.FPN.OUT_CHANNELS", "16", "MODEL.FPN.NORM", "", "MODEL.ROI_HEADS.IN_FEATURES", '["p2", "p3", "p4", "p5"]',
        "MODEL.FCIS.SCORE_THRESH_TEST", "0.0"]
    cfg = get_instfcn_cfg(str(REPO_ROOT / "configs" / "custom" / "fcis_R18_FPN_cpu.yaml"), opts)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    path = tmp_path / "image.png"
    cv2.imwrite(str(path), tiny_checkpoint_image().permute(1, 2, 0).numpy())
    prepared = tool.prepare(cfg, str(path))
    panels = tool.fcis_panels(model, prepared)
    reader = model.roi_heads.reader
    rois = torch.cat([panels["box"].new_zeros(1), panels["box"]])[None]
    with torch.no_grad():
        images = model.preprocess_image([prepared.inputs])
        maps = model.score_maps(images, model.backbone(images.tensor))
        io = reader.roi_inside_outside_of_class(maps, rois, int(panels["class_index"]))[0]
    torch.testing.assert_close(panels["assembled"], io)
    assert panels["cell_maps"].shape[:2] == (2, reader.group_size ** 2)
