"""The native ops survive torch.jit.trace, torch.compile (aot_eager, fullgraph) and torch.export."""
import pytest
import torch

from instfcn_d2.layers import PSRoIAssemble, WindowAssemble

ROIS = torch.tensor([[0, 1.3, 2.2, 13.7, 11.1], [1, -3.3, 4.1, 7.7, 20.9], [1, 5.1, 5.3, 5.6, 6.2], [0, 2.0, 3.0, 9.5, 8.0]])
POSITIONS = torch.tensor([[0, -2, 1], [1, 1, 1], [1, 2, 3], [0, 4, 4]])


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 9 * 2, 8, 10, generator=g), torch.randn(2, 9, 8, 10, generator=g)


class _Both(torch.nn.Module):
    """One module using every op, as a model would."""

    def __init__(self):
        super().__init__()
        self.ps = PSRoIAssemble(7, 3, 0.5, 2)
        self.win = WindowAssemble(4, 3)

    def forward(self, ps_maps, rois, win_maps, positions):
        return self.ps(ps_maps, rois), self.win(win_maps, positions)


def _grads(fn, ps_maps, win_maps):
    ps_maps = ps_maps.clone().requires_grad_()
    win_maps = win_maps.clone().requires_grad_()
    outs = fn(ps_maps, ROIS, win_maps, POSITIONS)
    sum(o.square().sum() for o in outs).backward()
    return [o.detach() for o in outs], ps_maps.grad, win_maps.grad


def _assert_same(a, b):
    outs_a, gp_a, gw_a = a
    outs_b, gp_b, gw_b = b
    for x, y in zip(outs_a, outs_b):
        torch.testing.assert_close(x, y)
    torch.testing.assert_close(gp_a, gp_b)
    torch.testing.assert_close(gw_a, gw_b)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the Python shape checks
@pytest.mark.filterwarnings("ignore:.*torch.jit.trace.*is deprecated:FutureWarning")
def test_jit_trace():
    model = _Both().eval()
    ps_maps, win_maps = _inputs(0)
    traced = torch.jit.trace(model, (ps_maps, ROIS, win_maps, POSITIONS), check_trace=False)
    graph = str(traced.inlined_graph)
    for name in ("instfcn_d2::ps_roi_assemble", "instfcn_d2::window_assemble("):
        assert name in graph
    other_ps, other_win = _inputs(1)  # new values: the trace is not a constant
    _assert_same(_grads(traced, other_ps, other_win), _grads(model, other_ps, other_win))


def test_compile_aot_eager_fullgraph():
    torch._dynamo.reset()
    model = _Both()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    ps_maps, win_maps = _inputs(2)
    _assert_same(_grads(compiled, ps_maps, win_maps), _grads(model, ps_maps, win_maps))


@pytest.mark.smoke
def test_export():
    model = _Both().eval()
    ps_maps, win_maps = _inputs(3)
    rois_dim = torch.export.Dim("R", min=2, max=1024)
    ep = torch.export.export(
        model,
        (ps_maps, ROIS, win_maps, POSITIONS),
        dynamic_shapes=({}, {0: rois_dim}, {}, {}),
    )
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert {"instfcn_d2.ps_roi_assemble.default", "instfcn_d2.window_assemble.default"} <= targets
    # The exported program takes a different number of RoIs.
    rois = torch.cat([ROIS, ROIS[:2] + torch.tensor([0, 0.5, 0.5, 0.5, 0.5])])
    for got, want in zip(ep.module()(ps_maps, rois, win_maps, POSITIONS), model(ps_maps, rois, win_maps, POSITIONS)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("op", ["ps_roi_assemble", "window_assemble"])
def test_opcheck(op):
    """torch.library.opcheck: schema, fake kernel and autograd registration are consistent."""
    ps_maps, win_maps = _inputs(4)
    args = {
        "ps_roi_assemble": (ps_maps.double().requires_grad_(), ROIS.double(), 0.5, 7, 3, 2, True),
        "window_assemble": (win_maps.double().requires_grad_(), POSITIONS, 4, 3),
    }[op]
    torch.library.opcheck(getattr(torch.ops.instfcn_d2, op).default, args)
