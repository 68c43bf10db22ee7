"""PSRoIAssemble: native kernels against the pure-PyTorch reference, torchvision and detectron2."""
import pytest
import torch
import torchvision
from detectron2.layers import ROIAlign

from instfcn_d2.layers import PSRoIAssemble, ps_roi_assemble
from instfcn_d2.layers.reference import ps_roi_assemble_reference

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _rois(n_rois, batch, height, width, scale, generator, dtype=torch.float32, margin=0.0):
    """Random ``(R, 5)`` RoIs in image coordinates for a ``height x width`` feature map at
    ``scale``; ``margin`` (a fraction of the image) lets them extend past the borders."""
    h, w = height / scale, width / scale
    xy = torch.rand(n_rois, 2, 2, generator=generator, dtype=torch.float64)
    xy[..., 0] = xy[..., 0] * w * (1 + 2 * margin) - margin * w
    xy[..., 1] = xy[..., 1] * h * (1 + 2 * margin) - margin * h
    lo, hi = xy.min(dim=1).values, xy.max(dim=1).values
    b = torch.randint(batch, (n_rois, 1), generator=generator).to(torch.float64)
    return torch.cat([b, lo, hi], dim=1).to(dtype)


# RoIs (scale 0.5 on a 5x6 map) whose sample points avoid integer coordinates, so that
# bilinear interpolation is differentiable there (for gradcheck); one is partly outside the map.
_SMOOTH_ROIS = [[0, 1.3, 2.2, 9.7, 8.1], [1, -3.3, 1.1, 5.7, 12.9], [1, 5.1, 5.3, 5.6, 6.2]]


@pytest.mark.smoke
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2])
@pytest.mark.parametrize("k,m", [(1, 1), (3, 3), (3, 7), (2, 5)])
def test_forward_matches_reference(aligned, sampling_ratio, k, m):
    g = torch.Generator().manual_seed(100 * k + m + sampling_ratio)
    x = torch.randn(2, k * k * 3, 9, 11, generator=g)
    rois = _rois(12, 2, 9, 11, 0.5, g, margin=0.3)
    out = ps_roi_assemble(x, rois, m, k, spatial_scale=0.5, sampling_ratio=sampling_ratio, aligned=aligned)
    ref = ps_roi_assemble_reference(x, rois, m, k, 0.5, sampling_ratio, aligned)
    assert out.shape == (12, 3, m, m)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_fcis_sizes_match_reference():
    """FCIS's m=21, k=7 (and BiSeg's k=9) on large RoIs, adaptive sampling (several samples/bin)."""
    g = torch.Generator().manual_seed(7)
    for k in (7, 9):
        x = torch.randn(1, k * k * 2, 20, 24, generator=g)
        rois = _rois(6, 1, 20, 24, 1 / 16, g, margin=0.1)
        out = ps_roi_assemble(x, rois, 21, k, 1 / 16, 0, True)
        ref = ps_roi_assemble_reference(x, rois, 21, k, 1 / 16, 0, True)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        assert out.abs().sum() > 0


@pytest.mark.parametrize("aligned", [True, False])
def test_rois_outside_the_map(aligned):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 9 * 2, 6, 8, generator=g)
    rois = torch.tensor(
        [
            [0, -40.0, -30.0, -20.0, -10.0],  # wholly above-left: zeros
            [0, 100.0, 100.0, 140.0, 120.0],  # wholly below-right: zeros
            [0, -5.0, -5.0, 4.0, 6.0],  # partly outside
            [0, 3.0, 2.0, 3.0, 2.0],  # zero size
            [0, 7.0, 5.0, 3.0, 1.0],  # x2 < x1, y2 < y1
        ]
    )
    out = ps_roi_assemble(x, rois, 6, 3, 1.0, 2, aligned)
    ref = ps_roi_assemble_reference(x, rois, 6, 3, 1.0, 2, aligned)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert out[:2].abs().max() == 0
    assert out[2].abs().max() > 0


def test_empty_roi_list_and_single_pixel_map():
    x = torch.randn(2, 9 * 4, 5, 5, requires_grad=True)
    out = ps_roi_assemble(x, torch.zeros(0, 5), 7, 3, 1.0, 2)
    assert out.shape == (0, 4, 7, 7)
    out.sum().backward()
    assert x.grad.shape == x.shape and x.grad.abs().max() == 0

    pixel = torch.randn(1, 4, 1, 1)  # k = 2, C = 1, a single-pixel map
    rois = torch.tensor([[0, -0.3, -0.2, 0.8, 0.9], [0, 0.0, 0.0, 1.0, 1.0]])
    for aligned in (True, False):
        out = ps_roi_assemble(pixel, rois, 4, 2, 1.0, 0, aligned)
        ref = ps_roi_assemble_reference(pixel, rois, 4, 2, 1.0, 0, aligned)
        torch.testing.assert_close(out, ref)


