"""FCISFeatureMaps: the maps left as the 1x1 convs that make them. Every per-RoI read equals reading
the maps the convs make (float64, RoIs off the map included), and so do the gradients."""
import pytest
import torch
import torch.nn.functional as F

from instfcn_d2.core.fcis import FCISFeatureMaps, FCISLevelMaps, FCISMaps, FCISReader, PyramidLevels
from instfcn_d2.core.fcis.layout import assemble_conv1x1
from instfcn_d2.layers import ps_roi_assemble

C, K, M, D = 3, 3, 7, 5


def _convs(seed=0, N=2, H=10, W=12, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    t = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(requires_grad)  # noqa: E731
    return FCISFeatureMaps(t(N, D, H, W), t(K * K * 2 * (C + 1), D), t(K * K * 2 * (C + 1)), t(K * K * 4, D), t(K * K * 4))


def _dense(f: FCISFeatureMaps) -> FCISMaps:
    conv = lambda w, b: F.conv2d(f.features, w[:, :, None, None], b)  # noqa: E731
    return FCISMaps(conv(f.inside_outside_weight, f.inside_outside_bias), conv(f.box_weight, f.box_bias))


ROIS = torch.tensor(
    [[0, -20, -10, 60, 50], [1, 5, 5, 90, 80], [0, 30, 20, 200, 150], [1, 1, 2, 3, 4], [0, 40, 30, 41, 33]],
    dtype=torch.float64,
)  # partly off the 80 x 96 px map, larger than it, under a cell


@pytest.mark.parametrize("aligned, sampling_ratio", [(True, 0), (False, 0), (True, 2)])
def test_assemble_conv1x1_is_assembling_the_convs_maps(aligned, sampling_ratio):
    f = _convs(requires_grad=True)
    for m in (K, M):
        dense = ps_roi_assemble(_dense(f).inside_outside, ROIS, m, K, 1 / 8, sampling_ratio, aligned)
        lazy = assemble_conv1x1(
            f.features, f.inside_outside_weight, f.inside_outside_bias, ROIS, m, K, 1 / 8, sampling_ratio, aligned
        )
        torch.testing.assert_close(lazy, dense, rtol=1e-12, atol=1e-12)
        inputs = (f.features, f.inside_outside_weight, f.inside_outside_bias)
        grad_out = torch.randn_like(dense)
        for a, b in zip(torch.autograd.grad(dense, inputs, grad_out), torch.autograd.grad(lazy, inputs, grad_out)):
            torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


def test_every_read_of_the_reader_equals_the_maps():
    reader = FCISReader(num_classes=C, group_size=K, mask_size=M, spatial_scale=1 / 8)
    f = _convs()
    dense = _dense(f)
    classes = torch.tensor([0, 3, 1, 2, 3])
    for name, args in (("roi_inside_outside", ()), ("roi_box_deltas", ()), ("roi_class_logits", ()),
                       ("roi_inside_outside_of_classes", (classes,))):
        got, want = getattr(reader, name)(f, ROIS, *args), getattr(reader, name)(dense, ROIS, *args)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=name)


def test_levels_of_feature_maps():
    levels = PyramidLevels((8, 16), canonical_box_size=28)
    reader = FCISReader(num_classes=C, group_size=K, mask_size=M, spatial_scale=1 / 8, levels=levels)
    fine, coarse = _convs(0), _convs(1, H=5, W=6)
    coarse.inside_outside_weight, coarse.inside_outside_bias = fine.inside_outside_weight, fine.inside_outside_bias
    coarse.box_weight, coarse.box_bias = fine.box_weight, fine.box_bias  # the levels share the convs
    got = reader.roi_inside_outside(FCISLevelMaps([fine, coarse]), ROIS)
    want = reader.roi_inside_outside(FCISLevelMaps([_dense(fine), _dense(coarse)]), ROIS)
    assert set(levels.assign(ROIS[:, 1:]).tolist()) == {0, 1}
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
