"""instfcn_d2.layers.nms (the native NMS of whole exported models) against torchvision's, the oracle."""
import pytest
import torch
import torchvision

from instfcn_d2.layers import nms


def _boxes(n, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 100
    wh = 5 + torch.rand(n, 2, generator=g, dtype=torch.float64) * 40
    return torch.cat([xy, xy + wh], dim=1).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_kept_indices_equal_torchvisions(dtype, threshold):
    for seed, n in [(0, 1), (1, 17), (2, 300), (3, 1000)]:
        boxes = _boxes(n, seed, dtype)
        scores = torch.rand(n, generator=torch.Generator().manual_seed(seed + 100), dtype=torch.float64).to(dtype)
        expected = torchvision.ops.nms(boxes, scores, threshold)
        got = nms(boxes, scores, threshold)
        assert got.dtype == torch.int64 and torch.equal(got, expected), (seed, n)
        if threshold == 0.5 and n == 300:
            assert 0 < len(got) < n  # something is suppressed, something kept


def test_equal_scores_and_degenerate_boxes_as_torchvision():
    boxes = _boxes(60, 5, torch.float32)
    boxes[10] = boxes[3]  # duplicates
    boxes[20, 2:] = boxes[20, :2]  # zero area
    scores = torch.tensor([0.5, 0.9, 0.5, 0.5] * 15)  # ties
    assert torch.equal(nms(boxes, scores, 0.4), torchvision.ops.nms(boxes, scores, 0.4))


def test_empty_and_bad_inputs():
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).shape == (0,)
    with pytest.raises(RuntimeError, match=r"boxes must be \(N, 4\)"):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.5)
    with pytest.raises(RuntimeError, match="scores must be"):
        nms(torch.zeros(3, 4), torch.zeros(2), 0.5)
