"""An exported InstanceFCN (graph + the model's own test time, :mod:`instfcn_d2.deploy.instance_fcn`)
against the eager model: the same proposals, over the multi-scale test of the shapes config, for
images of different sizes and outputs at another resolution than the input. The test-time code
must import without detectron2."""
import json

import pytest
import torch
from detectron2.modeling import build_model

from conftest import REPO_ROOT
from tiny_models import TINY_TRUNK, square_disc_sample

from instfcn_d2.config import get_instfcn_cfg
from instfcn_d2.deploy import load
from instfcn_d2.deploy.instance_fcn import InstanceFCNRun
from instfcn_d2.export.settings import instance_fcn_pipeline
from instfcn_d2.export import export_model
from instfcn_d2.core.instance_fcn.inference import resize_shortest_edge_shape

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = str(REPO_ROOT / "configs" / "shapes" / "instance_fcn_R18_cpu.yaml")
# The tiny trunk, 16-wide branches and the config's multi-scale test at three scales up to
# TINY_TRUNK's INPUT.MIN_SIZE_TEST 128 (the largest scale is the network input, as in the config).
TINY_HEADS = [
    "MODEL.INSTANCE_FCN.MASK_BRANCH_DIM", "16",
    "MODEL.INSTANCE_FCN.OBJECTNESS_DIM", "16",
    "MODEL.INSTANCE_FCN.PRE_NMS_TOPK_TEST", "200",
    "MODEL.INSTANCE_FCN.DETECTIONS_PER_IMAGE", "25",
    "TEST.AUG.MIN_SIZES", "(64, 96, 128)",
    "TEST.AUG.MAX_SIZE", "192",
]  # fmt: skip
OUTPUT_SIZES = [(200, 250), (150, 200)]  # the original images; the network inputs are 128 x 160 and 128 x 171


def _cfg(*opts):
    return get_instfcn_cfg(CONFIG, TINY_TRUNK + TINY_HEADS + list(opts))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = _cfg()
    # the shapes config runs the paper's multi-scale test: the deployed model must too
    assert cfg.TEST.AUG.ENABLED and cfg.MODEL.META_ARCHITECTURE == "InstanceFCN"
    model = build_model(cfg).eval()
    assert model.proposer.test_params.test_min_sizes == (64, 96, 128) and model.proposer.test_params.score_thresh == 0.0
    return model


def _inputs():
    """``(image uint8 (3, h, w) at the network input, (height, width) of the output)`` per image."""
    out = []
    for seed, (height, width) in enumerate(OUTPUT_SIZES):
        size = resize_shortest_edge_shape(height, width, 128, 192)
        out.append((square_disc_sample(seed, size, sides=(40, 34))["image"], (height, width)))
    return out


@pytest.mark.parametrize("fmt", ["torchscript", "exported_program"])
def test_deployed_proposals_equal_the_eager_model(model, fmt, tmp_path):
    inputs = _inputs()
    assert inputs[0][0].shape[-2:] != inputs[1][0].shape[-2:]
    export_model(model, fmt, inputs[0][0].to(torch.float32), str(tmp_path))
    deployed = load(str(tmp_path))
    assert deployed.kind == "InstanceFCN" and isinstance(deployed.pipeline, InstanceFCNRun)
    assert deployed.pipeline.proposer == model.proposer

    graph_inputs = []
    graph = deployed.graph
    deployed.graph = lambda image: graph_inputs.append(tuple(image.shape[-2:])) or graph(image)
    for image, (height, width) in inputs:
        with torch.no_grad():
            expected = model([{"image": image, "height": height, "width": width}])[0]["instances"]
        graph_inputs.clear()
        got = deployed(image, output_size=(height, width))
        # one graph run per test scale, at the size the eager model resizes to
        assert graph_inputs == [resize_shortest_edge_shape(height, width, s, 192) for s in (64, 96, 128)]
        assert graph_inputs[-1] == tuple(image.shape[-2:])

        assert len(expected) > 0 and len(got) == len(expected)
        assert got.image_size == expected.image_size == (height, width)
        assert got.masks.dtype == torch.bool and torch.equal(got.masks, expected.pred_masks)
        assert torch.allclose(got.scores, expected.scores, rtol=0, atol=1e-5)
        assert torch.allclose(got.boxes, expected.pred_boxes.tensor, rtol=0, atol=1e-5)
        assert got.classes.dtype == torch.int64 and torch.equal(got.classes, expected.pred_classes)


def test_settings_are_json_and_name_the_model(model):
    settings = instance_fcn_pipeline(model)
    assert json.loads(json.dumps(settings)) == settings
    assert settings["kind"] == "InstanceFCN"
    assert (settings["window_size"], settings["group_size"], settings["stride"]) == (11, 5, 8)
    assert settings["test_params"]["test_min_sizes"] == [64, 96, 128]
    run = InstanceFCNRun(settings)
    assert run.proposer == model.proposer and run.group_size == 5


def test_deepmask_head_is_refused():
    opts = ["MODEL.INSTANCE_FCN.MASK_HEAD", "DeepMask", "MODEL.INSTANCE_FCN.DEEPMASK.POOLER_RESOLUTION", "4",
            "MODEL.INSTANCE_FCN.DEEPMASK.FC_DIM", "8", "MODEL.INSTANCE_FCN.DEEPMASK.MASK_SIZE", "8"]  # fmt: skip
    deepmask = build_model(_cfg(*opts))
    with pytest.raises(ValueError, match="DeepMaskHead mask head is not exportable"):
        instance_fcn_pipeline(deepmask)
