#!/usr/bin/env python
"""Draw what InstanceFCN, FCIS and BiSeg compute inside, as the papers' figures do, from a trained
checkpoint on one image (PNG files):

- InstanceFCN (its Fig. 1-3): the ``k x k`` instance-sensitive score maps, and the ``m x m``
  windows assembled from them at the top-scoring positions (each window's cell ``(i, j)`` copied
  from map ``(i, j)``), drawn over the image and as masks;
- FCIS (its Fig. 1-2): for the top detection, the ``k x k`` inside and outside score maps of its
  class cropped to its RoI, the ``M x M`` inside / outside logits they assemble to, and the mask
  and class score these give;
- BiSeg (its Fig. 2-3): for the top detection, the RoI crop of the semantic prior ``P(c | X)``, the
  fused inside likelihoods, and the posterior (their Bayesian combination) with the resulting mask.

Every panel is the model's own tensor (``tests/tools/test_visualize_score_maps.py`` checks that
the assembled panels equal the ops' outputs).

  python tools/visualize_score_maps.py --config-file configs/shapes/biseg_fused_7_9_R18_cpu.yaml \\
      --input image.png --output vis/ MODEL.WEIGHTS output/model_final.pth

``MODEL.WEIGHTS`` is required (the score maps of a random model show nothing;
``--allow-random-weights`` draws them anyway) and loaded strictly: a checkpoint that does not fit
the model built from the config is an error naming the file and the parameters.
"""
import argparse
import os
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model

from instfcn_d2.checkpoint import MissingWeightsError, load_trained_weights, require_trained_weights
from instfcn_d2.config import get_instfcn_cfg
from instfcn_d2.layers import ps_roi_assemble
from instfcn_d2.core.biseg import combine_prior
from instfcn_d2.core.fcis.layout import inside_outside_mask_probs
from instfcn_d2.core.instance_fcn import window_boxes, window_top_left


@dataclass
class Prepared:
    """The image as the model sees it at test time."""

    rgb: np.ndarray  # (H, W, 3) uint8, resized
    inputs: Dict  # detectron2 input dict of the resized image


def prepare(cfg, path: str) -> Prepared:
    """Read ``path`` and resize it as ``DefaultPredictor`` does (``INPUT.MIN_SIZE_TEST``)."""
    image = read_image(path, format=cfg.INPUT.FORMAT)
    aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    resized = aug.get_transform(image).apply_image(image)
    rgb = resized[:, :, ::-1] if cfg.INPUT.FORMAT == "BGR" else resized
    tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
    return Prepared(rgb=np.ascontiguousarray(rgb), inputs={"image": tensor, "height": resized.shape[0], "width": resized.shape[1]})


# ---- the panels: the model's own tensors -------------------------------------------------------------
@torch.no_grad()
def instance_fcn_panels(model, prepared: Prepared, num_windows: int = 6) -> Dict[str, torch.Tensor]:
    """``maps`` ``(k*k, H, W)`` instance-sensitive score maps (logits), and the ``num_windows``
    top-objectness windows: ``positions`` ``(P, 3)`` (batch, y, x of the top-left corner),
    ``windows`` ``(P, m, m)`` assembled logits, ``boxes`` ``(P, 4)`` in image pixels, ``scores``."""
    images = model.preprocess_image([prepared.inputs["image"]])
    mask_maps, objectness = model.compute_maps(images)
    centres = model.proposer.window_centres(images.image_sizes[0], objectness.shape[-2:], device=objectness.device)
    scores = objectness[0, centres[:, 0], centres[:, 1]].sigmoid()
    scores, order = scores.topk(min(num_windows, len(scores)))
    centres = centres[order]
    tl = window_top_left(centres, model.window_size)
    positions = torch.cat([torch.zeros_like(tl[:, :1]), tl], dim=1)
    return {
        "maps": mask_maps[0],
        "positions": positions,
        "windows": model.mask_head.assemble(mask_maps, positions),
        "boxes": window_boxes(centres, model.window_size, model.stride),
        "scores": scores,
    }


