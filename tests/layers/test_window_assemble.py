"""WindowAssemble: native kernels against the pure-PyTorch references and hand-computed values."""
import pytest
import torch

from instfcn_d2.layers import WindowAssemble, window_assemble
from instfcn_d2.layers.reference import window_assemble_reference

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _positions(n, batch, height, width, m, generator, outside=3):
    """``(n, 3)`` int64 window corners, some partly or wholly outside the map."""
    return torch.stack(
        [
            torch.randint(batch, (n,), generator=generator),
            torch.randint(-m - outside, height + outside, (n,), generator=generator),
            torch.randint(-m - outside, width + outside, (n,), generator=generator),
        ],
        dim=1,
    )


def test_hand_computed_window():
    """k = 2, m = 3: cells split the window as rows/cols {0, 1} | {2}."""
    x = torch.arange(4 * 4 * 5, dtype=torch.float32).reshape(1, 4, 4, 5)
    y, xx = 1, 2
    out = window_assemble(x, 3, 2, torch.tensor([[0, y, xx]]))
    assert out.shape == (1, 3, 3)
    expected = torch.tensor(
        [[x[0, c, y + u, xx + v].item() for v, c in zip(range(3), ((0, 0, 1) if u < 2 else (2, 2, 3)))] for u in range(3)]
    )
    torch.testing.assert_close(out[0], expected)
    # A listed window hanging over the top-left corner reads 0 there.
    listed = window_assemble(x, 3, 2, torch.tensor([[0, -1, -2]]))
    assert listed[0, 0].abs().sum() == 0 and listed[0, :, :2].abs().sum() == 0
    assert listed[0, 1, 2] == x[0, 1, 0, 0] and listed[0, 2, 2] == x[0, 3, 1, 0]


@pytest.mark.parametrize("h,w", [(4, 30), (30, 4), (0, 0)])
def test_map_smaller_than_the_window(h, w):
    """Windows over a map smaller than one window (or an empty map) read what exists, 0 elsewhere."""
    g = torch.Generator().manual_seed(h + w)
    x = torch.randn(2, 9, h, w, generator=g, requires_grad=True)
    pos = torch.tensor([[0, 0, 0], [1, -2, -1], [1, 1, 3]])
    out = window_assemble(x, 5, 3, pos)
    assert out.shape == (3, 5, 5)
    torch.testing.assert_close(out, window_assemble_reference(x, pos, 5, 3), rtol=0, atol=0)
    out.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.smoke
@pytest.mark.parametrize("k,m,h,w", [(5, 21, 30, 25), (3, 7, 7, 9), (2, 5, 12, 6), (1, 1, 1, 1), (4, 4, 5, 4)])
def test_listed_matches_reference(k, m, h, w):
    g = torch.Generator().manual_seed(k * 10 + m)
    x = torch.randn(2, k * k, h, w, generator=g)
    pos = _positions(60, 2, h, w, m, g)
    out = window_assemble(x, m, k, pos)
    assert out.shape == (60, m, m)
    torch.testing.assert_close(out, window_assemble_reference(x, pos, m, k), rtol=0, atol=0)
    # Windows that fit are the map's unfolded windows, the group picked per pixel.
    inside = (pos[:, 1] >= 0) & (pos[:, 1] <= h - m) & (pos[:, 2] >= 0) & (pos[:, 2] <= w - m)
    cells = torch.arange(m) * k // m
    group = cells[:, None] * k + cells[None, :]
    for (b, y, xx), win in zip(pos[inside].tolist(), out[inside]):
        patch = x[b, :, y : y + m, xx : xx + m]
        torch.testing.assert_close(win, patch.gather(0, group[None])[0], rtol=0, atol=0)
    assert window_assemble(x, m, k, pos[:0]).shape == (0, m, m)


def test_int32_positions_and_non_contiguous_input():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 12, 14, 9, generator=g).permute(0, 3, 1, 2)  # (2, 9, 12, 14), not contiguous
    assert not x.is_contiguous()
    pos = _positions(20, 2, 12, 14, 5, g)
    torch.testing.assert_close(window_assemble(x, 5, 3, pos.int()), window_assemble_reference(x, pos, 5, 3))
    torch.testing.assert_close(window_assemble(x.contiguous(), 5, 3, pos), window_assemble_reference(x, pos, 5, 3))


@pytest.mark.smoke
@pytest.mark.parametrize("num_windows", [80, 1000])
@pytest.mark.parametrize("k,m,h,w", [(5, 21, 26, 23), (3, 4, 40, 30), (2, 2, 3, 3)])
def test_backward_matches_reference(num_windows, k, m, h, w):
    """Few windows, and many that overlap: every input pixel sums the gradients of its copies."""
    g = torch.Generator().manual_seed(3 + k + num_windows)
    x = torch.randn(2, k * k, h, w, generator=g, dtype=torch.float64, requires_grad=True)
    pos = _positions(num_windows, 2, h, w, m, g)
    out = window_assemble(x, m, k, pos)
    ref = window_assemble_reference(x, pos, m, k)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64)
    (gx,) = torch.autograd.grad(out, x, grad)
    (gr,) = torch.autograd.grad(ref, x, grad)
    torch.testing.assert_close(gx, gr, rtol=1e-12, atol=1e-12)


