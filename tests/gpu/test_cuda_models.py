"""The four models on CUDA against the same models on the CPU: one training step, and inference
through detectron2's ``DefaultPredictor``.

Skipped (with the reason) without a CUDA GPU, or when ``instfcn_d2._C`` was built without its CUDA
kernels. ``dev/gpu_check.sh`` runs them on a GPU machine.

Models: FCIS, BiSeg (fused 7/9), InstanceFCN and detectron2's Mask R-CNN R18-FPN GN, each as its
``configs/shapes`` config (the real heads: k = 7, M = 21, 4 classes) with ``MODEL.DEVICE`` set.

**Training step.** A model built on the CPU (seed 0) and the same model on CUDA with the CPU
model's weights take one forward + backward on the same batch (two synthetic 192 x 192 images
with a square and a disc each, semantic labels for BiSeg). TF32 and cuDNN are off for this
comparison, so that both devices compute plain float32 (cuDNN may pick Winograd or FFT
convolutions, whose float32 error is ~1e-5 per layer, and that error is cuDNN's, not this
project's). The two runs are made to take the same discrete decisions, so that the comparison is
about arithmetic, not about how ties break:

- detectron2's random subsampling (``subsample_labels``: ``torch.randperm``) draws from one seeded
  CPU generator on both devices;
- the CPU run's RPN proposals are handed to the CUDA run's ROI heads: the top-k and NMS of an
  untrained RPN, whose scores lie close together, may break near-ties differently on the two
  devices. The CUDA RPN's own proposals are checked separately: at least
  ``PROPOSAL_AGREEMENT`` of the CPU proposals must have a CUDA proposal at box IoU >= 0.95.

Tolerances: every loss within ``LOSS_RTOL`` (relative) + ``LOSS_ATOL``; all gradients together
(one vector) within a relative L2 error of ``GRAD_RTOL``; each parameter outside the backbone
(the heads, where the assembling ops' backward enters) within ``HEAD_GRAD_RTOL`` (relative L2,
``|g_cuda - g_cpu| / max(|g_cpu|, GRAD_FLOOR * the median gradient norm)``). The backbone's
parameters are reported, not judged one by one: in an untrained from-scratch trunk the gradients
of its GroupNorm parameters nearly cancel, and a 1e-6 relative change of the weights moved some of
them by 1.5% on the CPU (FCIS), while the losses moved by < 2e-7, all gradients together by 4e-3
and every head parameter by < 4e-3. A wrong CUDA kernel or a device mix-up shows as an O(1) error.

**DefaultPredictor.** FCIS, BiSeg and InstanceFCN load the tiny checkpoints of
``tests/modeling/checkpoints`` (trained-looking weights: they detect something on their test image);
Mask R-CNN (no checkpoint) gets seeded random weights with noise added, and score threshold 0.
Outputs must be well formed (fields, sizes at the original resolution, boxes inside the image,
scores in [0, 1], at most the configured detections, BiSeg's ``sem_seg``) and close to the CPU's:
the detection counts within ``COUNT_SLACK``, and of the CPU's top ``TOP_N`` detections at least
``MATCH_SHARE`` have a CUDA detection of the same class with box IoU >= 0.9, score within
``SCORE_ATOL`` and mask IoU >= 0.9 (a near-tie at an NMS or top-k boundary may swap one).
"""
import copy
import math

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT
from tiny_models import TINY_CHECKPOINTS, square_disc_sample, tiny_checkpoint_cfg, tiny_checkpoint_image


def _skip_reason():
    if not torch.cuda.is_available():
        return "needs a CUDA GPU (torch.cuda.is_available() is False)"
    from instfcn_d2.layers import has_cuda

    if not has_cuda():
        return "instfcn_d2._C has no CUDA kernels: rebuild it with FORCE_CUDA=1 on this machine"
    return None


SKIP_REASON = _skip_reason()
pytestmark = pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")

