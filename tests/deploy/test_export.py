"""Exported models (instfcn_d2.export -> instfcn_d2.deploy): each format run in a fresh process
where detectron2 cannot be imported, its outputs equal to the eager model's on images of two
sizes; bad artefacts rejected with the file at fault; --run-eval's AP equal to --eval-only's."""
import json
import subprocess
import sys

import pytest
import torch
from detectron2.modeling import build_model

from conftest import REPO_ROOT, load_tool
from tiny_models import TINY_CHECKPOINTS, tiny_checkpoint_cfg, tiny_checkpoint_image

from instfcn_d2.checkpoint import StrictDetectionCheckpointer
from instfcn_d2.deploy import load
from instfcn_d2.export import export_model
from instfcn_d2.export.verify import masks_agree

FORMATS = ["torchscript", "exported_program", "aoti"]
MODELS = ["fcis", "biseg", "instance_fcn", "mask_rcnn", "mask_rcnn_c4"]

# detectron2's Mask R-CNN (the shapes config) at toy size, randomly initialised: detectron2's R18
# needs a 64-wide res2; every proposal scored (threshold 0) and no cap, so both test images detect
# something and their counts differ.
TINY_MASK_RCNN = [
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.FPN.OUT_CHANNELS", "32",  # GroupNorm's 32 groups
    "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "32",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
    "TEST.DETECTIONS_PER_IMAGE", "1000",
]

# Runs in a fresh interpreter: detectron2 and fvcore made unimportable, the artefact loaded and
# run on the saved inputs, its outputs saved.
_RUN_WITHOUT_DETECTRON2 = r"""
import importlib.abc, sys, torch
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("detectron2", "fvcore"):
            raise ImportError("detectron2 is not installed here")
sys.meta_path.insert(0, Block())
from instfcn_d2.deploy import load
model = load(sys.argv[1])
inputs = torch.load(sys.argv[2])
out = []
for image, size in inputs:
    d = model(image, size)
    out.append({"boxes": d.boxes, "scores": d.scores, "classes": d.classes, "masks": d.masks, "sem_seg": d.sem_seg})
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("detectron2", "fvcore"))
assert not loaded, loaded
torch.save(out, sys.argv[3])
"""


def _tiny_mask_rcnn(config="configs/shapes/mask_rcnn_R18_FPN_GN_cpu.yaml", *opts):
    from instfcn_d2.config import get_instfcn_cfg
    from tiny_models import TINY_TRUNK

    cfg = get_instfcn_cfg(str(REPO_ROOT / config), TINY_TRUNK + TINY_MASK_RCNN + list(opts))
    torch.manual_seed(0)
    return cfg, build_model(cfg).eval()


def _tiny_custom(name):
    """configs/custom/'s FCIS / BiSeg (FPN trunk, maps on p2; ``fcis_custom_levels``: FCIS's maps on
    p2 ... p5, each RoI read from its level) at toy size, randomly initialised."""
    from instfcn_d2.config import get_instfcn_cfg
    from tiny_models import TINY_CHECKPOINT_MODELS, TINY_TRUNK

    path = {"fcis": "configs/custom/fcis_R18_FPN_cpu.yaml", "biseg": "configs/custom/biseg_R18_FPN_cpu.yaml"}[name.split("_")[0]]
    heads = TINY_CHECKPOINT_MODELS[name.split("_")[0]][1]
    # 40 RoIs: with 30 both test images happen to keep 22 detections
    opts = TINY_TRUNK + heads + ["MODEL.FPN.OUT_CHANNELS", "16", "MODEL.FPN.NORM", "", "MODEL.RPN.POST_NMS_TOPK_TEST", "40",
                                 "MODEL.FCIS.DETECTIONS_PER_IMAGE", "1000"]
    if name.endswith("_levels"):
        opts += ["MODEL.ROI_HEADS.IN_FEATURES", '["p2", "p3", "p4", "p5"]']
    cfg = get_instfcn_cfg(str(REPO_ROOT / path), opts)
    torch.manual_seed(0)
    return cfg, build_model(cfg).eval()


