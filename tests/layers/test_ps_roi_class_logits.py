"""ps_roi_class_logits: the native class read-out against the pure-PyTorch reference and against
ps_roi_assemble followed by FCIS's layout functions (the path it replaces)."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from instfcn_d2.core.fcis.layout import inside_outside_class_logits, split_inside_outside
from instfcn_d2.layers import ps_roi_assemble, ps_roi_class_logits
from instfcn_d2.layers.reference import ps_roi_class_logits_reference

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# The tolerances the op guarantees against the reference (the bins are ps_roi_assemble's; only the
# order in which the m x m maxima are added up differs).
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}


def _maps(k, num_classes, height, width, generator, batch=2, dtype=torch.float64):
    return torch.randn(batch, k * k * 2 * (num_classes + 1), height, width, generator=generator, dtype=dtype)


def _rois(n_rois, batch, height, width, scale, generator, dtype=torch.float64, margin=0.3):
    """Random ``(R, 5)`` RoIs for a ``height x width`` map at ``scale``, up to ``margin`` of the
    image past its borders, plus RoIs wholly off the map, tiny, empty, inverted and huge."""
    h, w = height / scale, width / scale
    xy = torch.rand(n_rois, 2, 2, generator=generator, dtype=torch.float64)
    xy[..., 0] = xy[..., 0] * w * (1 + 2 * margin) - margin * w
    xy[..., 1] = xy[..., 1] * h * (1 + 2 * margin) - margin * h
    lo, hi = xy.min(dim=1).values, xy.max(dim=1).values
    b = torch.randint(batch, (n_rois, 1), generator=generator).to(torch.float64)
    special = torch.tensor(
        [
            [0, -4 * w, -3 * h, -2 * w, -h],  # wholly above-left of the map
            [batch - 1, 2 * w, 2 * h, 3 * w, 4 * h],  # wholly below-right
            [0, 0.3 * w, 0.4 * h, 0.3 * w + 0.2, 0.4 * h + 0.1],  # tiny (a fraction of a pixel)
            [0, 0.5 * w, 0.5 * h, 0.5 * w, 0.5 * h],  # zero size
            [batch - 1, 0.7 * w, 0.6 * h, 0.2 * w, 0.1 * h],  # inverted
            [batch - 1, -3 * w, -2 * h, 4 * w, 3 * h],  # several times the map
        ],
        dtype=torch.float64,
    )
    return torch.cat([torch.cat([b, lo, hi], dim=1), special]).to(dtype)


@pytest.mark.smoke
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("k,m", [(3, 3), (3, 21), (7, 7), (7, 21)])
@pytest.mark.parametrize("num_classes", [1, 80])
def test_matches_reference(dtype, aligned, sampling_ratio, k, m, num_classes):
    g = torch.Generator().manual_seed(1000 * k + 10 * m + num_classes + sampling_ratio)
    height, width, scale = 7, 9, 0.5
    x = _maps(k, num_classes, height, width, g, dtype=dtype)
    rois = _rois(6 if num_classes == 80 else 14, 2, height, width, scale, g, dtype=dtype)
    out = ps_roi_class_logits(x, rois, m, k, num_classes, scale, sampling_ratio, aligned)
    ref = ps_roi_class_logits_reference(x, rois, m, k, num_classes, scale, sampling_ratio, aligned)
    assert out.shape == (len(rois), num_classes + 1) and out.dtype == dtype
    torch.testing.assert_close(out, ref, **TOL[dtype])
    # RoIs off the map read nothing (logits 0); random RoIs do read it (a few lie past the border)
    assert out[-6:-4].abs().max() == 0
    assert (out[:-6].abs().amax(dim=1) > 0).sum() >= 2


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_equals_ps_roi_assemble_then_the_fcis_layout(dtype, sampling_ratio):
    """The path it replaces: the same bins (ps_roi_assemble's code), the same max and mean."""
    g = torch.Generator().manual_seed(5 + sampling_ratio)
    k, m, num_classes, scale = 7, 21, 80, 1 / 16
    x = _maps(k, num_classes, 10, 12, g, dtype=dtype)
    rois = _rois(10, 2, 10, 12, scale, g, dtype=dtype, margin=0.1)
    out = ps_roi_class_logits(x, rois, m, k, num_classes, scale, sampling_ratio, True)
    expected = inside_outside_class_logits(split_inside_outside(ps_roi_assemble(x, rois, m, k, scale, sampling_ratio)))
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out, expected, **tol)


