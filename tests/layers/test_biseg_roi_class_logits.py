"""biseg_roi_class_logits: BiSeg's native class read-out against the pure-PyTorch reference written
from its definition (ps_roi_assemble's reference, bilinear x2 upsampling, the prior, FCIS's max /
mean), on the CPU and, where there is one, the GPU."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from instfcn_d2.layers import biseg_roi_class_logits
from instfcn_d2.layers.reference import biseg_roi_class_logits_reference

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}
#: the image is 96 x 128 px: the coarse set and the prior at stride 16, the fine set at stride 8
H16, W16, H8, W8 = 6, 8, 12, 16


def _inputs(num_classes, k1, k2, generator, dtype=torch.float64, batch=2, n_rois=9):
    C1 = num_classes + 1
    coarse = torch.randn(batch, k1 * k1 * 2 * C1, H16, W16, generator=generator, dtype=dtype)
    fine = torch.randn(batch, k2 * k2 * 2 * C1, H8, W8, generator=generator, dtype=dtype)
    prior = torch.softmax(torch.randn(batch, C1, H16, W16, generator=generator, dtype=dtype), dim=1)
    xy = torch.rand(n_rois, 2, generator=generator, dtype=torch.float64) * torch.tensor([128.0, 96.0]) * 1.2 - 10
    wh = 1 + torch.rand(n_rois, 2, generator=generator, dtype=torch.float64) * 70
    b = torch.randint(batch, (n_rois, 1), generator=generator).double()
    special = torch.tensor(
        [
            [0, -300.0, -200.0, -250.0, -150.0],  # wholly off the map
            [batch - 1, 40.0, 30.0, 40.3, 30.2],  # a fraction of a pixel
            [batch - 1, 90.0, 70.0, 20.0, 10.0],  # inverted
            [0, -200.0, -150.0, 400.0, 300.0],  # several times the image
        ],
        dtype=torch.float64,
    )
    rois = torch.cat([torch.cat([b, xy, xy + wh], dim=1), special]).to(dtype)
    return coarse, fine, prior, rois


def _call(fn, coarse, fine, prior, rois, M, k1, k2, C, sampling_ratio, aligned, prior_mode, fused):
    return fn(
        coarse, fine if fused else None, None if prior_mode == "none" else prior, rois, M, k1, k2, C,
        1 / 16, 1 / 8, sampling_ratio, aligned, prior_mode,
    )


@pytest.mark.smoke
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("prior_mode", ["product", "log", "none"])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("k1,k2,M,C", [(3, 5, 10, 2), (7, 9, 42, 4)])
def test_matches_reference(dtype, fused, prior_mode, aligned, sampling_ratio, k1, k2, M, C):
    g = torch.Generator().manual_seed(k1 + 10 * sampling_ratio + aligned)
    coarse, fine, prior, rois = _inputs(C, k1, k2, g, dtype)
    args = (coarse, fine, prior, rois, M, k1, k2, C, sampling_ratio, aligned, prior_mode, fused)
    out = _call(biseg_roi_class_logits, *args)
    assert out.shape == (len(rois), C + 1) and out.dtype == dtype
    torch.testing.assert_close(out, _call(biseg_roi_class_logits_reference, *args), **TOL[dtype])


def test_each_part_changes_the_logits():
    """Fusion, the prior and its mode each change the result (the op reads what it is given)."""
    g = torch.Generator().manual_seed(5)
    coarse, fine, prior, rois = _inputs(2, 3, 5, g)
    args = dict(M=10, k1=3, k2=5, C=2, sampling_ratio=0, aligned=True)
    results = {
        (fused, mode): _call(biseg_roi_class_logits, coarse, fine, prior, rois, prior_mode=mode, fused=fused, **args)
        for fused in (True, False)
        for mode in ("product", "log", "none")
    }
    keys = list(results)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            assert (results[a] - results[b]).abs().max() > 1e-3, (a, b)


def test_nan_in_a_map_gives_nan_as_the_tensor_path():
    g = torch.Generator().manual_seed(6)
    coarse, fine, prior, _ = _inputs(1, 3, 5, g)
    coarse = torch.full_like(coarse, float("nan"))
    rois = torch.tensor([[0, 10.0, 10.0, 90.0, 80.0], [1, 0.0, 0.0, 50.0, 60.0]], dtype=torch.float64)
    out = biseg_roi_class_logits(coarse, fine, prior, rois, 10, 3, 5, 1, 1 / 16, 1 / 8)
    assert torch.isnan(out).all()


def test_non_contiguous_inputs_and_thread_count():
    g = torch.Generator().manual_seed(7)
    coarse, fine, prior, rois = _inputs(2, 3, 5, g, n_rois=40)
    expected = biseg_roi_class_logits(coarse, fine, prior, rois, 10, 3, 5, 2, 1 / 16, 1 / 8)
    nc = lambda t: t.transpose(-1, -2).contiguous().transpose(-1, -2)  # noqa: E731
    rois_nc = torch.stack([rois, rois], dim=2).reshape(len(rois), 10)[:, ::2]
    assert not rois_nc.is_contiguous() and torch.equal(rois_nc, rois)
    torch.testing.assert_close(
        biseg_roi_class_logits(nc(coarse), nc(fine), nc(prior), rois_nc, 10, 3, 5, 2, 1 / 16, 1 / 8), expected,
        rtol=0, atol=0,
    )
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = biseg_roi_class_logits(coarse, fine, prior, rois, 10, 3, 5, 2, 1 / 16, 1 / 8)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(one, expected, rtol=0, atol=0)


def test_empty_rois():
    g = torch.Generator().manual_seed(8)
    coarse, fine, prior, rois = _inputs(2, 3, 5, g)
    out = biseg_roi_class_logits(coarse, fine, prior, rois[:0], 10, 3, 5, 2, 1 / 16, 1 / 8)
    assert out.shape == (0, 3)


def test_errors():
    g = torch.Generator().manual_seed(9)
    coarse, fine, prior, rois = _inputs(2, 3, 5, g)
    call = lambda **kw: biseg_roi_class_logits(  # noqa: E731
        **{**dict(coarse=coarse, fine=fine, prior=prior, rois=rois, mask_size=10, group_size=3, fine_group_size=5,
                  num_classes=2, spatial_scale=1 / 16, fine_spatial_scale=1 / 8), **kw}
    )
    with pytest.raises(ValueError, match="prior_mode must be one of"):
        call(prior_mode="sum")
    with pytest.raises(ValueError, match="a prior is needed exactly when"):
        call(prior=None)
    with pytest.raises(ValueError, match="a prior is needed exactly when"):
        call(prior_mode="none")
    with pytest.raises(ValueError, match="mask_size must be even"):
        call(mask_size=11)
    with pytest.raises(ValueError, match=r"coarse has shape \(2, 54, 6, 8\), expected \(N, 72, H, W\)"):
        call(num_classes=3)
    with pytest.raises(ValueError, match=r"fine has shape .*, expected \(N, 54, H, W\)"):
        call(fine_group_size=3)
    with pytest.raises(ValueError, match="prior has 1 images, coarse 2"):
        call(prior=prior[:1])
    with pytest.raises(TypeError, match="rois has dtype"):
        call(rois=rois.float())
    with pytest.raises(ValueError, match=r"group_size \(k = 7\) must be <="):
        call(group_size=7, coarse=torch.randn(2, 49 * 6, H16, W16, dtype=torch.float64))
    bad = rois.clone()
    bad[0, 0] = 2
    with pytest.raises(RuntimeError, match=r"rois\[0, 0\] = 2 is not a batch index in \[0, 2\)"):
        call(rois=bad)
    # the native checks (reached when the Python layer is bypassed) name the same problems
    with pytest.raises(RuntimeError, match="a prior is needed exactly when prior_mode is not 0"):
        torch.ops.instfcn_d2.biseg_roi_class_logits(coarse, fine, None, rois, 1 / 16, 3, 1 / 8, 5, 10, 0, True, 2, 1, 1e-6)
    with pytest.raises(RuntimeError, match="fine must be"):
        torch.ops.instfcn_d2.biseg_roi_class_logits(coarse, fine[:1], prior, rois, 1 / 16, 3, 1 / 8, 5, 10, 0, True, 2, 1, 1e-6)


def test_backward_raises_a_clear_error():
    g = torch.Generator().manual_seed(10)
    coarse, fine, prior, rois = _inputs(2, 3, 5, g)
    coarse.requires_grad_()
    out = biseg_roi_class_logits(coarse, fine, prior, rois, 10, 3, 5, 2, 1 / 16, 1 / 8)
    with pytest.raises(RuntimeError, match="biseg_roi_class_logits has no gradient"):
        out.sum().backward()


def test_fake_kernel_shape():
    with FakeTensorMode():
        coarse = torch.empty(2, 49 * 2 * 81, 38, 50)
        fine = torch.empty(2, 81 * 2 * 81, 76, 100)
        prior = torch.empty(2, 81, 38, 50)
        out = torch.ops.instfcn_d2.biseg_roi_class_logits(
            coarse, fine, prior, torch.empty(600, 5), 1 / 16, 7, 1 / 8, 9, 42, 0, True, 80, 1, 1e-6
        )
    assert out.shape == (600, 81) and out.dtype == torch.float32


def test_opcheck():
    g = torch.Generator().manual_seed(11)
    coarse, fine, prior, rois = _inputs(2, 3, 5, g)
    op = torch.ops.instfcn_d2.biseg_roi_class_logits.default
    torch.library.opcheck(op, (coarse, fine, prior, rois, 1 / 16, 3, 1 / 8, 5, 10, 0, True, 2, 1, 1e-6))
    torch.library.opcheck(op, (coarse, None, None, rois, 1 / 16, 3, 1 / 8, 5, 10, 2, False, 2, 0, 1e-6))


def test_export_with_a_dynamic_number_of_rois():
    class ReadOut(torch.nn.Module):
        def forward(self, coarse, fine, prior, rois):
            return biseg_roi_class_logits(coarse, fine, prior, rois, 10, 3, 5, 2, 1 / 16, 1 / 8, 0, True, "log")

    g = torch.Generator().manual_seed(12)
    inputs = _inputs(2, 3, 5, g, dtype=torch.float32)
    dims = ({}, {}, {}, {0: torch.export.Dim("R", min=2, max=1024)})
    ep = torch.export.export(ReadOut(), inputs, dynamic_shapes=dims)
    assert "instfcn_d2.biseg_roi_class_logits.default" in {str(n.target) for n in ep.graph.nodes}
    coarse, fine, prior, rois = inputs
    more = torch.cat([rois, rois[:3] + torch.tensor([0, 0.5, 0.5, 0.5, 0.5])])
    torch.testing.assert_close(ep.module()(coarse, fine, prior, more), ReadOut()(coarse, fine, prior, more))


# ---- CUDA ------------------------------------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("prior_mode", ["product", "log", "none"])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_cuda_matches_reference_and_cpu(dtype, fused, prior_mode, sampling_ratio):
    g = torch.Generator().manual_seed(13 + sampling_ratio)
    coarse, fine, prior, rois = _inputs(4, 7, 9, g, dtype)
    args = (42, 7, 9, 4, sampling_ratio, True, prior_mode, fused)
    cpu = _call(biseg_roi_class_logits, coarse, fine, prior, rois, *args)
    cuda = _call(biseg_roi_class_logits, coarse.cuda(), fine.cuda(), prior.cuda(), rois.cuda(), *args)
    torch.testing.assert_close(cuda.cpu(), cpu, **TOL[dtype])
    ref = _call(biseg_roi_class_logits_reference, coarse, fine, prior, rois, *args)
    torch.testing.assert_close(cuda.cpu(), ref, **TOL[dtype])


@needs_cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-2), (torch.bfloat16, 1e-1)])
def test_cuda_low_precision_matches_the_reference_in_that_dtype(dtype, tol):
    g = torch.Generator().manual_seed(14)
    coarse, fine, prior, rois = (t.cuda() for t in _inputs(4, 7, 9, g, torch.float32))
    ref = biseg_roi_class_logits_reference(coarse, fine, prior, rois, 42, 7, 9, 4, 1 / 16, 1 / 8)
    low = biseg_roi_class_logits(*(t.to(dtype) for t in (coarse, fine, prior, rois)), 42, 7, 9, 4, 1 / 16, 1 / 8)
    torch.testing.assert_close(low.float(), ref, rtol=tol, atol=tol)