def test_non_contiguous_inputs():
    g = torch.Generator().manual_seed(3)
    base = torch.randn(2, 10, 12, 9 * 2, generator=g)
    x = base.permute(0, 3, 1, 2)  # (2, 18, 10, 12), channels-last memory
    rois = _rois(8, 2, 10, 12, 1.0, g).t().contiguous().t()
    assert not x.is_contiguous() and not rois.is_contiguous()
    out = ps_roi_assemble(x, rois, 5, 3, 1.0, 2)
    torch.testing.assert_close(out, ps_roi_assemble(x.contiguous(), rois.contiguous(), 5, 3, 1.0, 2), rtol=0, atol=0)
    torch.testing.assert_close(out, ps_roi_assemble_reference(x, rois, 5, 3, 1.0, 2))


@pytest.mark.smoke
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_backward_matches_reference(aligned, sampling_ratio):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 9 * 3, 9, 11, generator=g, dtype=torch.float64, requires_grad=True)
    rois = _rois(10, 2, 9, 11, 0.5, g, dtype=torch.float64, margin=0.2)
    out = ps_roi_assemble(x, rois, 7, 3, 0.5, sampling_ratio, aligned)
    ref = ps_roi_assemble_reference(x, rois, 7, 3, 0.5, sampling_ratio, aligned)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64)
    (gx,) = torch.autograd.grad(out, x, grad)
    (gr,) = torch.autograd.grad(ref, x, grad)
    torch.testing.assert_close(gx, gr, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_gradcheck(aligned, sampling_ratio):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 9, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor(_SMOOTH_ROIS, dtype=torch.float64)

    def fn(t):
        return ps_roi_assemble(t, rois, 5, 3, 0.5, sampling_ratio, aligned)

    assert torch.autograd.gradcheck(fn, (x,))
    # The op is linear in x: the backward's own gradient is the forward, checked here.
    assert torch.autograd.gradgradcheck(fn, (x,), fast_mode=True)


@pytest.mark.smoke
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_matches_torchvision_ps_roi_align(sampling_ratio):
    """torchvision's ps_roi_align is the m == k, aligned=True case."""
    g = torch.Generator().manual_seed(21)
    x = torch.randn(2, 49 * 3, 20, 30, generator=g, requires_grad=True)
    rois = _rois(40, 2, 20, 30, 1 / 16, g, margin=0.1)
    out = ps_roi_assemble(x, rois, 7, 7, 1 / 16, sampling_ratio, True)
    tv = torchvision.ops.ps_roi_align(x, rois, 7, 1 / 16, sampling_ratio)
    torch.testing.assert_close(out, tv, rtol=1e-5, atol=1e-5)
    grad = torch.randn(out.shape, generator=g)
    (g_ours,) = torch.autograd.grad(out, x, grad)
    (g_tv,) = torch.autograd.grad(tv, x, grad)
    torch.testing.assert_close(g_ours, g_tv, rtol=1e-5, atol=1e-5)


@pytest.mark.smoke
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_k1_matches_detectron2_roi_align(aligned, sampling_ratio):
    """With one cell (k = 1) the op is RoIAlign: detectron2's ROIAlign module, both conventions."""
    g = torch.Generator().manual_seed(31)
    x = torch.randn(2, 6, 15, 17, generator=g)
    rois = _rois(20, 2, 15, 17, 0.25, g, margin=0.1)
    d2 = ROIAlign((14, 14), 0.25, sampling_ratio, aligned=aligned)(x, rois)
    ours = PSRoIAssemble(14, 1, 0.25, sampling_ratio, aligned=aligned)(x, rois)
    torch.testing.assert_close(ours, d2, rtol=1e-5, atol=1e-5)


def test_module_repr_and_dtype_cast():
    layer = PSRoIAssemble(21, 7, 1 / 16, 2)
    assert "output_size=21, group_size=7" in repr(layer) and "aligned=True" in repr(layer)
    x = torch.randn(1, 49 * 2, 6, 6, dtype=torch.float64)
    rois = torch.tensor([[0, 8.0, 8.0, 60.0, 70.0]])  # float32: the module casts like ROIAlign
    out = layer(x, rois)
    assert out.dtype == torch.float64 and out.shape == (1, 2, 21, 21)


def test_errors():
    x = torch.randn(1, 18, 5, 5)
    rois = torch.tensor([[0, 0.0, 0.0, 3.0, 3.0]])
    with pytest.raises(ValueError, match="not divisible by k\\*k = 4"):
        ps_roi_assemble(torch.randn(1, 7, 5, 5), rois, 4, 2)
    with pytest.raises(ValueError, match="rois must have shape \\(R, 5\\)"):
        ps_roi_assemble(x, rois[:, 1:], 3, 3)
    with pytest.raises(TypeError, match="rois has dtype torch.float64"):
        ps_roi_assemble(x, rois.double(), 3, 3)
    with pytest.raises(ValueError, match="rois is on meta"):
        ps_roi_assemble(x, rois.to("meta"), 3, 3)
    with pytest.raises(ValueError, match="output_size must be >= 1"):
        ps_roi_assemble(x, rois, 0, 1)
    with pytest.raises(ValueError, match="group_size must be >= 1"):
        PSRoIAssemble(3, 0, 1.0, 2)
    with pytest.raises(ValueError, match="must be <= output_size"):
        ps_roi_assemble(x, rois, 2, 3)
    with pytest.raises(TypeError, match="cpu kernel supports"):
        ps_roi_assemble(x.half(), rois.half(), 3, 3)
    with pytest.raises(ValueError, match="input must have shape"):
        ps_roi_assemble(x[0], rois, 3, 3)
    # The C++ checks, reached without the Python layer.
    op = torch.ops.instfcn_d2.ps_roi_assemble
    with pytest.raises(RuntimeError, match="not divisible by k\\*k = 4"):
        op(torch.randn(1, 7, 5, 5), rois, 1.0, 4, 2, 0, True)
    with pytest.raises(RuntimeError, match="must be <= output_size"):
        op(x, rois, 1.0, 2, 3, 0, True)
    with pytest.raises(RuntimeError, match="rois has dtype Double"):
        op(x, rois.double(), 1.0, 3, 3, 0, True)
    with pytest.raises(RuntimeError, match="not a batch index in \\[0, 1\\)"):
        op(x, torch.tensor([[1, 0.0, 0.0, 3.0, 3.0]]), 1.0, 3, 3, 0, True)


# ---- adaptive sampling is capped at MAX_ADAPTIVE_SAMPLES per bin side ------------------------------
def test_adaptive_sampling_is_capped_per_bin_side():
    """Bins wider than 64 map pixels take 64 samples per side, not ceil(roi_size / m): the native op
    equals the explicit sampling_ratio=64 and the reference; RoIs within the cap are unchanged
    (torchvision's uncapped roi_align)."""
    from instfcn_d2.layers.ps_roi_assemble import MAX_ADAPTIVE_SAMPLES

    assert MAX_ADAPTIVE_SAMPLES == 64
    g = torch.Generator().manual_seed(61)
    m = 3
    x = torch.randn(1, 2, 800, 900, generator=g, dtype=torch.float64)
    # 256 map pixels per bin on both axes: adaptive would take 256 x 256 samples per bin.
    big = torch.tensor([[0, 10.3, 20.7, 10.3 + 256 * m, 20.7 + 256 * m]], dtype=torch.float64)
    out = ps_roi_assemble(x, big, m, 1, 1.0, 0, True)
    torch.testing.assert_close(out, ps_roi_assemble(x, big, m, 1, 1.0, MAX_ADAPTIVE_SAMPLES, True))
    torch.testing.assert_close(out, ps_roi_assemble_reference(x, big, m, 1, 1.0, 0, True))
    # One axis over the cap, the other under it: the cap applies per axis.
    wide = torch.tensor([[0, 3.2, 5.9, 3.2 + 200 * m, 5.9 + 10 * m]], dtype=torch.float64)
    torch.testing.assert_close(
        ps_roi_assemble(x, wide, m, 1, 1.0, -1, False), ps_roi_assemble_reference(x, wide, m, 1, 1.0, -1, False)
    )
    # At most 64 map pixels per bin: exactly RoIAlign's adaptive sampling, as before.
    normal = torch.tensor([[0, 1.1, 2.3, 1.1 + 63.5 * m, 2.3 + 40 * m], [0, 7.5, 3.3, 90.2, 150.8]], dtype=torch.float64)
    tv = torchvision.ops.roi_align(x, normal, m, 1.0, 0, True)
    torch.testing.assert_close(ps_roi_assemble(x, normal, m, 1, 1.0, 0, True), tv)


@pytest.mark.parametrize("sampling_ratio", [0, -1])
def test_huge_roi_runs_in_bounded_time_and_memory(sampling_ratio):
    """A 1e9-pixel RoI (adaptive: 5e7 samples per bin side uncapped) is sampled as a 64-sample one,
    which bounds its time and memory: forward and backward equal those of sampling_ratio=64 (the
    sample count, checked through the values rather than a wall-clock limit), and the reference."""
    g = torch.Generator().manual_seed(62)
    x = torch.randn(1, 9, 40, 50, generator=g, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, -1e9, -3e8, 1e9, 7e8], [0, 5.0, 6.0, 300.0, 400.0]], dtype=torch.float64)
    out = ps_roi_assemble(x, rois, 7, 3, 1 / 8, sampling_ratio, True)
    (grad,) = torch.autograd.grad(out.sum(), x)
    ref = ps_roi_assemble_reference(x, rois, 7, 3, 1 / 8, sampling_ratio, True)
    (grad_ref,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(grad, grad_ref)
    # The huge RoI is sampled exactly as with 64 samples per side, forward and backward.
    capped = ps_roi_assemble(x, rois[:1], 7, 3, 1 / 8, 64, True)
    torch.testing.assert_close(out[:1], capped)
    (grad_huge,) = torch.autograd.grad(ps_roi_assemble(x, rois[:1], 7, 3, 1 / 8, sampling_ratio, True).sum(), x)
    torch.testing.assert_close(grad_huge, torch.autograd.grad(capped.sum(), x)[0])
    # 64 samples per side, millions of map pixels apart: none lands on the 40 x 50 map, so the huge
    # RoI reads nothing (uncapped, about one sample per map pixel would read the whole map)
    assert out[:1].abs().sum() == 0 and grad_huge.abs().sum() == 0
    assert out[1:].abs().sum() > 0  # the normal RoI reads the map


# ---- CUDA ------------------------------------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize(
    "dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10), (torch.float16, 1e-2), (torch.bfloat16, 6e-2)]
)
@pytest.mark.parametrize("aligned", [True, False])
def test_cuda_matches_reference(dtype, tol, aligned):
    g = torch.Generator().manual_seed(41)
    x = torch.randn(2, 49 * 3, 20, 24, generator=g).to(dtype)
    rois = _rois(30, 2, 20, 24, 1 / 16, g, margin=0.2).to(dtype)
    x64, rois64 = x.double().requires_grad_(), rois.double()  # same rounded values, exact oracle
    for m, sr in ((21, 0), (7, 2)):
        xc = x.cuda().requires_grad_()
        out = ps_roi_assemble(xc, rois.cuda(), m, 7, 1 / 16, sr, aligned)
        ref = ps_roi_assemble_reference(x64, rois64, m, 7, 1 / 16, sr, aligned)
        assert out.dtype == dtype
        torch.testing.assert_close(out.double().cpu(), ref, rtol=tol, atol=tol)
        grad = torch.randn(out.shape, generator=g).to(dtype)
        (gc,) = torch.autograd.grad(out, xc, grad.cuda())
        (gr,) = torch.autograd.grad(ref, x64, grad.double())
        assert gc.dtype == dtype
        torch.testing.assert_close(gc.double().cpu(), gr, rtol=tol, atol=tol)