MODELS = {
    "fcis": "configs/shapes/fcis_R18_cpu.yaml",
    "biseg": "configs/shapes/biseg_fused_7_9_R18_cpu.yaml",
    "instance_fcn": "configs/shapes/instance_fcn_R18_cpu.yaml",
    "mask_rcnn": "configs/shapes/mask_rcnn_R18_FPN_GN_cpu.yaml",
}

LOSS_RTOL, LOSS_ATOL = 1e-3, 1e-5
GRAD_RTOL, HEAD_GRAD_RTOL, GRAD_FLOOR = 1e-2, 5e-2, 1e-3
PROPOSAL_AGREEMENT = 0.9
COUNT_SLACK, TOP_N, MATCH_SHARE, SCORE_ATOL = 0.1, 10, 0.9, 2e-2


@pytest.fixture(autouse=True)
def no_tf32():
    """TF32 off for the comparisons (torch's default lets cuDNN convolutions use it)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture
def no_cudnn():
    """Plain float32 convolutions (see the module docstring)."""
    saved = torch.backends.cudnn.enabled
    torch.backends.cudnn.enabled = False
    yield
    torch.backends.cudnn.enabled = saved


class SameDraws:
    """``torch.randperm`` drawing from one seeded CPU generator, moved to the device asked for."""

    def __init__(self, original):
        self.original = original
        self.generator = torch.Generator()

    def reseed(self, seed: int = 0) -> None:
        self.generator.manual_seed(seed)

    def __call__(self, n, *args, device=None, generator=None, **kwargs):
        return self.original(n, *args, generator=self.generator, **kwargs).to(device or "cpu")


@pytest.fixture
def same_draws(monkeypatch):
    draws = SameDraws(torch.randperm)
    monkeypatch.setattr(torch, "randperm", draws)
    return draws


def _cfg(name, device, *opts):
    from instfcn_d2.config import get_instfcn_cfg

    return get_instfcn_cfg(str(REPO_ROOT / MODELS[name]), ["MODEL.DEVICE", device, "MODEL.WEIGHTS", ""] + list(opts))


def _batch():
    """Two 192 x 192 images, a square (class 0) and a disc (class 1) each, with semantic labels."""
    batch = []
    for seed in (1, 2):
        d = square_disc_sample(seed, size=(192, 192), sides=(64, 56))
        sem = torch.zeros(192, 192, dtype=torch.int64)
        masks = d["instances"].gt_masks.tensor
        for mask, cls in zip(masks, d["instances"].gt_classes.tolist()):
            sem[mask] = cls + 1  # the shapes' labels: 0 background, c + 1 class c
        d["sem_seg"] = sem
        batch.append(d)
    return batch


def _train_step(model, batch, draws, proposals_in=None):
    """One forward + backward in train mode: ``(losses, gradients, RPN proposals)``;
    ``proposals_in`` replaces the RPN's proposals handed to the ROI heads."""
    from detectron2.utils.events import EventStorage

    seen = {}
    handle = None
    if getattr(model, "proposal_generator", None) is not None:

        def hook(_module, _inputs, output):
            proposals, losses = output
            seen["proposals"] = [p.to("cpu") for p in proposals]
            if proposals_in is not None:
                return [p.to(proposals[0].proposal_boxes.device) for p in proposals_in], losses
            return None

        handle = model.proposal_generator.register_forward_hook(hook)
    draws.reseed(0)
    model.train()
    model.zero_grad(set_to_none=True)
    try:
        with EventStorage(0):
            losses = model(copy.deepcopy(batch))
            sum(losses.values()).backward()
    finally:
        if handle is not None:
            handle.remove()
    losses = {k: float(v.detach()) for k, v in losses.items()}
    grads = {n: p.grad.detach().to("cpu", torch.float64) for n, p in model.named_parameters() if p.grad is not None}
    return losses, grads, seen.get("proposals")


