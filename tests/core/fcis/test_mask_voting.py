"""Mask voting (mask_voting.py) against hand-computed values and detectron2's mask pasting."""
import pytest
import torch
from detectron2.layers.mask_ops import _do_paste_mask
from detectron2.structures import BitMasks

from instfcn_d2.core.fcis.mask_voting import mask_voting, resample_masks_into_boxes, tight_mask_boxes, voter_union_boxes
from instfcn_d2.core.boxes import mask_tight_boxes


def test_mask_voting_hand_computed():
    """M = 2, one kept box [0, 0, 4, 4] and three candidates:

    - p0: the kept box itself, mask [[1, 0], [1, 0]], score 0.6;
    - p1: box [0, 0, 4, 2] (IoU 8/16 = 0.5, votes: the threshold is inclusive), mask
      [[0.2, 0.4], [0.6, 0.8]], score 0.4. Resampled into the kept frame: kept row 0 (y = 1) is
      the seam between p1's two rows -> their mean [0.4, 0.6]; kept row 1 (y = 3) lies 1.5 rows
      below p1's last row centre -> 0 (outside p1's box);
    - p2: box [2, 0, 6, 4] (IoU 8/24 < 0.5, does not vote), mask ones, score 0.9.

    voted = (0.6 * p0 + 0.4 * p1') / (0.6 + 0.4) = [[0.76, 0.24], [0.6, 0]].
    """
    kept = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 4.0, 2.0], [2.0, 0.0, 6.0, 4.0]])
    masks = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.2, 0.4], [0.6, 0.8]], [[1.0, 1.0], [1.0, 1.0]]])
    scores = torch.tensor([0.6, 0.4, 0.9])
    voted = mask_voting(kept, boxes, masks, scores, iou_threshold=0.5)
    torch.testing.assert_close(voted, torch.tensor([[[0.76, 0.24], [0.6, 0.0]]]))
    # binarised at FCIS's 0.4: the 0.24 pixel and the empty one drop
    assert (voted >= 0.4).tolist() == [[[True, False], [True, False]]]
    # a stricter threshold leaves p0 alone
    torch.testing.assert_close(mask_voting(kept, boxes, masks, scores, iou_threshold=0.6), masks[:1])


def test_binarised_voters_give_the_weighted_fraction_that_covers_each_pixel():
    """The hand-computed case above with each voter binarised at 0.4 first (official
    ``mask_aggregation``): p0' = [[1, 0], [1, 0]], p1' = ([0.4, 0.6] >= 0.4, 0) = [[1, 1], [0, 0]].
    voted = (0.6 * p0' + 0.4 * p1') / 1.0 = [[1.0, 0.4], [0.6, 0.0]]."""
    kept = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 4.0, 2.0], [2.0, 0.0, 6.0, 4.0]])
    masks = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.2, 0.4], [0.6, 0.8]], [[1.0, 1.0], [1.0, 1.0]]])
    scores = torch.tensor([0.6, 0.4, 0.9])
    voted = mask_voting(kept, boxes, masks, scores, iou_threshold=0.5, voter_threshold=0.4)
    torch.testing.assert_close(voted, torch.tensor([[[1.0, 0.4], [0.6, 0.0]]]))
    # the 0.4 pixel (only p1 covers it, with 40% of the weight) now passes FCIS's threshold
    assert (voted >= 0.4).tolist() == [[[True, True], [True, False]]]


def test_each_kept_box_gets_its_own_voters():
    """Two far-apart kept boxes: each averages only the candidates around it."""
    kept = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    masks = torch.stack([torch.full((3, 3), 1.0), torch.full((3, 3), 0.0), torch.full((3, 3), 0.5)])
    scores = torch.tensor([0.3, 0.1, 0.8])
    voted = mask_voting(kept, boxes, masks, scores)
    torch.testing.assert_close(voted[0], torch.full((3, 3), 0.75))  # (0.3 * 1 + 0.1 * 0) / 0.4
    torch.testing.assert_close(voted[1], torch.full((3, 3), 0.5))