@needs_cuda
def test_cuda_matches_torchvision_and_cpu():
    g = torch.Generator().manual_seed(43)
    x = torch.randn(2, 49 * 4, 30, 40, generator=g)
    rois = _rois(50, 2, 30, 40, 1 / 16, g, margin=0.1)
    out = ps_roi_assemble(x.cuda(), rois.cuda(), 7, 7, 1 / 16, 2, True)
    torch.testing.assert_close(out, torchvision.ops.ps_roi_align(x.cuda(), rois.cuda(), 7, 1 / 16, 2), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.cpu(), ps_roi_assemble(x, rois, 7, 7, 1 / 16, 2, True), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="rois is on cpu"):
        ps_roi_assemble(x.cuda(), rois, 7, 7, 1 / 16, 2)


@needs_cuda
def test_cuda_caps_adaptive_sampling_as_the_cpu():
    """The CUDA kernel takes the same capped sample count: a huge RoI and one over the cap on one
    axis match the CPU kernel (and run in bounded time)."""
    g = torch.Generator().manual_seed(63)
    x = torch.randn(1, 9 * 2, 40, 50, generator=g, dtype=torch.float64)
    rois = torch.tensor(
        [[0, -1e9, -3e8, 1e9, 7e8], [0, 3.2, 5.9, 3.2 + 200 * 7 * 8, 5.9 + 10 * 7 * 8], [0, 5.0, 6.0, 300.0, 400.0]],
        dtype=torch.float64,
    )
    for sampling_ratio in (0, -1):
        out = ps_roi_assemble(x.cuda(), rois.cuda(), 7, 3, 1 / 8, sampling_ratio, True)
        torch.testing.assert_close(out.cpu(), ps_roi_assemble(x, rois, 7, 3, 1 / 8, sampling_ratio, True))
