"""The ``onnx`` format: the dense graph (Mask R-CNN: also its box and mask head graphs) exported by
``torch.onnx.export`` and run by ONNX Runtime, the post-processing in Python after it; its
detections equal to the eager model's on two image sizes, with and without detectron2.

onnx, onnxscript and onnxruntime are optional dependencies: the tests that run them skip where
onnxruntime is not installed; the missing-package messages are checked everywhere."""
import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT
from test_export import _RUN_WITHOUT_DETECTRON2, _inputs, _tiny_model

from instfcn_d2.deploy import load
from instfcn_d2.export import export_model
from instfcn_d2.export.verify import compare_with_eager, masks_agree



def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules
        return False


HAVE_ONNX = all(_installed(m) for m in ("onnxruntime", "onnx", "onnxscript"))
needs_onnx = pytest.mark.skipif(not HAVE_ONNX, reason="onnx format: pip install onnxruntime onnx onnxscript")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``name -> (cfg, model, folder)``: each tiny model exported to onnx once per module."""
    cache = {}

    def get(name):
        if name not in cache:
            cfg, model = _tiny_model(name)
            folder = tmp_path_factory.mktemp(f"onnx_{name}")
            export_model(model, "onnx", _inputs()[0][0], str(folder), input_format=cfg.INPUT.FORMAT)
            cache[name] = cfg, model, folder
        return cache[name]

    return get


@needs_onnx
@pytest.mark.parametrize(
    "name",
    # Mask R-CNN: three graphs to export, its ~150 detections to compare
    ["fcis", "biseg", "instance_fcn", pytest.param("mask_rcnn", marks=pytest.mark.slow)],
)
def test_onnx_artefact_equals_eager(exported, name):
    cfg, model, folder = exported(name)
    meta = json.loads((folder / "deploy.json").read_text())
    assert meta["format"] == "onnx" and meta["onnx_opset"] >= 18
    files = {"dense": "model.onnx"}
    if name == "mask_rcnn":
        files.update(box_head="box_head.onnx", mask_head="mask_head.onnx")
    assert meta.get("graphs", {"dense": meta.get("graph")}) == files
    deployed = load(str(folder))
    assert deployed.graph.session.get_providers() == ["CPUExecutionProvider"]
    assert [o.name for o in deployed.graph.session.get_outputs()] == meta["outputs"]
    counts = []
    for image, size in _inputs():
        report = compare_with_eager(model, deployed, image, size)
        print(f"{name} {tuple(image.shape[1:])}: {report}")
        counts.append(report.num_eager)
        assert report.num_eager > 0
        if name == "biseg":
            assert report.max_sem_seg_diff is not None
        assert report.equal, report
    assert counts[0] != counts[1], counts  # nothing fixed to the sample image's detection count


@needs_onnx
@pytest.mark.slow
def test_onnx_mask_rcnn_roi_graphs_take_any_number_of_rois(exported):
    """The box / mask head graphs' first dimension is dynamic and they equal the eager heads."""
    cfg, model, folder = exported("mask_rcnn")
    deployed = load(str(folder))
    heads = model.roi_heads
    with torch.no_grad():
        for n in (1, 7, 300):
            pooled = torch.randn(n, 32, 7, 7)
            logits, deltas = deployed.graphs["box_head"](pooled)
            ref_logits, ref_deltas = heads.box_predictor(heads.box_head(pooled))
            torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)
            torch.testing.assert_close(deltas, ref_deltas, atol=1e-5, rtol=0)
            pooled = torch.randn(n, 32, 14, 14)
            (masks,) = deployed.graphs["mask_head"](pooled)
            assert masks.shape == (n, cfg.MODEL.ROI_HEADS.NUM_CLASSES, 28, 28)
            torch.testing.assert_close(masks, heads.mask_head.layers(pooled), atol=1e-5, rtol=0)


@needs_onnx
def test_onnx_artefact_runs_without_detectron2(exported, tmp_path):
    """A fresh interpreter in which detectron2 cannot be imported runs the onnx artefact; its
    detections are the eager model's."""
    cfg, model, folder = exported("fcis")
    inputs = _inputs()
    torch.save(inputs, tmp_path / "inputs.pth")
    proc = subprocess.run(
        [sys.executable, "-c", _RUN_WITHOUT_DETECTRON2, str(folder), str(tmp_path / "inputs.pth"), str(tmp_path / "out.pth")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with torch.no_grad():
        for (image, (h, w)), got in zip(inputs, torch.load(tmp_path / "out.pth")):
            ref = model([{"image": image, "height": h, "width": w}])[0]["instances"]
            assert len(got["scores"]) == len(ref) > 0
            assert torch.equal(got["classes"], ref.pred_classes)
            torch.testing.assert_close(got["boxes"], ref.pred_boxes.tensor, atol=1e-2, rtol=0)
            torch.testing.assert_close(got["scores"], ref.scores, atol=1e-4, rtol=0)
            assert masks_agree(got["masks"], ref.pred_masks.bool())


@needs_onnx
def test_onnx_graph_takes_other_image_sizes(exported):
    """Height and width are dynamic: sizes other than the sample's, not multiples of 16."""
    cfg, model, folder = exported("fcis")
    deployed = load(str(folder))
    for h, w in ((64, 200), (161, 97)):
        outputs, padded = deployed.run_graph(torch.rand(3, h, w) * 255)
        assert padded == (h, w)
        assert outputs["box"].shape[-2:] == outputs["inside_outside"].shape[-2:] == (-(-h // 16), -(-w // 16))
        assert all(t.dtype == torch.float32 for t in outputs.values())


def test_onnx_without_its_packages_says_what_to_install(exported, monkeypatch, tmp_path):
    """export_model(..., "onnx") and loading an onnx folder without onnxruntime / onnx fail with
    the pip command; nothing is written."""
    cfg, model = _tiny_model("instance_fcn")
    if HAVE_ONNX:
        folder = exported("instance_fcn")[2]
    else:  # an onnx folder as export_model writes it, from a torchscript one
        folder = tmp_path / "artefact"
        export_model(model, "torchscript", _inputs()[0][0], str(folder))
        meta = json.loads((folder / "deploy.json").read_text())
        (folder / "model.ts").rename(folder / "model.onnx")
        (folder / "deploy.json").write_text(json.dumps({**meta, "format": "onnx", "graph": "model.onnx"}))
    for blocked in ("onnxruntime", "onnx"):
        monkeypatch.setitem(sys.modules, blocked, None)  # import raises ImportError
    with pytest.raises(ImportError, match=r"needs onnxruntime and onnx.*pip install onnxruntime onnx onnxscript"):
        export_model(model, "onnx", _inputs()[0][0], str(tmp_path / "not_written"))
    assert not (tmp_path / "not_written").exists()
    with pytest.raises(ImportError, match=r"model\.onnx.*needs onnxruntime.*pip install onnxruntime onnx onnxscript"):
        load(str(folder))