def test_resampling_a_box_into_itself_is_the_identity():
    torch.manual_seed(0)
    masks = torch.rand(5, 7, 7)
    boxes = torch.tensor([[3.0, 4.0, 40.0, 20.0]]).repeat(5, 1) + torch.arange(5.0)[:, None] * 7
    torch.testing.assert_close(resample_masks_into_boxes(masks, boxes, boxes), masks)


def test_resampling_into_the_image_box_equals_detectron2_pasting():
    """Resampled into a box covering the whole image with M = image size, a mask is exactly what
    detectron2's ``paste_masks_in_image`` computes (before thresholding)."""
    torch.manual_seed(1)
    S = 24
    masks = torch.rand(3, S, S)
    boxes = torch.tensor([[2.0, 3.0, 15.5, 20.0], [-4.0, 6.0, 10.0, 30.0], [8.3, 0.7, 23.9, 11.2]])
    image_box = torch.tensor([[0.0, 0.0, S, S]]).expand(3, 4)
    ours = resample_masks_into_boxes(masks, boxes, image_box)
    pasted, _ = _do_paste_mask(masks[:, None], boxes, S, S, skip_empty=False)
    torch.testing.assert_close(ours, pasted, atol=1e-5, rtol=1e-5)


def test_empty_inputs_and_kept_box_without_voters():
    masks = torch.rand(2, 4, 4)
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0], [1.0, 1.0, 9.0, 9.0]])
    scores = torch.tensor([0.5, 0.7])
    assert mask_voting(torch.zeros(0, 4), boxes, masks, scores).shape == (0, 4, 4)
    assert mask_voting(boxes, torch.zeros(0, 4), torch.zeros(0, 4, 4), torch.zeros(0)).abs().sum() == 0
    # a kept box far from every candidate: no voter, zeros (not NaN)
    voted = mask_voting(torch.tensor([[100.0, 100.0, 110.0, 110.0]]), boxes, masks, scores)
    assert torch.equal(voted, torch.zeros(1, 4, 4))


def test_many_pairs_are_chunked_without_changing_the_result(monkeypatch):
    import instfcn_d2.core.fcis.mask_voting as mv

    torch.manual_seed(2)
    boxes = torch.tensor([[10.0, 10.0, 50.0, 50.0]]) + torch.randn(40, 4)
    masks, scores = torch.rand(40, 5, 5), torch.rand(40)
    full = mask_voting(boxes[:6], boxes, masks, scores)
    monkeypatch.setattr(mv, "_PAIRS_PER_CHUNK", 7)
    torch.testing.assert_close(mask_voting(boxes[:6], boxes, masks, scores), full)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"kept_boxes must be \(K, 4\)"):
        mask_voting(torch.zeros(3), torch.zeros(1, 4), torch.zeros(1, 2, 2), torch.zeros(1))
    with pytest.raises(ValueError, match=r"cand_scores \(P,\)"):
        mask_voting(torch.zeros(1, 4), torch.zeros(2, 4), torch.zeros(2, 2, 2), torch.zeros(3))


def test_union_of_the_voters_boxes():
    kept = torch.tensor([[10.0, 10.0, 50.0, 50.0], [100.0, 100.0, 120.0, 120.0]])
    cands = torch.tensor([[10.0, 10.0, 50.0, 50.0], [12.0, 8.0, 56.0, 48.0], [0.0, 0.0, 200.0, 200.0], [101.0, 99.0, 121.0, 118.0]])
    union = voter_union_boxes(kept, cands, 0.5)
    # kept 0: voters 0 and 1 (candidate 2 has IoU 0.04); kept 1: candidate 3
    assert torch.equal(union, torch.tensor([[10.0, 8.0, 56.0, 50.0], [100.0, 99.0, 121.0, 120.0]]))
    assert torch.equal(voter_union_boxes(kept, cands[:0]), kept)