def _tiny_model(name):
    if "_custom" in name:
        return _tiny_custom(name)
    if name == "mask_rcnn":
        return _tiny_mask_rcnn()
    if name == "mask_rcnn_c4":  # Res5ROIHeads: res5 in both per-RoI graphs
        return _tiny_mask_rcnn("configs/shapes/mask_rcnn_R50_C4_GN_cpu.yaml", "MODEL.RPN.POST_NMS_TOPK_TEST", "40")
    # no cap on the detections per image: the two test images then give different counts
    cap = "MODEL.INSTANCE_FCN.DETECTIONS_PER_IMAGE" if name == "instance_fcn" else "MODEL.FCIS.DETECTIONS_PER_IMAGE"
    cfg = tiny_checkpoint_cfg(name, "MODEL.WEIGHTS", str(TINY_CHECKPOINTS / f"{name}_model.pth"), cap, "300")
    model = build_model(cfg)
    StrictDetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return cfg, model.eval()


def _inputs():
    """Two images of different sizes (the second of another detection count), outputs at other sizes."""
    image = tiny_checkpoint_image().float()  # (3, 128, 160)
    second = image[:, 16:112, 8:128].flip(-1).contiguous()  # (3, 96, 120)
    return [(image, (256, 320)), (second, (96, 120))]


