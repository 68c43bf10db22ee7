"""DeepMask-style window labelling of InstanceFCN on hand-made masks (instfcn_d2.modeling.instance_fcn.window_labels).

Most cases use a window of side L = 224 px (m = 28 at stride 8), where the default tolerances are
DeepMask's numbers in pixels: positives within +-16 px of the centre with the larger side at
128 px * 2^(+-1/4); negatives at >= 32 px or a factor >= 2 off.
"""
import math

import numpy as np
import pytest
import torch
from detectron2.structures import BitMasks, PolygonMasks

from instfcn_d2.core.boxes import mask_tight_boxes
from instfcn_d2.modeling.instance_fcn.window_labels import (
    WindowLabelParams,
    label_windows,
    sample_windows,
    window_boxes,
    window_grid,
    window_mask_targets,
    window_top_left,
)

L = 224.0
WINDOW = torch.tensor([[0.0, 0.0, L, L]])  # centre (112, 112)


def _box(cx, cy, w, h=None):
    h = w if h is None else h
    return torch.tensor([[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]])


def _label(gt, params=WindowLabelParams()):
    labels, matched = label_windows(gt, WINDOW, params)
    return int(labels[0]), int(matched[0])


def _disc(size, cy, cx, r):
    yy, xx = np.mgrid[:size, :size]
    return torch.from_numpy(((yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2) <= r * r)


def test_window_geometry_centred_on_feature_positions():
    centres = torch.tensor([[3, 4], [0, 0]])
    assert window_top_left(centres, 21).tolist() == [[-7, -6], [-10, -10]]
    boxes = window_boxes(centres, 21, 8)
    assert boxes.tolist() == [[-48.0, -56.0, 120.0, 112.0], [-80.0, -80.0, 88.0, 88.0]]
    # the window's centre is the feature pixel's centre ((x + .5) * s, (y + .5) * s)
    assert ((boxes[:, 0] + boxes[:, 2]) / 2).tolist() == [36.0, 4.0]
    assert ((boxes[:, 1] + boxes[:, 3]) / 2).tolist() == [28.0, 4.0]
    assert window_grid(2, 3).tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]


def test_centred_object_of_fitting_size_is_positive():
    assert _label(_box(112, 112, 128)) == (1, 0)
    assert _label(_box(112 + 10, 112 - 12, 128 * 2 ** 0.2, 60)) == (1, 0)  # larger side sets the scale


@pytest.mark.parametrize(
    "box, expected",
    [
        (_box(112 + 20, 112, 128), -1),  # shifted 20 px: between the tolerances -> ignored
        (_box(112, 112 - 24, 128), -1),
        (_box(112 + 40, 112, 128), 0),  # shifted >= 32 px -> negative
        (_box(112, 112, 128 * 1.3), -1),  # a bit too large -> ignored
        (_box(112, 112, 128 / 1.3), -1),  # a bit too small -> ignored
        (_box(112, 112, 300), 0),  # far too large (and cut) -> negative
        (_box(112, 112, 50), 0),  # far too small -> negative
    ],
)
def test_shifted_or_badly_scaled_objects_are_not_positive(box, expected):
    assert _label(box) == (expected, -1)


def test_cut_object_is_not_positive():
    # loose centre tolerances so that only containment decides
    loose = WindowLabelParams(positive_center_tol=0.3, negative_center_tol=0.5)
    assert _label(_box(112 + 40, 112, 128), loose) == (1, 0)  # x in [88, 216]: inside
    assert _label(_box(112 + 60, 112, 128), loose) == (-1, -1)  # x in [108, 236]: cut at 224


def test_positive_window_matches_nearest_object_and_other_objects_do_not_veto():
    gt = torch.cat([_box(112 + 20, 112, 128), _box(112 + 4, 112, 128 * 1.05), _box(112, 112, 128 * 1.15)])
    assert _label(gt) == (1, 1)  # object 1 is nearest to the canonical position
    # negative for one object but in between for another -> ignored
    assert _label(torch.cat([_box(112 + 40, 112, 128), _box(112, 112, 128 * 1.3)])) == (-1, -1)


def test_no_objects_means_every_window_is_negative():
    labels, matched = label_windows(torch.zeros((0, 4)), window_boxes(window_grid(4, 5), 21, 8))
    assert labels.tolist() == [0] * 20 and matched.tolist() == [-1] * 20