def test_voting_in_the_union_frame_keeps_what_lies_outside_the_kept_box():
    # the kept box covers the left half of an object, a voter the whole object: voting in the
    # kept box's frame cuts the object at the kept box, in the union frame it does not
    M = 8
    kept = torch.tensor([[0.0, 0.0, 40.0, 80.0]])
    cands = torch.tensor([[0.0, 0.0, 40.0, 80.0], [0.0, 0.0, 80.0, 80.0]])
    masks = torch.ones(2, M, M)
    scores = torch.tensor([0.5, 0.5])
    frames = voter_union_boxes(kept, cands, 0.5)
    assert torch.equal(frames, torch.tensor([[0.0, 0.0, 80.0, 80.0]]))
    voted = mask_voting(kept, cands, masks, scores, 0.5, frames=frames)  # (1, M, M) over x 0..80
    # left half: both voters (1.0); right half: only the wide one, averaged with the kept box's
    # zero outside its box -> 0.5
    assert torch.allclose(voted[0, :, : M // 2], torch.ones(M, M // 2))
    assert torch.allclose(voted[0, :, M // 2 :], torch.full((M, M // 2), 0.5))
    in_kept = mask_voting(kept, cands, masks, scores, 0.5)
    # the kept frame spans x 0..40 only (its first column is the wide voter's bilinear edge)
    assert torch.allclose(in_kept[0, :, 1:], torch.ones(M, M - 1))
    with pytest.raises(ValueError, match="frames must be"):
        mask_voting(kept, cands, masks, scores, 0.5, frames=frames[:, :2])


def test_tight_box_of_the_binarised_mask():
    M = 10
    masks = torch.zeros(3, M, M)
    masks[0, 2:5, 3:9] = 0.6  # rows 2..4, cols 3..8
    masks[1, :, :] = 0.3  # nothing >= 0.4: keeps its frame
    masks[2, 0, 0] = 0.4  # the threshold itself counts
    frames = torch.tensor([[0.0, 0.0, 100.0, 50.0], [5.0, 5.0, 15.0, 15.0], [10.0, 20.0, 30.0, 40.0]])
    boxes = tight_mask_boxes(masks, frames, 0.4)
    assert torch.allclose(boxes[0], torch.tensor([30.0, 10.0, 90.0, 25.0]))  # x: 10 px / cell, y: 5 px / cell
    assert torch.equal(boxes[1], frames[1])
    assert torch.allclose(boxes[2], torch.tensor([10.0, 20.0, 12.0, 22.0]))
    assert tight_mask_boxes(masks[:0], frames[:0], 0.4).shape == (0, 4)


def test_mask_tight_boxes_match_detectron2_bitmasks():
    # detectron2's per-mask loop is the oracle for the vectorised version (empty masks included)
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 13, 17, generator=g) > 0.93
    masks[2] = False
    masks[4] = False
    masks[4, 12, 16] = True  # a single pixel in the last corner
    expected = BitMasks(masks).get_bounding_boxes().tensor
    assert torch.equal(mask_tight_boxes(masks), expected)
    assert torch.equal(mask_tight_boxes(masks)[2], torch.zeros(4))
    assert torch.equal(mask_tight_boxes(masks)[4], torch.tensor([16.0, 12.0, 17.0, 13.0]))


@pytest.mark.parametrize("voter_threshold", [None, 0.4])
def test_half_precision_masks_under_autocast(voter_threshold):
    """Under mixed precision the masks arrive in bfloat16 while grid_sample computes in float32:
    the voted masks keep the masks' dtype and equal the float32 result to bfloat16's precision."""
    kept = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 4.0, 2.0]])
    masks = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.2, 0.4], [0.6, 0.8]]])
    scores = torch.tensor([0.6, 0.4])
    expected = mask_voting(kept, boxes, masks, scores, iou_threshold=0.5, voter_threshold=voter_threshold)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        voted = mask_voting(kept, boxes, masks.bfloat16(), scores.bfloat16(), iou_threshold=0.5,
                            voter_threshold=voter_threshold)
    assert voted.dtype == torch.bfloat16
    torch.testing.assert_close(voted.float(), expected, rtol=2e-2, atol=2e-2)
