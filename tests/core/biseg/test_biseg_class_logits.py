"""BiSegReader.roi_class_logits: BiSeg's class logits read by the native biseg_roi_class_logits,
equal to those of its own fused, prior-weighted likelihoods (the chunked path through
roi_inside_outside), not to FCIS's reading of its first map set."""
import dataclasses

import pytest
import torch

from reader_spy import spy_inside_outside

from instfcn_d2.core.biseg import BiSegMaps, BiSegReader
from instfcn_d2.core.fcis import CLASS_LOGITS_ROIS_PER_CHUNK, FCISReader
from instfcn_d2.core.fcis.layout import inside_outside_class_logits

C, K1, K2, M = 3, 3, 5, 14


def _maps(fuse, dtype=torch.float64, seed=3):
    g = torch.Generator().manual_seed(seed)
    inside_outside = torch.randn(2, K1 * K1 * 2 * (C + 1), 10, 12, generator=g, dtype=dtype)
    box = torch.randn(2, K1 * K1 * 4, 10, 12, generator=g, dtype=dtype)
    prior = torch.softmax(torch.randn(2, C + 1, 10, 12, generator=g, dtype=dtype), dim=1)
    fine = torch.randn(2, K2 * K2 * 2 * (C + 1), 20, 24, generator=g, dtype=dtype)
    return BiSegMaps(inside_outside, box, fine=fine if fuse else None, sem_seg_logits=None, prior=prior)


def _rois(n, seed=1, size=190):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size * 0.8 - 0.1 * size
    wh = 1 + torch.rand(n, 2, generator=g) * size * 0.6
    batch = torch.randint(0, 2, (n, 1), generator=g).float()
    return torch.cat([batch, xy, xy + wh], dim=1)


def _reader(fuse, prior_mode, cls=BiSegReader):
    return cls(num_classes=C, group_size=K1, mask_size=M, spatial_scale=1 / 16, fuse=fuse, prior_mode=prior_mode,
               fine_group_size=K2, fine_spatial_scale=1 / 8)


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("prior_mode", ["product", "log", "none"])
def test_native_class_logits_are_those_of_its_own_likelihoods(monkeypatch, fuse, prior_mode):
    reader, maps = _reader(fuse, prior_mode), _maps(fuse)
    rois = _rois(CLASS_LOGITS_ROIS_PER_CHUNK + 4)
    expected = inside_outside_class_logits(reader.roi_inside_outside(maps, rois))
    torch.testing.assert_close(reader.roi_class_logits_chunked(maps, rois), expected, rtol=1e-10, atol=1e-10)
    sizes = spy_inside_outside(monkeypatch, BiSegReader)
    logits = reader.roi_class_logits(maps, rois)
    assert sizes == []  # nothing assembled
    torch.testing.assert_close(logits, expected, rtol=1e-10, atol=1e-10)
    # float32 maps with float64 RoIs (cast to the maps' dtype, as the chunked path)
    maps32 = _maps(fuse, torch.float32)
    native32 = reader.roi_class_logits(maps32, rois.double())
    assert native32.dtype == torch.float32
    torch.testing.assert_close(native32, reader.roi_class_logits_chunked(maps32, rois), rtol=1e-5, atol=1e-5)
    # what FCIS's reading of the same maps gives: other values where BiSeg fuses or weighs
    fcis_only = inside_outside_class_logits(FCISReader.roi_inside_outside(reader, maps, rois))
    if fuse or prior_mode != "none":
        assert (fcis_only - logits).abs().max() > 1e-3
    else:  # FCIS's set alone at M, no prior: the same logits
        torch.testing.assert_close(fcis_only, logits, rtol=1e-10, atol=1e-10)


def test_maps_that_need_a_gradient_take_the_chunked_path(monkeypatch):
    reader, maps = _reader(True, "product"), _maps(True)
    maps.prior.requires_grad_()
    rois = _rois(5)
    sizes = spy_inside_outside(monkeypatch, BiSegReader)
    logits = reader.roi_class_logits(maps, rois)
    assert sizes == [5]
    (grad,) = torch.autograd.grad(logits.sum(), maps.prior)
    assert grad.abs().sum() > 0
    with torch.no_grad():
        reader.roi_class_logits(maps, rois)
    assert sizes == [5]  # no gradient needed: native


def test_a_subclass_with_its_own_likelihoods_keeps_the_chunked_path():
    @dataclasses.dataclass(frozen=True)
    class Doubled(BiSegReader):
        def roi_inside_outside(self, maps, rois):
            return 2 * super().roi_inside_outside(maps, rois)

    maps, rois = _maps(True), _rois(7)
    doubled = _reader(True, "product", Doubled).roi_class_logits(maps, rois)
    torch.testing.assert_close(doubled, 2 * _reader(True, "product").roi_class_logits(maps, rois))


def test_the_native_read_out_knows_every_prior_mode_the_reader_takes():
    """The op encodes the modes by number (layers); the reader names them (core): one set of names."""
    from instfcn_d2.core.biseg import BISEG_PRIOR_MODES
    from instfcn_d2.layers.biseg_roi_class_logits import PRIOR_MODE_CODES

    assert set(PRIOR_MODE_CODES) == set(BISEG_PRIOR_MODES)
    assert len(set(PRIOR_MODE_CODES.values())) == len(PRIOR_MODE_CODES)
