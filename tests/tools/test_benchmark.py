"""instfcn_d2/benchmark.py (the benchmark tools' shared code): stage times are exclusive, so nested
stages never count twice; models run interleaved."""
import types

import pytest
import torch

from instfcn_d2 import benchmark


class _Clock:
    """A clock the test moves by hand: the stage times are then exact, whatever the machine's speed."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


class _Outer(torch.nn.Module):
    def __init__(self, clock):
        super().__init__()
        self.clock = clock
        self.inner = torch.nn.Identity()

    def forward(self, x):
        self.clock.sleep(5)
        return self.helper(self.inner(x))

    def helper(self, x):
        self.clock.sleep(3)
        return x


def test_nested_stages_get_exclusive_times_that_sum_to_the_total():
    clock = _Clock()
    model = _Outer(clock)
    timer = benchmark.StageTimer("cpu")
    timer.now = clock  # the timer reads the test's clock instead of time.perf_counter
    timer.hook_module(model, "outer")
    timer.wrap_attr(model, "helper", "helper")
    timer.hook_module(model.inner, "inner")
    # a pre-hook registered after the timer's runs inside the "inner" stage
    model.inner.register_forward_pre_hook(lambda _m, _i: clock.sleep(2))
    start = clock()
    model(torch.zeros(1))
    total = clock() - start
    t = timer.times
    assert total == 10
    assert dict(t) == {"helper": 3, "inner": 2, "outer": 5}  # outer excludes helper's 3 s and inner's 2 s
    assert sum(t.values()) == total
    # a second forward adds to each stage
    model(torch.zeros(1))
    assert dict(t) == {"helper": 6, "inner": 4, "outer": 10}
    timer.remove()
    assert "helper" not in vars(model)  # the wrapper is gone: the class method is back
    timer.reset()
    model(torch.zeros(1))
    assert dict(timer.times) == {}


def test_the_timer_reads_the_clock_once_at_each_stage_entry_and_exit(monkeypatch):
    """The real clock: ``now`` is time.perf_counter, called twice per timed stage."""
    calls = []
    fake_time = types.SimpleNamespace(perf_counter=lambda: calls.append(1) or float(len(calls)))
    monkeypatch.setattr(benchmark, "time", fake_time)
    timer = benchmark.StageTimer("cpu")
    module = torch.nn.Identity()
    timer.hook_module(module, "m")
    module(torch.zeros(1))
    timer.remove()
    assert len(calls) == 2 and dict(timer.times) == {"m": 1.0}


def test_run_models_interleaves_images_and_skips_the_warm_up(monkeypatch):
    """Image 1 on every model, then image 2 on every model...: a machine drifting in speed during
    the run moves all models alike. The first image of each model is not timed."""
    calls = []

    class _Model(torch.nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, batch):
            calls.append((self.name, batch[0]["path"]))
            return [{"instances": [0] * len(self.name)}]

    class _Cfg:
        class INPUT:
            FORMAT = "BGR"

    monkeypatch.setattr(benchmark, "build", lambda config, opts, device: (_Cfg, _Model(config)))
    fake_inputs = lambda paths, fmt, short, longest: [{"path": p, "image": torch.zeros(3, 4, 5)} for p in paths]  # noqa: E731
    monkeypatch.setattr(benchmark, "load_inputs", fake_inputs)

    class _Args:
        device, short_side, max_size = "cpu", 4, 5

    specs = [("A", "a", []), ("BB", "bb", [])]
    results = benchmark.run_models(specs, ["w.jpg", "1.jpg", "2.jpg"], _Args, lambda model, name, timer: None)
    assert calls == [("a", "w.jpg"), ("bb", "w.jpg"), ("a", "1.jpg"), ("bb", "1.jpg"), ("a", "2.jpg"), ("bb", "2.jpg")]
    assert [r.name for r in results] == ["A", "BB"]
    assert [len(r.totals) for r in results] == [2, 2] and results[1].detections == [2, 2]


@pytest.mark.parametrize("name,tool_name,stages", [
    ("fcis", "benchmark_fcis", {"trunk", "rpn", "score maps", "assemble", "nms", "voting", "paste"}),
    ("biseg", "benchmark_fcis", {"trunk", "rpn", "score maps", "semantic", "assemble", "nms", "voting", "paste"}),
    ("instance_fcn", "benchmark_instance_fcn", {"trunk", "preprocess", "branches", "assemble", "paste+nms"}),
])
def test_the_tools_time_every_stage_of_the_current_models(name, tool_name, stages):
    """The benchmark tools hook the models' own methods and modules by name: each stage they report
    must still be found (a renamed or moved function would silently drop its stage)."""
    from detectron2.modeling import build_model

    from conftest import load_tool
    from tiny_models import tiny_checkpoint_cfg, tiny_checkpoint_image

    tool = load_tool(tool_name)
    cfg = tiny_checkpoint_cfg(name, "MODEL.WEIGHTS", "")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    timer = benchmark.StageTimer("cpu")
    label = {"fcis": "FCIS R18", "biseg": "BiSeg R18", "instance_fcn": "InstanceFCN R18"}[name]
    tool.instrument(model, label, timer)
    image = tiny_checkpoint_image().float()
    try:
        with torch.no_grad():
            model([{"image": image, "height": image.shape[1], "width": image.shape[2]}])
    finally:
        timer.remove()
    assert set(timer.times) == stages
    assert all(seconds > 0 for seconds in timer.times.values())
