"""instfcn_d2.layers.nms and batched_nms (the native NMS of whole exported models) against
torchvision's, the oracle."""
import pytest
import torch
import torchvision

from instfcn_d2.layers import batched_nms, nms


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.7])
def test_batched_kept_indices_equal_torchvisions_and_the_offset_trick(dtype, threshold):
    """Per group as torchvision's batched_nms (its per-group loop above 4000 boxes, the offset trick
    below), in the order of nms of the boxes moved apart by group."""
    for seed, n, groups in [(0, 1, 1), (1, 40, 3), (2, 600, 20), (3, 5000, 81)]:
        boxes = _boxes(n, seed, dtype)
        scores = torch.rand(n, generator=torch.Generator().manual_seed(seed + 100), dtype=torch.float64).to(dtype)
        idxs = torch.randint(groups, (n,), generator=torch.Generator().manual_seed(seed + 200))
        got = batched_nms(boxes, scores, idxs, threshold)
        expected = torchvision.ops.batched_nms(boxes, scores, idxs, threshold)
        assert got.dtype == torch.int64 and torch.equal(got, expected), (seed, n)
        moved = boxes + (idxs.to(dtype) * (boxes.max() + 1))[:, None]
        assert torch.equal(got, nms(moved, scores, threshold)), (seed, n)
    # one group: plain nms
    boxes, scores = _boxes(300, 9, torch.float32), torch.rand(300, generator=torch.Generator().manual_seed(9))
    assert torch.equal(batched_nms(boxes, scores, torch.zeros(300, dtype=torch.int64), 0.5), nms(boxes, scores, 0.5))


def test_batched_empty_and_bad_inputs():
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5).shape == (0,)
    with pytest.raises(RuntimeError, match=r"idxs must be \(N,\) with N = 3"):
        batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(2, dtype=torch.int64), 0.5)
    with pytest.raises(RuntimeError, match="idxs must hold integer group ids"):
        batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(3), 0.5)


def test_batched_exports_with_a_data_dependent_count():
    class Keep(torch.nn.Module):
        def forward(self, boxes, scores, idxs):
            return batched_nms(boxes, scores, idxs, 0.5)

    boxes, scores = _boxes(50, 4, torch.float32), torch.rand(50, generator=torch.Generator().manual_seed(4))
    idxs = torch.randint(5, (50,), generator=torch.Generator().manual_seed(5))
    n = torch.export.Dim("n", min=2, max=100000)
    ep = torch.export.export(Keep(), (boxes, scores, idxs), dynamic_shapes=({0: n}, {0: n}, {0: n}))
    more = _boxes(80, 6, torch.float32), torch.rand(80), torch.randint(5, (80,))
    assert torch.equal(ep.module()(*more), torchvision.ops.batched_nms(*more, 0.5))