def test_labels_of_a_full_grid_on_a_disc_mask():
    # 256 x 256 image, stride 8, m = 28 (224 px windows, even m: window centres at (8x, 8y));
    # a disc of diameter 128 centred at (132, 132)
    mask = _disc(256, 132, 132, 64)[None]
    gt_boxes = mask_tight_boxes(mask)
    assert gt_boxes.tolist() == [[68.0, 68.0, 196.0, 196.0]]
    centres = window_grid(32, 32)
    labels, matched = label_windows(gt_boxes, window_boxes(centres, 28, 8))
    grid = labels.view(32, 32)
    # window centres 8x within 16 px of 132: x in 15..18 (120 .. 144)
    expected_pos = torch.zeros(32, 32, dtype=torch.bool)
    expected_pos[15:19, 15:19] = True
    assert torch.equal(grid == 1, expected_pos)
    assert (matched[labels == 1] == 0).all() and (matched[labels != 1] == -1).all()
    # centres >= 32 px away in some axis (x <= 12 or x >= 21) are negative; the band between ignored
    near = torch.zeros(32, 32, dtype=torch.bool)
    near[13:21, 13:21] = True
    assert (grid[~near] == 0).all()
    assert (grid[near & ~expected_pos] == -1).all()


def test_sampling_is_one_to_one_and_fills_with_negatives():
    torch.manual_seed(0)
    labels = torch.tensor([1] * 300 + [0] * 1000 + [-1] * 50)[torch.randperm(1350)]
    pos, neg = sample_windows(labels, 256, 0.5)
    assert len(pos) == 128 and len(neg) == 128
    assert (labels[pos] == 1).all() and (labels[neg] == 0).all()
    assert len(set(pos.tolist()) | set(neg.tolist())) == 256

    few = torch.tensor([1] * 10 + [0] * 1000 + [-1] * 5)
    pos, neg = sample_windows(few, 256, 0.5)
    assert len(pos) == 10 and len(neg) == 246  # fewer positives -> more negatives
    assert (few[pos] == 1).all() and (few[neg] == 0).all()

    pos, neg = sample_windows(torch.tensor([0] * 40 + [-1] * 9), 256, 0.5)
    assert len(pos) == 0 and len(neg) == 40  # small image: every usable window


def test_mask_targets_are_zero_padded_block_means():
    # 32 x 32 image, object in the top-left 16 x 16 quadrant; window [-8, 24) hangs off by 8 px
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[1, 0:16, 0:16] = True
    boxes = torch.tensor([[-8.0, -8.0, 24.0, 24.0], [8.0, 8.0, 40.0, 40.0]])
    targets = window_mask_targets(BitMasks(masks), torch.tensor([1, 1]), boxes, 4)
    expected0 = torch.zeros(4, 4)
    expected0[1:3, 1:3] = 1  # image pixels 0..15 are window pixels 8..23 = blocks 1..2
    expected1 = torch.zeros(4, 4)
    expected1[0, 0] = 1  # pixels 8..15 -> block 0; the rest is object-free or outside
    assert torch.equal(targets, torch.stack([expected0, expected1]))

    # a block that is half object rounds up (>= 0.5); a third does not
    half = torch.zeros(1, 32, 32, dtype=torch.bool)
    half[0, 0:4, 0:8] = True  # top half of block (0, 0) at 8 px blocks
    third = torch.zeros(1, 32, 32, dtype=torch.bool)
    third[0, 0:2, 0:8] = True
    box = torch.tensor([[0.0, 0.0, 32.0, 32.0]])
    assert window_mask_targets(half, torch.tensor([0]), box, 4)[0, 0, 0] == 1
    assert window_mask_targets(third, torch.tensor([0]), box, 4)[0, 0, 0] == 0

    # polygons (rasterised in the window) give the same target for the same square
    poly = PolygonMasks([[np.array([0, 0, 16, 0, 16, 16, 0, 16], dtype=np.float64)]] * 2)
    assert torch.equal(window_mask_targets(poly, torch.tensor([1, 1]), boxes, 4), targets)


def test_params_are_validated():
    with pytest.raises(ValueError, match="negative_center_tol"):
        WindowLabelParams(positive_center_tol=0.2, negative_center_tol=0.1)
    with pytest.raises(ValueError, match="positive_scale_tol"):
        WindowLabelParams(positive_scale_tol=0.9)
    assert math.isclose(WindowLabelParams().object_size_fraction * 224, 128)