@pytest.mark.parametrize("sampling_ratio", [0, -1])
def test_huge_roi_is_sampled_as_ps_roi_assemble_caps_it(sampling_ratio):
    """Adaptive sampling of a huge RoI is capped at 64 samples per bin side, as ps_roi_assemble's."""
    g = torch.Generator().manual_seed(3)
    x = _maps(3, 1, 40, 50, g)
    rois = torch.tensor([[0, -2000.0, -1500.0, 2600.0, 3100.0], [1, 5.0, 6.0, 300.0, 400.0]], dtype=torch.float64)
    out = ps_roi_class_logits(x, rois, 3, 3, 1, 1 / 8, sampling_ratio, True)
    assert torch.equal(out[:1], ps_roi_class_logits(x, rois[:1], 3, 3, 1, 1 / 8, 64, True))
    torch.testing.assert_close(out, ps_roi_class_logits_reference(x, rois, 3, 3, 1, 1 / 8, sampling_ratio, True), **TOL[torch.float64])
    assert out.abs().min() > 0


def test_nan_in_a_score_gives_nan_as_amax():
    g = torch.Generator().manual_seed(4)
    x = _maps(3, 2, 8, 8, g)
    x[0, 3, 2, 2] = float("nan")  # inside, class 0, cell (1, 0) of image 0
    rois = torch.tensor([[0, 0.0, 0.0, 8.0, 8.0], [1, 0.0, 0.0, 8.0, 8.0]], dtype=torch.float64)
    out = ps_roi_class_logits(x, rois, 6, 3, 2, 1.0, 2, True)
    ref = ps_roi_class_logits_reference(x, rois, 6, 3, 2, 1.0, 2, True)
    torch.testing.assert_close(out, ref, equal_nan=True, **TOL[torch.float64])
    assert out[0, 0].isnan() and not out[0, 1:].isnan().any() and not out[1].isnan().any()


def test_non_contiguous_inputs_and_thread_count():
    g = torch.Generator().manual_seed(6)
    x = _maps(3, 4, 9, 11, g)
    rois = _rois(12, 2, 9, 11, 0.5, g)
    expected = ps_roi_class_logits(x, rois, 7, 3, 4, 0.5, 0, True)
    x_nc = x.transpose(2, 3).contiguous().transpose(2, 3)
    rois_nc = torch.cat([rois, rois], dim=1)[:, ::2]
    rois_nc[:] = rois
    assert not x_nc.is_contiguous() and not rois_nc.is_contiguous()
    assert torch.equal(ps_roi_class_logits(x_nc, rois_nc, 7, 3, 4, 0.5, 0, True), expected)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(ps_roi_class_logits(x, rois, 7, 3, 4, 0.5, 0, True), expected)  # one task per logit
    finally:
        torch.set_num_threads(threads)


def test_empty_rois_and_empty_map():
    x = torch.randn(2, 9 * 2 * 4, 5, 5)
    out = ps_roi_class_logits(x, torch.zeros(0, 5), 7, 3, 3, 1.0, 2)
    assert out.shape == (0, 4) and out.dtype == torch.float32
    empty_map = torch.randn(1, 9 * 2 * 4, 0, 5)
    assert torch.equal(ps_roi_class_logits(empty_map, torch.tensor([[0, 0.0, 0.0, 3.0, 3.0]]), 7, 3, 3), torch.zeros(1, 4))


def test_errors():
    x = torch.randn(2, 9 * 2 * 3, 6, 6)
    rois = torch.tensor([[0, 0.0, 0.0, 4.0, 4.0]])
    with pytest.raises(ValueError, match=r"input has 54 channels, expected k\*k\*2\*\(C\+1\) = 72 for k = 3, C = 3"):
        ps_roi_class_logits(x, rois, 7, 3, 3)
    with pytest.raises(ValueError, match=r"expected k\*k\*2\*\(C\+1\) = 100 for k = 5"):
        ps_roi_class_logits(x, rois, 7, 5, 1)
    with pytest.raises(RuntimeError, match=r"ps_roi_class_logits: input has 54 channels, expected k\*k\*2\*\(C\+1\) = 72"):
        torch.ops.instfcn_d2.ps_roi_class_logits(x, rois, 1.0, 7, 3, 2, True, 3)  # the native check
    with pytest.raises(ValueError, match=r"ps_roi_class_logits: group_size \(k = 3\) must be <= output_size \(m = 2\)"):
        ps_roi_class_logits(x, rois, 2, 3, 2)
    with pytest.raises(ValueError, match="num_classes"):
        ps_roi_class_logits(x, rois, 7, 3, -1)
    with pytest.raises(TypeError, match="num_classes must be an int"):
        ps_roi_class_logits(x, rois, 7, 3, 2.0)
    with pytest.raises(ValueError, match=r"ps_roi_class_logits: rois must have shape \(R, 5\)"):
        ps_roi_class_logits(x, rois[:, :4], 7, 3, 2)
    with pytest.raises(TypeError, match="ps_roi_class_logits: rois has dtype torch.float64"):
        ps_roi_class_logits(x, rois.double(), 7, 3, 2)
    with pytest.raises(TypeError, match="supports"):
        ps_roi_class_logits(x.half(), rois.half(), 7, 3, 2)
    with pytest.raises(RuntimeError, match=r"ps_roi_class_logits: rois\[1, 0\] = 2 is not a batch index in \[0, 2\)"):
        ps_roi_class_logits(x, torch.tensor([[0, 0.0, 0.0, 4.0, 4.0], [2, 0.0, 0.0, 4.0, 4.0]]), 7, 3, 2)