@pytest.mark.parametrize(
    "name, fmt, whole",
    # AOTInductor compiles for minutes: slow
    [pytest.param(n, f, False, marks=[pytest.mark.slow] if f == "aoti" else []) for n in MODELS for f in FORMATS]
    # configs/custom/: the pyramid's five RPN levels and maps on p2 (AOTInductor as for the others)
    + [(n, f, False) for n in ("fcis_custom", "biseg_custom") for f in ("torchscript", "exported_program")]
    # FCIS's maps on four pyramid levels: one inside/outside and box set per level in the graph
    + [("fcis_custom_levels", f, False) for f in ("torchscript", "exported_program")]
    # the whole model in one graph (its AOTInductor form: tests/tools/test_deploy_cpp.py)
    + [(n, "exported_program", True) for n in ("fcis", "biseg")],
)
def test_exported_model_without_detectron2_equals_eager(tmp_path, name, fmt, whole):
    cfg, model = _tiny_model(name)
    inputs = _inputs()
    export_model(model, fmt, inputs[0][0], str(tmp_path / "artefact"), input_format=cfg.INPUT.FORMAT, whole=whole)
    if whole:
        meta = json.loads((tmp_path / "artefact" / "deploy.json").read_text())
        assert meta["whole"] is True and meta["graph"] == "whole.pt2" and meta["outputs"][:4] == ["boxes", "scores", "classes", "masks"]
    torch.save(inputs, tmp_path / "inputs.pth")
    proc = subprocess.run(
        [sys.executable, "-c", _RUN_WITHOUT_DETECTRON2, str(tmp_path / "artefact"), str(tmp_path / "inputs.pth"),
         str(tmp_path / "outputs.pth")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs = torch.load(tmp_path / "outputs.pth")
    counts = []
    with torch.no_grad():
        for (image, (h, w)), got in zip(inputs, outputs):
            eager = model([{"image": image, "height": h, "width": w}])[0]
            ref = eager["instances"]
            counts.append(len(ref))
            assert len(got["scores"]) == len(ref) > 0
            assert got["masks"].dtype == torch.bool and got["masks"].shape == (len(ref), h, w)
            assert torch.equal(got["classes"], ref.pred_classes)
            if fmt == "torchscript":  # the same kernels as eager: bit-equal
                assert torch.equal(got["boxes"], ref.pred_boxes.tensor)
                assert torch.equal(got["scores"], ref.scores)
                assert torch.equal(got["masks"], ref.pred_masks)
            else:  # torch.export / AOTInductor may reorder float ops in the graph
                torch.testing.assert_close(got["boxes"], ref.pred_boxes.tensor, atol=1e-3, rtol=0)
                torch.testing.assert_close(got["scores"], ref.scores, atol=1e-5, rtol=0)
                assert masks_agree(got["masks"], ref.pred_masks.bool())  # IoU >= 0.999 overall, 0.99 each
            if name.startswith("biseg"):
                assert got["sem_seg"].shape == eager["sem_seg"].shape == (cfg.MODEL.ROI_HEADS.NUM_CLASSES + 1, h, w)
                torch.testing.assert_close(got["sem_seg"], eager["sem_seg"], atol=1e-5, rtol=0)
            else:
                assert got["sem_seg"] is None
    assert counts[0] != counts[1], counts  # nothing fixed to the sample image's detection count


@pytest.mark.parametrize(
    "name, fmt, why",
    [("instance_fcn", "exported_program", "exports as a graph only"), ("fcis", "onnx", "--whole exports to"),
     ("fcis_custom", "exported_program", "pads its input to multiples of 32")],
)
def test_whole_export_of_what_cannot_be_exported_whole_says_why(tmp_path, name, fmt, why):
    cfg, model = _tiny_model(name)
    with pytest.raises(ValueError, match=why):
        export_model(model, fmt, _inputs()[0][0], str(tmp_path), whole=True)
    assert not (tmp_path / "deploy.json").exists()


def test_exported_graph_is_not_specialised_to_the_sample_size(tmp_path):
    """An exported_program takes any height and width (dynamic dimensions), not only the sample's."""
    cfg, model = _tiny_model("fcis")
    export_model(model, "exported_program", tiny_checkpoint_image().float(), str(tmp_path))
    deployed = load(str(tmp_path))
    for h, w in ((64, 200), (161, 97)):
        outputs, padded = deployed.run_graph(torch.rand(3, h, w) * 255)
        assert padded == (h, w)
        box, inside_outside = outputs["box"], outputs["inside_outside"]
        assert box.shape[-2:] == inside_outside.shape[-2:] and box.shape[-2] == -(-h // 16)


def test_mask_rcnn_roi_graphs_take_any_number_of_rois_and_none_are_skipped(tmp_path):
    """The exported box / mask head graphs take any number of RoIs (dynamic first dimension) and
    equal the eager heads; with nothing detected the mask head is not called and the result is empty."""
    cfg, model = _tiny_mask_rcnn()
    image = tiny_checkpoint_image().float()
    export_model(model, "exported_program", image, str(tmp_path))
    meta = json.loads((tmp_path / "deploy.json").read_text())
    assert meta["graphs"] == {"dense": "model.pt2", "box_head": "box_head.pt2", "mask_head": "mask_head.pt2"}
    assert "graph" not in meta and meta["model"] == "MaskRCNN"
    deployed = load(str(tmp_path))
    heads = model.roi_heads
    with torch.no_grad():
        for n in (1, 7):
            pooled = torch.randn(n, 32, 7, 7)
            logits, deltas = deployed.graphs["box_head"](pooled)
            ref_logits, ref_deltas = heads.box_predictor(heads.box_head(pooled))
            torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)
            torch.testing.assert_close(deltas, ref_deltas, atol=1e-5, rtol=0)
            pooled = torch.randn(n, 32, 14, 14)
            (masks,) = deployed.graphs["mask_head"](pooled)
            assert masks.shape == (n, cfg.MODEL.ROI_HEADS.NUM_CLASSES, 28, 28)
            torch.testing.assert_close(masks, heads.mask_head.layers(pooled), atol=1e-5, rtol=0)

    # no score passes 1.0: no detections, eager and deployed
    heads.box_predictor.test_score_thresh = 1.0
    meta["pipeline"]["box_predictor"]["score_thresh"] = 1.0
    (tmp_path / "deploy.json").write_text(json.dumps(meta))
    deployed = load(str(tmp_path))
    deployed.pipeline.mask_head = None  # would fail if called
    with torch.no_grad():
        ref = model([{"image": image, "height": 64, "width": 80}])[0]["instances"]
    det = deployed(image, (64, 80))
    assert len(ref) == len(det) == 0
    assert det.boxes.shape == (0, 4) and det.masks.shape == (0, 64, 80) and det.masks.dtype == torch.bool


def test_export_refuses_mask_rcnn_variants_it_cannot_reproduce():
    from instfcn_d2.export import dense_graph_for

    cfg, model = _tiny_mask_rcnn("configs/shapes/mask_rcnn_R18_FPN_GN_cpu.yaml", "MODEL.MASK_ON", "False")
    with pytest.raises(ValueError, match="mask head only"):
        dense_graph_for(model)
    cfg, model = _tiny_mask_rcnn("configs/shapes/mask_rcnn_R18_FPN_GN_cpu.yaml", "MODEL.ROI_HEADS.NAME", "CascadeROIHeads",
                                  "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "True")
    with pytest.raises(ValueError, match="CascadeROIHeads is not exportable"):
        dense_graph_for(model)


def test_load_names_the_missing_or_broken_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="deploy.json"):
        load(str(tmp_path))
    cfg, model = _tiny_model("fcis")
    export_model(model, "torchscript", tiny_checkpoint_image().float(), str(tmp_path))
    meta = json.loads((tmp_path / "deploy.json").read_text())
    (tmp_path / "model.ts").unlink()
    with pytest.raises(FileNotFoundError, match="model.ts"):
        load(str(tmp_path))
    del meta["pipeline"]
    (tmp_path / "deploy.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="pipeline"):
        load(str(tmp_path))


def test_export_refuses_a_wrong_format_and_a_model_without_a_graph(tmp_path):
    cfg, model = _tiny_model("fcis")
    with pytest.raises(ValueError, match="--format 'tensorrt'"):
        export_model(model, "tensorrt", tiny_checkpoint_image().float(), str(tmp_path))
    with pytest.raises(ValueError, match="no graph for Linear"):
        from instfcn_d2.export import dense_graph_for

        dense_graph_for(torch.nn.Linear(2, 2))


def test_deployed_model_rejects_an_image_of_the_wrong_shape(tmp_path):
    cfg, model = _tiny_model("fcis")
    export_model(model, "torchscript", tiny_checkpoint_image().float(), str(tmp_path))
    with pytest.raises(ValueError, match=r"expected one image \(C=3, H, W\)"):
        load(str(tmp_path))(torch.zeros(1, 3, 64, 64))


@pytest.mark.slow
def test_export_tool_run_eval_reproduces_eval_only(tmp_path, learned_model, one_thread):
    """tools/export_model.py --run-eval evaluates the exported BiSeg with train_net's evaluators and
    reproduces the eager model's AP (and mean IU) on a synthetic split. The model is the session's
    short real training (tests/conftest.py): both APs are above zero, so equal numbers mean equal
    detections, not two evaluations that found nothing."""
    from conftest import LEARNED_CONFIG, LEARNED_OPTS

    from instfcn_d2.checkpoint import load_trained_weights
    from instfcn_d2.engine import Trainer

    tool = load_tool("export_model")
    run_dir, _ = learned_model
    config = str(REPO_ROOT / LEARNED_CONFIG)
    opts = LEARNED_OPTS + ["MODEL.WEIGHTS", str(run_dir / "model_final.pth")]
    cfg = tool.setup_cfg(tool.get_parser().parse_args(
        ["--config-file", config, "--output", str(tmp_path), *opts, "OUTPUT_DIR", str(tmp_path / "eager")]))
    model = build_model(cfg)
    load_trained_weights(model, cfg.MODEL.WEIGHTS)
    eager = Trainer.test(cfg, model.eval())
    assert tool.main(["--config-file", config, "--format", "exported_program", "--output", str(tmp_path / "export"),
                      *opts]) == 0
    (exported,) = tool.evaluate_exported(cfg, load(str(tmp_path / "export")), str(tmp_path / "export")).values()
    print({task: (eager[task]["AP"], exported[task]["AP"]) for task in ("segm", "bbox")})
    for task in ("segm", "bbox"):
        assert eager[task]["AP"] > 1.0 and exported[task]["AP"] > 1.0, task  # the learned model: mask AP 4.2
        assert abs(exported[task]["AP"] - eager[task]["AP"]) <= 0.1, task
    assert eager["sem_seg"]["mIoU"] > 0 and abs(exported["sem_seg"]["mIoU"] - eager["sem_seg"]["mIoU"]) <= 0.1


def tiny_cfg_opts(name):
    from tiny_models import TINY_CHECKPOINT_MODELS, TINY_TRUNK

    return TINY_TRUNK + TINY_CHECKPOINT_MODELS[name][1] + ["MODEL.WEIGHTS", str(TINY_CHECKPOINTS / f"{name}_model.pth")]


@pytest.mark.parametrize("name", ["fcis", "biseg"])
def test_compare_with_eager_reports_each_measure_in_its_field(tmp_path, name):
    """The export tool's check: a TorchScript artefact (bit-equal) reports zero differences and
    full mask agreement; the semantic difference only where there is a semantic output."""
    from instfcn_d2.export.verify import compare_with_eager

    cfg, model = _tiny_model(name)
    image = tiny_checkpoint_image().float()
    export_model(model, "torchscript", image, str(tmp_path))
    report = compare_with_eager(model, load(str(tmp_path)), image, (200, 250))
    assert report.equal and report.num_eager == report.num_exported > 0
    assert report.max_box_diff == report.max_score_diff == 0.0
    assert report.total_mask_iou == report.min_mask_iou == 1.0
    assert (report.max_sem_seg_diff == 0.0) if name == "biseg" else report.max_sem_seg_diff is None


# ---- the check's "differs" path: masks_agree, compare_with_eager and the tool's exit status ----------
def _rectangles(boxes, size=(40, 50)):
    masks = torch.zeros(len(boxes), *size, dtype=torch.bool)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes):
        mask[y0:y1, x0:x1] = True
    return masks


def test_masks_agree_only_up_to_a_few_flipped_pixels():
    a = _rectangles([(5, 5, 35, 25), (20, 10, 45, 38), (0, 0, 10, 8)])
    assert masks_agree(a, a.clone())
    flipped = a.clone()
    flipped[0, 5, 5] = False  # one border pixel of 600: IoU 0.998 (each >= 0.99, all >= 0.999)
    assert masks_agree(a, flipped)
    assert not masks_agree(a, _rectangles([(5, 5, 35, 25), (23, 10, 48, 38), (0, 0, 10, 8)]))  # one shifted 3 px
    emptied = a.clone()
    emptied[2] = False
    assert not masks_agree(a, emptied)  # one instance lost: IoU 0
    assert not masks_agree(a, a.flip(0))  # the same masks, other instances
    assert not masks_agree(a, a[:2])  # another count
    assert not masks_agree(a, a[:, :39])  # another size
    noisy = a.clone()
    noisy[1, 10:38:4, 20:45:5] = False  # 49 of 700 pixels of one instance: that instance's IoU 0.93
    assert not masks_agree(a, noisy)


def _noisy(graph, scale):
    """``graph`` with seeded Gaussian noise of ``scale`` added to its float outputs."""
    def run(image):
        generator = torch.Generator().manual_seed(0)
        return tuple(o + scale * torch.randn(o.shape, generator=generator) if o.is_floating_point() else o
                     for o in graph(image))
    return run


def test_compare_with_eager_reports_a_perturbed_graph_or_weight_as_not_equal(tmp_path):
    from instfcn_d2.export.verify import SCORE_ATOL, compare_with_eager

    cfg, model = _tiny_model("fcis")
    image = tiny_checkpoint_image().float()
    export_model(model, "torchscript", image, str(tmp_path))
    deployed = load(str(tmp_path))
    report = compare_with_eager(model, deployed, image, (128, 160))
    assert report.equal and report.num_eager > 0  # the unperturbed artefact: equal
    deployed.graph = _noisy(deployed.graph, 0.01)  # noise on the graph's outputs
    report = compare_with_eager(model, deployed, image, (128, 160))
    assert not report.equal and str(report).endswith("NOT EQUAL"), report
    assert report.num_eager != report.num_exported or report.max_score_diff > SCORE_ATOL, report

    deployed = load(str(tmp_path))  # the artefact again, and a weight of the original changed after export
    with torch.no_grad():
        model.roi_heads.conv_new.weight.mul_(1.05)  # conv_new_1, which both score map sets read
    report = compare_with_eager(model, deployed, image, (128, 160))
    assert not report.equal, report


_RUN_TOOL_WITH_A_NOISY_GRAPH = r"""
import runpy, sys, torch
import instfcn_d2.deploy as deploy
mode = sys.argv[1]
real_load = deploy.load
def load(directory):
    deployed = real_load(directory)
    graph = deployed.graph
    def noisy(image):
        g = torch.Generator().manual_seed(0)
        return tuple(o + 0.01 * torch.randn(o.shape, generator=g) if o.is_floating_point() else o for o in graph(image))
    if mode == "noisy":
        deployed.graph = noisy
    return deployed
deploy.load = load  # before the tool's `from instfcn_d2.deploy import load`
sys.argv = ["tools/export_model.py"] + sys.argv[2:]
runpy.run_path("tools/export_model.py", run_name="__main__")
"""


@pytest.mark.parametrize("graph", ["exact", "noisy"])
def test_export_tool_exits_non_zero_when_the_exported_model_differs(tmp_path, graph):
    """tools/export_model.py compares the exported model with the original and stops with an error
    (exit status 1) when they differ: here its graph perturbed as loaded back (the control: 0)."""
    import cv2

    sample = tmp_path / "sample.png"
    cv2.imwrite(str(sample), tiny_checkpoint_image().permute(1, 2, 0).numpy())  # BGR, as the config reads it
    argv = ["--config-file", str(REPO_ROOT / "configs/shapes/fcis_R18_cpu.yaml"), "--format", "torchscript",
            "--output", str(tmp_path / "export"), "--sample-image", str(sample),
            *tiny_cfg_opts("fcis"), "DATASETS.TEST", "()"]
    proc = subprocess.run([sys.executable, "-c", _RUN_TOOL_WITH_A_NOISY_GRAPH, graph, *argv], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert "[export_model] check on a (128, 160) image" in out, out[-3000:]
    if graph == "exact":
        assert proc.returncode == 0 and ": equal" in out, out[-3000:]
    else:
        assert proc.returncode == 1, out[-3000:]
        assert "export_model.py: the exported model differs from the original" in out and "NOT EQUAL" in out