@torch.no_grad()
def fcis_panels(model, prepared: Prepared, detection: int = 0) -> Optional[Dict[str, torch.Tensor]]:
    """For detection ``detection`` (by score) of FCIS or BiSeg: its ``box`` (input pixels),
    ``class_index``, ``score``; ``cell_maps`` ``(2, k*k, h, w)``: the inside and outside maps of its
    class over the RoI's extent on the score maps; ``assembled`` ``(2, M, M)`` inside / outside
    logits of FCIS's map set (``ps_roi_assemble``); ``mask`` ``(M, M)`` the mask they give. For
    BiSeg also ``prior`` ``(M, M)``, ``likelihood`` ``(2, M, M)`` (fused) and ``posterior``
    ``(2, M, M)``, whose softmax is the mask. ``None`` without a detection."""
    images = model.preprocess_image([prepared.inputs])
    features = model.backbone(images.tensor)
    proposals, _ = model.proposal_generator(images, features, None)
    maps = model.score_maps(images, features)
    (result,), _ = model.roi_heads(images, features, proposals, None, maps=maps)
    if len(result) <= detection:
        return None
    reader = model.roi_heads.reader  # the per-RoI reading inference uses (instfcn_d2.core)
    box = result.pred_boxes.tensor[detection]
    c = int(result.pred_classes[detection])
    rois = torch.cat([box.new_zeros(1), box])[None]
    k, kk = reader.group_size, reader.group_size ** 2
    if reader.levels is not None:  # maps on several levels: the level this detection is read from
        level = int(reader.levels.assign(box[None])[0])
        maps, reader = maps.levels[level], reader.replace(levels=None, spatial_scale=reader.levels.spatial_scales[level])
    class_maps = reader.maps_by_class(maps.inside_outside, k)[c : c + 1]  # (1, 2*k*k, H, W): image 0, class c
    cells = class_maps[0].view(2, kk, *maps.inside_outside.shape[-2:])
    s = reader.spatial_scale
    x0, y0 = int(np.floor(float(box[0]) * s)), int(np.floor(float(box[1]) * s))
    x1, y1 = int(np.ceil(float(box[2]) * s)), int(np.ceil(float(box[3]) * s))
    out = {
        "box": box,
        "class_index": torch.tensor(c),
        "score": result.scores[detection],
        "cell_maps": cells[:, :, max(y0, 0) : max(y1, y0 + 1), max(x0, 0) : max(x1, x0 + 1)],
        "assembled": ps_roi_assemble(
            class_maps, rois, reader.mask_size if not getattr(reader, "fuse", False)
            else reader.mask_size // 2, k, s, reader.sampling_ratio, reader.aligned
        )[0],
    }
    io = reader.roi_inside_outside_of_class(maps, rois, c)[0]  # (2, M, M): what inference reads
    out["mask"] = inside_outside_mask_probs(io[None])[0]
    if hasattr(reader, "roi_prior"):  # BiSeg
        likelihood = reader.fused_likelihoods(maps, rois)[0, :, c]  # (2, M, M)
        out["likelihood"] = likelihood
        if reader.prior_mode != "none":
            prior = reader.roi_prior(maps, rois, c)[0, 0]
            inside, outside = combine_prior(likelihood[None, :1], likelihood[None, 1:], prior[None, None], reader.prior_mode)
            out["prior"] = prior
            out["posterior"] = torch.cat([inside, outside], dim=1)[0]
    return out