def test_backward_raises_a_clear_error():
    x = torch.randn(1, 9 * 2 * 3, 6, 6, requires_grad=True)
    out = ps_roi_class_logits(x, torch.tensor([[0, 0.0, 0.0, 4.0, 4.0]]), 7, 3, 2)
    with pytest.raises(RuntimeError, match="ps_roi_class_logits has no gradient"):
        out.sum().backward()


def test_fake_kernel_shape():
    with FakeTensorMode():
        x = torch.empty(2, 49 * 2 * 81, 38, 50)
        rois = torch.empty(300, 5)
        out = torch.ops.instfcn_d2.ps_roi_class_logits(x, rois, 1 / 16, 21, 7, 0, True, 80)
    assert out.shape == (300, 81) and out.dtype == torch.float32


def test_opcheck():
    """torch.library.opcheck: schema, fake kernel and the (raising) autograd registration agree."""
    g = torch.Generator().manual_seed(8)
    x = _maps(3, 2, 6, 7, g)
    rois = _rois(5, 2, 6, 7, 0.5, g)
    torch.library.opcheck(torch.ops.instfcn_d2.ps_roi_class_logits.default, (x, rois, 0.5, 7, 3, 2, True, 2))


def test_export_with_a_dynamic_number_of_rois():
    class ReadOut(torch.nn.Module):
        def forward(self, maps, rois):
            return ps_roi_class_logits(maps, rois, 7, 3, 2, 0.5, 2, True)

    g = torch.Generator().manual_seed(9)
    x = _maps(3, 2, 6, 7, g, dtype=torch.float32)
    rois = _rois(5, 2, 6, 7, 0.5, g, dtype=torch.float32)
    ep = torch.export.export(ReadOut(), (x, rois), dynamic_shapes=({}, {0: torch.export.Dim("R", min=2, max=1024)}))
    assert "instfcn_d2.ps_roi_class_logits.default" in {str(n.target) for n in ep.graph.nodes}
    more = torch.cat([rois, rois[:3] + torch.tensor([0, 0.5, 0.5, 0.5, 0.5])])
    torch.testing.assert_close(ep.module()(x, more), ReadOut()(x, more))


# ---- CUDA ------------------------------------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("k,m,num_classes", [(3, 3, 1), (7, 21, 80)])
def test_cuda_matches_reference_and_cpu(dtype, aligned, sampling_ratio, k, m, num_classes):
    g = torch.Generator().manual_seed(11 + k + sampling_ratio)
    x = _maps(k, num_classes, 7, 9, g, dtype=dtype)
    rois = _rois(6, 2, 7, 9, 0.5, g, dtype=dtype)
    args = (m, k, num_classes, 0.5, sampling_ratio, aligned)
    out = ps_roi_class_logits(x.cuda(), rois.cuda(), *args)
    torch.testing.assert_close(out.cpu(), ps_roi_class_logits_reference(x, rois, *args), **TOL[dtype])
    torch.testing.assert_close(out.cpu(), ps_roi_class_logits(x, rois, *args), **TOL[dtype])
    expected = inside_outside_class_logits(
        split_inside_outside(ps_roi_assemble(x.cuda(), rois.cuda(), m, k, 0.5, sampling_ratio, aligned))
    )
    torch.testing.assert_close(out, expected, **TOL[dtype])


@needs_cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
def test_cuda_low_precision_matches_the_assembled_path(dtype, tol):
    g = torch.Generator().manual_seed(12)
    x = _maps(7, 80, 10, 12, g, dtype=torch.float32).cuda().to(dtype)
    rois = _rois(10, 2, 10, 12, 1 / 16, g, dtype=torch.float32, margin=0.1).cuda().to(dtype)
    out = ps_roi_class_logits(x, rois, 21, 7, 80, 1 / 16, 0, True)
    expected = inside_outside_class_logits(split_inside_outside(ps_roi_assemble(x, rois, 21, 7, 1 / 16, 0)))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expected.float(), rtol=tol, atol=tol)


@needs_cuda
def test_cuda_rois_of_no_image_give_zeros_and_empty_rois():
    x = torch.randn(2, 9 * 2 * 3, 6, 6, device="cuda")
    rois = torch.tensor([[5, 0.0, 0.0, 4.0, 4.0], [-1, 0.0, 0.0, 4.0, 4.0], [1, 0.0, 0.0, 4.0, 4.0]], device="cuda")
    out = ps_roi_class_logits(x, rois, 7, 3, 2)
    assert out[:2].abs().max() == 0 and out[2].abs().min() > 0
    assert ps_roi_class_logits(x, rois[:0], 7, 3, 2).shape == (0, 3)
