"""FCISReader.roi_class_logits: FCIS's class logits read by the native ps_roi_class_logits, equal
to the chunked path through roi_inside_outside, which a reader with its own likelihoods keeps."""
import dataclasses

import pytest
import torch

from reader_spy import spy_inside_outside

from instfcn_d2.core.fcis import CLASS_LOGITS_ROIS_PER_CHUNK, FCISMaps, FCISReader
from instfcn_d2.core.fcis.layout import inside_outside_class_logits

C, K, M, STRIDE = 3, 3, 7, 8


def _maps(dtype=torch.float64, seed=0, H=10, W=12):
    g = torch.Generator().manual_seed(seed)
    inside_outside = torch.randn(2, K * K * 2 * (C + 1), H, W, generator=g, dtype=dtype)
    box = torch.randn(2, K * K * 4, H, W, generator=g, dtype=dtype)
    return FCISMaps(inside_outside, box)


def _rois(n, seed=1, size=96):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size * 0.8 - 0.1 * size
    wh = 1 + torch.rand(n, 2, generator=g) * size * 0.6
    batch = torch.randint(0, 2, (n, 1), generator=g).float()
    return torch.cat([batch, xy, xy + wh], dim=1)


def _reader(**changes):
    return FCISReader(num_classes=C, group_size=K, mask_size=M, spatial_scale=1 / STRIDE, **changes)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_native_class_logits_equal_the_chunked_ones(monkeypatch, aligned, sampling_ratio):
    reader = _reader(aligned=aligned, sampling_ratio=sampling_ratio)
    maps = _maps()
    rois = _rois(2 * CLASS_LOGITS_ROIS_PER_CHUNK + 7)
    chunked = reader.roi_class_logits_chunked(maps, rois)
    torch.testing.assert_close(chunked, inside_outside_class_logits(reader.roi_inside_outside(maps, rois)))
    sizes = spy_inside_outside(monkeypatch, FCISReader)
    native = reader.roi_class_logits(maps, rois)
    assert sizes == []  # nothing assembled
    torch.testing.assert_close(native, chunked, rtol=1e-10, atol=1e-10)
    assert reader.roi_class_logits(maps, rois[:0]).shape == (0, C + 1)
    # float32 maps with float32 RoIs, and float64 RoIs cast to the maps' dtype, as the chunked path
    maps32 = _maps(torch.float32)
    native32 = reader.roi_class_logits(maps32, rois.double())
    assert native32.dtype == torch.float32
    torch.testing.assert_close(native32, reader.roi_class_logits_chunked(maps32, rois), rtol=1e-5, atol=1e-5)


def test_maps_that_need_a_gradient_take_the_chunked_path(monkeypatch):
    reader = _reader()
    maps = _maps()
    maps.inside_outside.requires_grad_()
    rois = _rois(5)
    sizes = spy_inside_outside(monkeypatch, FCISReader)
    logits = reader.roi_class_logits(maps, rois)
    assert sizes == [5]
    (grad,) = torch.autograd.grad(logits.sum(), maps.inside_outside)
    assert grad.abs().sum() > 0
    with torch.no_grad():
        reader.roi_class_logits(maps, rois)
    assert sizes == [5]  # no gradient needed: native


def test_a_reader_with_its_own_inside_outside_keeps_the_chunked_path():
    calls = []

    @dataclasses.dataclass(frozen=True)
    class Doubled(FCISReader):
        def roi_inside_outside(self, maps, rois):
            calls.append(len(rois))
            return 2 * super().roi_inside_outside(maps, rois)

    reader = Doubled(num_classes=C, group_size=K, mask_size=M, spatial_scale=1 / STRIDE)
    maps, rois = _maps(), _rois(CLASS_LOGITS_ROIS_PER_CHUNK + 3)
    logits = reader.roi_class_logits(maps, rois)
    assert calls == [CLASS_LOGITS_ROIS_PER_CHUNK, 3]
    torch.testing.assert_close(logits, 2 * _reader().roi_class_logits(maps, rois))