def test_cpu_backward_is_deterministic_across_thread_counts():
    g = torch.Generator().manual_seed(8)
    pos = _positions(300, 2, 40, 30, 4, g)
    grad = torch.randn(300, 4, 4, generator=g)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(torch.ops.instfcn_d2.window_assemble_backward(grad, pos, 4, 3, 2, 40, 30))
    finally:
        torch.set_num_threads(threads)
    for result in results[1:]:
        assert torch.equal(result, results[0])


def test_gradcheck():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 9, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    pos = torch.tensor([[0, -2, 1], [1, 1, 1], [1, 2, 3], [0, 3, 4], [1, 1, 1]])  # overlapping, repeated

    assert torch.autograd.gradcheck(lambda t: window_assemble(t, 4, 3, pos), (x,))
    assert torch.autograd.gradgradcheck(lambda t: window_assemble(t, 4, 3, pos), (x,), fast_mode=True)


def test_module():
    layer = WindowAssemble()
    assert (layer.window_size, layer.group_size) == (21, 5)
    assert repr(layer) == "WindowAssemble(window_size=21, group_size=5)"
    x = torch.randn(1, 25, 22, 23)
    assert layer(x, torch.tensor([[0, 1, 2]])).shape == (1, 21, 21)
    with pytest.raises(TypeError, match="positions must be a \\(P, 3\\) integer tensor, got NoneType"):
        layer(x, None)


def test_errors():
    x = torch.randn(1, 9, 6, 6)
    pos = torch.tensor([[0, 1, 1]])
    with pytest.raises(ValueError, match="k\\*k = 9 channels"):
        window_assemble(torch.randn(1, 8, 6, 6), 4, 3, pos)
    with pytest.raises(ValueError, match="positions must have shape \\(P, 3\\)"):
        window_assemble(x, 4, 3, pos[:, :2])
    with pytest.raises(TypeError, match="positions must be an integer tensor"):
        window_assemble(x, 4, 3, pos.float())
    with pytest.raises(ValueError, match="positions is on meta"):
        window_assemble(x, 4, 3, pos.to("meta"))
    with pytest.raises(ValueError, match="window_size must be >= 1"):
        window_assemble(x, 0, 3, pos)
    with pytest.raises(ValueError, match="group_size must be >= 1"):
        WindowAssemble(4, 0)
    with pytest.raises(ValueError, match="must be <= window_size"):
        window_assemble(x, 2, 3, pos)
    with pytest.raises(TypeError, match="cpu kernel supports"):
        window_assemble(x.half(), 4, 3, pos)
    # The C++ checks, reached without the Python layer.
    with pytest.raises(RuntimeError, match="k\\*k = 9 channels"):
        torch.ops.instfcn_d2.window_assemble(torch.randn(1, 8, 6, 6), pos, 4, 3)
    with pytest.raises(RuntimeError, match="positions must be int64"):
        torch.ops.instfcn_d2.window_assemble(x, pos.int(), 4, 3)
    with pytest.raises(RuntimeError, match="not a batch index in \\[0, 1\\)"):
        torch.ops.instfcn_d2.window_assemble(x, torch.tensor([[1, 0, 0]]), 4, 3)


# ---- CUDA ------------------------------------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_cuda_matches_reference(dtype):
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 25, 40, 37, generator=g).to(dtype)
    pos = _positions(300, 2, 40, 37, 21, g)
    x64 = x.double().requires_grad_()
    tol = {torch.float16: 1e-2, torch.bfloat16: 6e-2}.get(dtype, 1e-6)
    for p in (pos, pos[:0]):
        xc = x.cuda().requires_grad_()
        out = window_assemble(xc, 21, 5, p.cuda())
        ref = window_assemble_reference(x64, p, 21, 5)
        assert out.dtype == dtype
        torch.testing.assert_close(out.double().cpu(), ref, rtol=0, atol=0)  # pure copy: exact
        grad = torch.randn(out.shape, generator=g).to(dtype)
        (gc,) = torch.autograd.grad(out, xc, grad.cuda())
        (gr,) = torch.autograd.grad(ref, x64, grad.double())
        assert gc.dtype == dtype
        torch.testing.assert_close(gc.double().cpu(), gr, rtol=tol, atol=tol)
    with pytest.raises(ValueError, match="positions is on cpu"):
        window_assemble(x.cuda(), 21, 5, pos)