def _box_iou(a, b):
    from detectron2.structures import Boxes, pairwise_iou

    return pairwise_iou(Boxes(a.float()), Boxes(b.float()))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_one_training_step_matches_the_cpu(name, same_draws, no_cudnn):
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    cpu_model = build_model(_cfg(name, "cpu"))
    cuda_model = build_model(_cfg(name, "cuda"))
    cuda_model.load_state_dict(cpu_model.state_dict())
    batch = _batch()

    cpu_losses, cpu_grads, cpu_props = _train_step(cpu_model, batch, same_draws)
    cuda_losses, cuda_grads, cuda_props = _train_step(cuda_model, batch, same_draws, proposals_in=cpu_props)

    report = [f"{name}: losses CPU / CUDA"]
    report += [f"  {k}: {cpu_losses[k]:.6f} / {cuda_losses.get(k, float('nan')):.6f}" for k in sorted(cpu_losses)]
    print("\n".join(report))
    assert sorted(cuda_losses) == sorted(cpu_losses)
    for k, v in cpu_losses.items():
        assert math.isfinite(v), f"{name}: CPU {k} = {v}"
        assert abs(cuda_losses[k] - v) <= LOSS_ATOL + LOSS_RTOL * abs(v), f"{name} {k}: CPU {v} vs CUDA {cuda_losses[k]}"

    assert sorted(cuda_grads) == sorted(cpu_grads), f"{name}: not the same parameters have gradients"
    names = sorted(cpu_grads)
    everything = torch.cat([cpu_grads[n].flatten() for n in names])
    overall = float((torch.cat([cuda_grads[n].flatten() for n in names]) - everything).norm() / everything.norm())
    floor = GRAD_FLOOR * float(torch.tensor([cpu_grads[n].norm() for n in names]).median())
    errors = {n: float((cuda_grads[n] - g).norm()) / max(float(g.norm()), floor) for n, g in cpu_grads.items()}
    heads = sorted(((e, n) for n, e in errors.items() if not n.startswith("backbone.")), reverse=True)
    trunk = sorted(((e, n) for n, e in errors.items() if n.startswith("backbone.")), reverse=True)
    print(f"{name}: {len(errors)} gradients; all together {overall:.2e} (relative L2); largest, heads: "
          + ", ".join(f"{n} {e:.2e}" for e, n in heads[:2]) + "; backbone: "
          + ", ".join(f"{n} {e:.2e}" for e, n in trunk[:2]))  # fmt: skip
    assert overall <= GRAD_RTOL, f"{name}: the gradients differ by {overall:.3e} (relative L2, all parameters)"
    assert heads[0][0] <= HEAD_GRAD_RTOL, f"{name}: gradient of {heads[0][1]} differs by {heads[0][0]:.3e} (relative L2)"

    if cpu_props is not None:
        for i, (a, b) in enumerate(zip(cpu_props, cuda_props)):
            iou = _box_iou(a.proposal_boxes.tensor, b.proposal_boxes.tensor)
            share = float((iou.max(dim=1).values >= 0.95).float().mean()) if len(a) and len(b) else float(len(a) == len(b))
            print(f"{name}: image {i}: {len(a)} CPU / {len(b)} CUDA RPN proposals, {100 * share:.1f}% of the CPU's matched")
            assert share >= PROPOSAL_AGREEMENT, f"{name} image {i}: only {100 * share:.1f}% of the CPU's proposals on CUDA"


