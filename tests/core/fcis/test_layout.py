"""Position-sensitive score map heads and the FCIS inside/outside channel layout (core/fcis/layout.py; the conv in modeling/fcis/score_maps.py)."""
import pytest
import torch

from instfcn_d2.layers import ps_roi_assemble
from instfcn_d2.core.fcis.layout import assemble_box_deltas, inside_outside_channel, split_inside_outside
from instfcn_d2.modeling.fcis.score_maps import PSScoreMaps


def _constant_maps(values, k, H=12, W=12):
    """``(1, k*k*len(values), H, W)`` maps where every cell of output channel ``o`` is ``values[o]``
    (a tensor ``(len(values), k, k)`` gives each cell its own value)."""
    values = torch.as_tensor(values, dtype=torch.float32)
    if values.dim() == 1:
        values = values[:, None, None].expand(-1, k, k)
    return values.reshape(-1)[None, :, None, None].expand(1, -1, H, W).contiguous()


def test_ps_score_maps_shape_and_official_init():
    torch.manual_seed(0)
    head = PSScoreMaps(in_channels=64, group_size=7, num_outputs=2 * (4 + 1))
    out = head(torch.randn(2, 64, 5, 6))
    assert out.shape == (2, 7 * 7 * 10, 5, 6)
    w = head.conv.weight
    assert head.conv.kernel_size == (1, 1)
    assert abs(w.std().item() - 0.01) < 0.001 and abs(w.mean().item()) < 0.001
    assert torch.count_nonzero(head.conv.bias) == 0
    with pytest.raises(ValueError, match="num_outputs must be >= 1, got 0"):
        PSScoreMaps(64, 7, 0)


def test_inside_outside_channel_layout():
    C = 3  # foreground classes 0..2, background 3
    assert [inside_outside_channel(c, False, C) for c in range(C + 1)] == [0, 1, 2, 3]
    assert [inside_outside_channel(c, True, C) for c in range(C + 1)] == [4, 5, 6, 7]
    with pytest.raises(ValueError, match=r"class_index must be in \[0, 3\].*got 4"):
        inside_outside_channel(4, False, C)


def test_split_reads_inside_then_outside_of_each_class():
    """Maps whose only non-zero channel group is "outside of class 1" assemble to
    ``[:, 1, 1] = value`` and zero elsewhere after the split."""
    C, k, M = 2, 3, 9
    values = torch.zeros(2 * (C + 1))
    values[inside_outside_channel(1, True, C)] = 2.5
    rois = torch.tensor([[0, 8.0, 8.0, 40.0, 32.0]])
    io = split_inside_outside(ps_roi_assemble(_constant_maps(values, k), rois, M, k, spatial_scale=0.25))
    assert io.shape == (1, 2, C + 1, M, M)
    expected = torch.zeros(1, 2, C + 1, M, M)
    expected[:, 1, 1] = 2.5
    torch.testing.assert_close(io, expected)


def test_position_sensitive_cell_fills_its_block_of_bins():
    """Only cell (0, k-1) of "inside class 0" is set: the top-right M/k x M/k block of the
    assembled inside map holds the value, every other bin reads another cell (0)."""
    C, k, M = 1, 3, 9
    values = torch.zeros(2 * (C + 1), k, k)
    values[inside_outside_channel(0, False, C), 0, k - 1] = 1.0
    rois = torch.tensor([[0, 4.0, 4.0, 36.0, 36.0]])
    io = split_inside_outside(ps_roi_assemble(_constant_maps(values, k), rois, M, k, spatial_scale=0.25))
    expected = torch.zeros(M, M)
    expected[: M // k, M - M // k :] = 1.0
    torch.testing.assert_close(io[0, 0, 0], expected)
    assert io[0, 1].abs().sum() == 0 and io[0, 0, 1].abs().sum() == 0


def test_split_rejects_an_odd_channel_count():
    with pytest.raises(ValueError, match=r"\(R, 2\*\(C\+1\), M, M\), got \(1, 5, 3, 3\)"):
        split_inside_outside(torch.zeros(1, 5, 3, 3))


def test_box_deltas_average_the_k_by_k_cells():
    """Each delta is the mean of its k*k position-sensitive cells (R-FCN)."""
    k = 3
    cells = torch.arange(4 * k * k, dtype=torch.float32).view(4, k, k)
    rois = torch.tensor([[0, 0.0, 0.0, 30.0, 30.0], [0, 10.0, 5.0, 20.0, 45.0]])
    deltas = assemble_box_deltas(_constant_maps(cells, k, H=16, W=16), rois, k, spatial_scale=0.25)
    assert deltas.shape == (2, 4)
    torch.testing.assert_close(deltas, cells.mean(dim=(1, 2)).expand(2, 4))