# ---- pictures -----------------------------------------------------------------------------------------
def _figure(rows: int, cols: int, scale: float = 2.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(cols * scale, rows * scale), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes


def draw_instance_fcn(panels: Dict[str, torch.Tensor], rgb: np.ndarray, k: int, path: str) -> str:
    import matplotlib.patches as patches

    windows = panels["windows"].sigmoid().numpy()
    fig, axes = _figure(k + 1, max(k, len(windows) + 1))
    for i in range(k):
        for j in range(k):
            axes[i, j].imshow(panels["maps"][i * k + j].numpy(), cmap="coolwarm")
            axes[i, j].set_title(f"map ({i},{j})", fontsize=7)
    axes[k, 0].imshow(rgb)
    for n, (box, score) in enumerate(zip(panels["boxes"].tolist(), panels["scores"].tolist())):
        x0, y0, x1, y1 = box
        axes[k, 0].add_patch(patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color=f"C{n}", lw=1))
        axes[k, n + 1].imshow(windows[n], cmap="gray", vmin=0, vmax=1)
        axes[k, n + 1].set_title(f"window {n}: {score:.2f}", fontsize=7, color=f"C{n}")
    axes[k, 0].set_title("top windows", fontsize=7)
    fig.suptitle(f"InstanceFCN: {k}x{k} instance-sensitive score maps (top) and windows assembled from them", fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def draw_fcis(panels: Dict[str, torch.Tensor], rgb: np.ndarray, k: int, class_name: str, path: str) -> str:
    import matplotlib.patches as patches

    biseg = "posterior" in panels
    cols = max(k, 4)
    fig, axes = _figure(2 * k + 1 + int(biseg), cols)
    for part, name in enumerate(("inside", "outside")):
        for i in range(k):
            for j in range(k):
                ax = axes[part * k + i, j]
                ax.imshow(panels["cell_maps"][part, i * k + j].numpy(), cmap="coolwarm")
                ax.set_title(f"{name} ({i},{j})", fontsize=6)
    row = 2 * k
    x0, y0, x1, y1 = panels["box"].tolist()
    axes[row, 0].imshow(rgb)
    axes[row, 0].add_patch(patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="yellow", lw=1))
    axes[row, 0].set_title(f"{class_name}: {float(panels['score']):.2f}", fontsize=7)
    axes[row, 1].imshow(panels["assembled"][0].numpy(), cmap="coolwarm")
    axes[row, 1].set_title("assembled inside", fontsize=7)
    axes[row, 2].imshow(panels["assembled"][1].numpy(), cmap="coolwarm")
    axes[row, 2].set_title("assembled outside", fontsize=7)
    axes[row, 3].imshow(panels["mask"].numpy(), cmap="gray", vmin=0, vmax=1)
    axes[row, 3].set_title("mask = softmax(in, out)", fontsize=7)
    title = "FCIS: inside / outside score maps of the class over the RoI, assembled, and the mask"
    if biseg:
        r = row + 1
        axes[r, 0].imshow(panels["prior"].numpy(), cmap="viridis", vmin=0, vmax=1)
        axes[r, 0].set_title("prior P(c|X) (RoI crop)", fontsize=7)
        axes[r, 1].imshow(panels["likelihood"][0].numpy(), cmap="coolwarm")
        axes[r, 1].set_title("likelihood (fused, inside)", fontsize=7)
        axes[r, 2].imshow(panels["posterior"][0].numpy(), cmap="coolwarm")
        axes[r, 2].set_title("posterior (inside)", fontsize=7)
        axes[r, 3].imshow(inside_outside_mask_probs(panels["posterior"][None])[0].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[r, 3].set_title("mask", fontsize=7)
        title = "BiSeg: FCIS's k1 maps, and prior x likelihood = posterior for the RoI"
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def visualize(cfg, image_paths: List[str], output_dir: str, detection: int = 0, num_windows: int = 6) -> List[str]:
    """Build the model of ``cfg`` (with its ``MODEL.WEIGHTS``), draw each image; returns the PNGs."""
    from detectron2.data import MetadataCatalog

    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        load_trained_weights(model, cfg.MODEL.WEIGHTS)
    model.eval()
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch not in ("InstanceFCN", "FCIS", "BiSeg"):
        raise ValueError(f"visualize_score_maps: MODEL.META_ARCHITECTURE {arch!r} has no score maps to draw "
                         "(InstanceFCN, FCIS or BiSeg)")
    classes = MetadataCatalog.get(cfg.DATASETS.TEST[0]).get("thing_classes", None) if cfg.DATASETS.TEST else None
    os.makedirs(output_dir, exist_ok=True)
    written = []
    for n, path in enumerate(image_paths):
        prepared = prepare(cfg, path)
        stem = os.path.splitext(os.path.basename(path))[0]
        out = os.path.join(output_dir, f"{stem}_score_maps.png")
        if arch == "InstanceFCN":
            panels = instance_fcn_panels(model, prepared, num_windows)
            written.append(draw_instance_fcn(panels, prepared.rgb, model.mask_head.group_size, out))
        else:
            panels = fcis_panels(model, prepared, detection)
            if panels is None:
                print(f"[score_maps] {n + 1}/{len(image_paths)} {path}: no detection #{detection}; nothing drawn", flush=True)
                continue
            c = int(panels["class_index"])
            name = classes[c] if classes and c < len(classes) else f"class {c}"
            written.append(draw_fcis(panels, prepared.rgb, model.roi_heads.reader.group_size, name, out))
        print(f"[score_maps] {n + 1}/{len(image_paths)} {out}", flush=True)
    return written


def main(argv=None) -> List[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", nargs="+", required=True, help="image files")
    parser.add_argument("--output", required=True, help="folder for the PNGs")
    parser.add_argument("--detection", type=int, default=0, help="FCIS / BiSeg: which detection (by score, default 0)")
    parser.add_argument("--windows", type=int, default=6, help="InstanceFCN: top windows drawn (default 6)")
    parser.add_argument("--allow-random-weights", action="store_true",
                        help="draw even when MODEL.WEIGHTS is empty (a randomly initialised model: meaningless maps)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides as KEY VALUE pairs (MODEL.WEIGHTS ...)")
    args = parser.parse_args(argv)
    import instfcn_d2  # noqa: F401  (registers datasets and models)

    cfg = get_instfcn_cfg(args.config_file, args.opts)
    try:
        require_trained_weights(cfg, args.allow_random_weights, tool="visualize_score_maps.py")
    except MissingWeightsError as e:
        parser.error(str(e))
    for path in args.input:
        if not os.path.isfile(path):
            parser.error(f"--input {path}: no such file")
    cfg.freeze()
    return visualize(cfg, args.input, args.output, args.detection, args.windows)


if __name__ == "__main__":
    main()