# ---- DefaultPredictor --------------------------------------------------------------------------
def _predictor_cfg(name, device):
    if name == "mask_rcnn":
        return _cfg(name, device, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")
    return tiny_checkpoint_cfg(name, "MODEL.DEVICE", device, "MODEL.WEIGHTS", str(TINY_CHECKPOINTS / f"{name}_model.pth"))


def _mask_rcnn_weights(cfg):
    """Seeded random weights with noise (an untrained box head scores every class alike)."""
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.state_dict()


def _predict(name, device, image, weights):
    from detectron2.engine import DefaultPredictor

    cfg = _predictor_cfg(name, device)
    predictor = DefaultPredictor(cfg)
    if weights is not None:
        predictor.model.load_state_dict(weights)
    out = predictor(image)
    return cfg, {k: (v.to("cpu") if hasattr(v, "to") else v) for k, v in out.items()}


def _check_well_formed(name, cfg, out, height, width):
    inst = out["instances"]
    assert inst.image_size == (height, width)
    for field in ("pred_boxes", "scores", "pred_classes", "pred_masks"):
        assert inst.has(field), f"{name}: no {field}"
    n = len(inst)
    limit = {"fcis": cfg.MODEL.FCIS.DETECTIONS_PER_IMAGE, "biseg": cfg.MODEL.FCIS.DETECTIONS_PER_IMAGE,
             "instance_fcn": cfg.MODEL.INSTANCE_FCN.DETECTIONS_PER_IMAGE}.get(name, cfg.TEST.DETECTIONS_PER_IMAGE)  # fmt: skip
    assert 0 < n <= limit, f"{name}: {n} detections (at most {limit})"
    assert inst.pred_masks.shape == (n, height, width) and inst.pred_masks.dtype == torch.bool
    boxes = inst.pred_boxes.tensor
    assert torch.isfinite(boxes).all()
    assert (boxes[:, 0] >= -1e-3).all() and (boxes[:, 1] >= -1e-3).all()
    assert (boxes[:, 2] <= width + 1e-3).all() and (boxes[:, 3] <= height + 1e-3).all()
    assert ((inst.scores >= 0) & (inst.scores <= 1)).all()
    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    assert ((inst.pred_classes >= 0) & (inst.pred_classes < max(num_classes, 1))).all()
    if name == "biseg":
        sem = out["sem_seg"]
        assert sem.shape == (num_classes + 1, height, width) and torch.isfinite(sem).all()


def _mask_iou(a, b):
    inter = (a & b).sum().item()
    union = (a | b).sum().item()
    return inter / union if union else 1.0


@pytest.mark.parametrize("name", sorted(MODELS))
def test_default_predictor_on_cuda_is_well_formed_and_close_to_the_cpu(name):
    if name == "mask_rcnn":
        sample = square_disc_sample(3, size=(176, 208), sides=(60, 52))
        image = np.ascontiguousarray(sample["image"].permute(1, 2, 0).numpy())
        weights = _mask_rcnn_weights(_predictor_cfg(name, "cpu"))
    else:
        image = np.ascontiguousarray(tiny_checkpoint_image().permute(1, 2, 0).numpy())
        weights = None
    height, width = image.shape[:2]

    cfg, cpu = _predict(name, "cpu", image, weights)
    _, cuda = _predict(name, "cuda", image, weights)
    _check_well_formed(name, cfg, cpu, height, width)
    _check_well_formed(name, cfg, cuda, height, width)

    a, b = cpu["instances"], cuda["instances"]
    print(f"{name}: {len(a)} CPU / {len(b)} CUDA detections; top scores CPU {a.scores[:3].tolist()}, "
          f"CUDA {b.scores[:3].tolist()}")  # fmt: skip
    assert abs(len(a) - len(b)) <= max(1, COUNT_SLACK * len(a)), f"{name}: {len(a)} CPU vs {len(b)} CUDA detections"
    order = torch.argsort(a.scores, descending=True)[:TOP_N]
    iou = _box_iou(a.pred_boxes.tensor[order], b.pred_boxes.tensor)
    matched = 0
    for row, i in enumerate(order.tolist()):
        ok = (iou[row] >= 0.9) & (b.pred_classes == a.pred_classes[i]) & ((b.scores - a.scores[i]).abs() <= SCORE_ATOL)
        candidates = ok.nonzero().flatten().tolist()
        if any(_mask_iou(a.pred_masks[i], b.pred_masks[j]) >= 0.9 for j in candidates):
            matched += 1
    share = matched / len(order)
    print(f"{name}: {matched} of the CPU's top {len(order)} detections matched on CUDA")
    assert share >= MATCH_SHARE, f"{name}: only {matched} of the CPU's top {len(order)} detections matched on CUDA"
    if name == "biseg":
        torch.testing.assert_close(cuda["sem_seg"], cpu["sem_seg"], rtol=1e-3, atol=1e-3)
