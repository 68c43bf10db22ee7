"""FCIS's test-time pipeline, every class at once, against the former one-class-at-a-time loop.

The reference below is the loop the pipeline replaced (a pass of NMS-kept detections per class:
voting pairs, one read of that class's masks, voting, frames, tight boxes); it is the oracle of the
tensor pipeline, which must give the same detections on data with many classes, overlapping boxes
of different classes and every voting setting.
"""
import dataclasses

import pytest
import torch
from torchvision.ops import batched_nms

from instfcn_d2.core.fcis.inference import FCISTestParams, fcis_inference_single_image
from instfcn_d2.core.fcis.layout import inside_outside_mask_probs
from instfcn_d2.core.fcis.mask_voting import (
    mask_voting,
    resample_masks_into_boxes,
    tight_mask_boxes,
    voter_union_boxes,
    voting_pairs,
)

C, M = 6, 11


def _class_masks(c, kept, boxes, scores, read, p):
    """The former per-class voting: ``read(indices, c)`` -> ``(V, 2, M, M)``."""
    if not p.mask_voting:
        return inside_outside_mask_probs(read(kept, c)), boxes[kept]
    kept_boxes = boxes[kept]
    kept_idx, cand_idx = voting_pairs(kept_boxes, boxes, p.mask_voting_iou)
    voters, voter_idx = cand_idx.unique(return_inverse=True)
    pairs = (kept_idx, voter_idx)
    probs = inside_outside_mask_probs(read(voters, c))
    vb, vs = boxes[voters], scores[voters, c]
    thr = p.mask_binarize_thresh if p.mask_voting_binarize_voters else None
    if p.mask_voting_frame == "kept_box":
        return mask_voting(kept_boxes, vb, probs, vs, p.mask_voting_iou, None, thr, pairs), kept_boxes
    frames = voter_union_boxes(kept_boxes, vb, p.mask_voting_iou, pairs)
    voted = mask_voting(kept_boxes, vb, probs, vs, p.mask_voting_iou, frames, thr, pairs)
    tight = tight_mask_boxes(voted, frames, p.mask_binarize_thresh)
    return resample_masks_into_boxes(voted, frames, tight), tight


def _reference(boxes, scores, io, p):
    """Boxes, scores, classes, (K, M, M) masks of the former loop (all candidates valid)."""
    fg = scores[:, :C]
    cand, classes = (fg > p.score_thresh).nonzero(as_tuple=True)
    det = fg[cand, classes]
    keep = batched_nms(boxes[cand], det, classes, p.nms_thresh)[: p.detections_per_image]
    cand, classes, det = cand[keep], classes[keep], det[keep]
    out_boxes, masks = boxes[cand].clone(), torch.zeros(len(cand), M, M)
    for c in classes.unique().tolist():
        members = (classes == c).nonzero().squeeze(1)
        m, b = _class_masks(c, cand[members], boxes, scores, lambda i, k: io[i, :, k], p)
        masks[members], out_boxes[members] = m, b
    return out_boxes, det, classes, masks


def _candidates(seed, P, size):
    g = torch.Generator().manual_seed(seed)
    # clusters of overlapping boxes, so that kept boxes of several classes share voters
    centres = torch.rand(P // 6 + 1, 2, generator=g) * size * 0.8
    xy = centres[torch.arange(P) % len(centres)] + torch.randn(P, 2, generator=g) * 4
    wh = 20 + torch.rand(P, 2, generator=g) * size * 0.3
    boxes = torch.cat([xy, xy + wh], dim=1).clamp(0, size)
    scores = torch.softmax(torch.randn(P, C + 1, generator=g) * 2.5, dim=1)
    io = torch.randn(P, 2, C + 1, M, M, generator=g) * 2
    return boxes, scores, io


@pytest.mark.parametrize(
    "setting",
    [
        dict(),
        dict(mask_voting_frame="kept_box"),
        dict(mask_voting_binarize_voters=False),
        dict(mask_voting=False),
        dict(mask_voting_iou=0.3, nms_thresh=0.5),
    ],
)
@pytest.mark.parametrize("seed,P,size", [(0, 60, 128), (1, 300, 256)])
def test_every_class_at_once_equals_the_one_class_loop(setting, seed, P, size):
    params = dataclasses.replace(FCISTestParams(num_classes=C, score_thresh=0.05, detections_per_image=50), **setting)
    boxes, scores, io = _candidates(seed, P, size)
    det = fcis_inference_single_image(boxes, scores, lambda i, k: io[i, :, k], (size, size), params)
    ref_boxes, ref_scores, ref_classes, ref_masks = _reference(boxes, scores, io, params)
    assert len(det.classes.unique()) >= 4 and len(det.scores) > 10  # several classes, many detections
    assert torch.equal(det.classes, ref_classes)
    assert torch.equal(det.scores, ref_scores)
    torch.testing.assert_close(det.boxes, ref_boxes, rtol=0, atol=1e-5)
    torch.testing.assert_close(det.masks[:, 0], ref_masks, rtol=1e-5, atol=1e-6)


def test_no_detection_gives_empty_outputs_with_the_mask_size():
    params = FCISTestParams(num_classes=C, score_thresh=0.99)
    boxes, scores, io = _candidates(0, 20, 128)
    det = fcis_inference_single_image(boxes, scores, lambda i, k: io[i, :, k], (128, 128), params)
    assert det.boxes.shape == (0, 4) and det.masks.shape == (0, 1, M, M)
