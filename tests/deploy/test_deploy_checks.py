"""What a deployed model refuses, naming the file, key or value at fault: a deploy.json that is not
JSON, names another model or lacks what the post-processing reads; a graph file cut short or of
another format; an image in another layout or value range than the graph takes."""
import json
import shutil

import pytest
import torch
from detectron2.modeling import build_model

from tiny_models import TINY_CHECKPOINTS, tiny_checkpoint_cfg, tiny_checkpoint_image

from instfcn_d2.checkpoint import StrictDetectionCheckpointer
from instfcn_d2.deploy import load
from instfcn_d2.export import export_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """An FCIS exported to TorchScript once; each test works on a copy."""
    cfg = tiny_checkpoint_cfg("fcis", "MODEL.WEIGHTS", str(TINY_CHECKPOINTS / "fcis_model.pth"))
    model = build_model(cfg)
    StrictDetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    folder = tmp_path_factory.mktemp("fcis_ts")
    export_model(model.eval(), "torchscript", tiny_checkpoint_image().float(), str(folder))
    return folder


@pytest.fixture
def folder(exported, tmp_path):
    copy = tmp_path / "export"
    shutil.copytree(exported, copy)
    return copy


def _edit(folder, **changes):
    meta = json.loads((folder / "deploy.json").read_text())
    meta.update(changes)
    (folder / "deploy.json").write_text(json.dumps(meta))
    return meta


def test_a_good_folder_loads_and_detects(folder):
    det = load(str(folder))(tiny_checkpoint_image())
    assert len(det) > 0


def test_deploy_json_that_is_not_json(folder):
    (folder / "deploy.json").write_text('{"format": "torchscript", ')
    with pytest.raises(ValueError, match=r"deploy.json is not a JSON file"):
        load(str(folder))
    (folder / "deploy.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"deploy.json holds a list"):
        load(str(folder))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"model": "Yolo"}, r"'model' is 'Yolo', not one of"),
        ({"model": "InstanceFCN"}, r"'outputs' lacks \['mask_maps', 'objectness'\]"),
        ({"model": "BiSeg"}, r"'outputs' lacks \['sem_seg_logits', 'prior'\]"),
        ({"format": "tensorrt"}, r"'format' is 'tensorrt'"),
        ({"input_format": "YUV"}, r"'input_format' is 'YUV'"),
        ({"pixel_mean": [1.0, 2.0]}, r"'pixel_mean' is \[1.0, 2.0\], not three numbers"),
        ({"size_divisibility": -1}, r"'size_divisibility' is -1"),
        ({"outputs": "inside_outside"}, r"'outputs' is not a list"),
        ({"whole": "yes"}, r"'whole' is 'yes', not true or false"),
        ({"whole": True}, r"'whole' is true for a FCIS in 'torchscript'"),
        ({"whole": True, "format": "aoti", "model": "InstanceFCN"}, r"'whole' is true for a InstanceFCN in 'aoti'"),
        ({"whole": True, "format": "exported_program"}, r"'outputs' is \[.*\]; a whole FCIS graph returns \['boxes'"),
    ],
)
def test_deploy_json_values_that_cannot_be_right(folder, changes, message):
    _edit(folder, **changes)
    with pytest.raises(ValueError, match=message) as e:
        load(str(folder))
    assert str(folder / "deploy.json") in str(e.value)


def test_pipeline_of_another_model_or_missing_a_setting(folder):
    meta = json.loads((folder / "deploy.json").read_text())
    pipeline = dict(meta["pipeline"], kind="MaskRCNN")
    _edit(folder, pipeline=pipeline)
    with pytest.raises(ValueError, match=r"'pipeline' holds the settings of a 'MaskRCNN', but 'model' says 'FCIS'"):
        load(str(folder))
    pipeline = dict(meta["pipeline"])
    del pipeline["rpn"]
    _edit(folder, pipeline=pipeline)
    with pytest.raises(ValueError, match=r"deploy.json: 'pipeline' misses the setting 'rpn'"):
        load(str(folder))
    reader = dict(meta["pipeline"]["reader"], group_size="seven")
    _edit(folder, pipeline=dict(meta["pipeline"], reader=reader))
    with pytest.raises(ValueError, match=r"'pipeline' has settings that do not fit"):
        load(str(folder))


@pytest.mark.parametrize("damage", ["truncate", "other_format"])
def test_graph_file_cut_short_or_of_another_format(folder, damage):
    graph = folder / "model.ts"
    if damage == "truncate":
        graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    else:
        _edit(folder, format="exported_program", graph="model.ts")
    with pytest.raises(ValueError, match=r"model.ts cannot be loaded as a '(torchscript|exported_program)' graph"):
        load(str(folder))


@pytest.mark.parametrize(
    "image, message",
    [
        (tiny_checkpoint_image().float() / 255, r"as a float image in \[0, 1\].*multiply by 255"),
        (tiny_checkpoint_image().float() - 128, r"expected raw pixels in 0..255"),
        (tiny_checkpoint_image().permute(1, 2, 0), r"H x W x 3 array as OpenCV reads it"),
        (torch.full((3, 64, 64), float("nan")), r"NaN or infinite"),
        (torch.zeros(3, 0, 64), r"the image is empty"),
        ("street.jpg", r"expected a raw image \(H, W, 3\) numpy array or a \(3, H, W\) torch.Tensor, got a str"),
        (tiny_checkpoint_image().numpy(), r"expected a raw image \(H, W, 3\).*got an array of shape \(3, 128, 160\)"),
        (tiny_checkpoint_image().numpy()[0], r"a grey image: convert it"),
        (tiny_checkpoint_image().permute(1, 2, 0).numpy().astype("float32"), r"of dtype uint8 \(0..255\), got float32"),
        (torch.zeros(1, 3, 64, 64), r"expected one image \(C=3, H, W\)"),
    ],
)
def test_images_the_graph_does_not_take_are_refused(folder, image, message):
    model = load(str(folder))
    with pytest.raises(ValueError, match=message):
        model(image)


def test_uint8_and_float_pixels_give_the_same_detections(folder):
    model = load(str(folder))
    image = tiny_checkpoint_image()
    assert image.dtype == torch.uint8
    a, b = model(image), model(image.float())
    assert len(a) == len(b) > 0 and torch.equal(a.boxes, b.boxes) and torch.equal(a.masks, b.masks)
