"""What the benchmark tools share: test images, model building, per-stage timing, the timed loop.

Used by ``tools/benchmark_instance_fcn.py``, ``tools/benchmark_fcis.py`` and
``tools/benchmark_export.py`` (``from instfcn_d2.benchmark import ...``). Nothing in the package
imports it: it is the tools' code, kept here so that they import it without path changes. Relative
config paths and the default plot folder (``docs/``) are those of the repository that holds the
package (an editable install, as ``dev/setup_env.sh`` makes).

Stages are timed inside the real ``model(inputs)`` call, by forward hooks on modules and by
wrapping methods / module-level functions. Stages may nest (FCIS's score maps are computed lazily
inside the assembling call): each stage gets its *exclusive* time, i.e. a stage's time excludes
the time of the stages timed inside it, so the stages of one forward never count a second twice.
"""
import argparse
import dataclasses
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch

#: The repository holding the package: relative config paths and ``docs/`` are taken from it.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Result:
    name: str
    totals: List[float] = field(default_factory=list)  # seconds per timed image
    stages: Dict[str, List[float]] = field(default_factory=lambda: defaultdict(list))
    detections: List[int] = field(default_factory=list)

    @staticmethod
    def mean(values: List[float]) -> float:
        return sum(values) / len(values) if values else float("nan")

    @property
    def total(self) -> float:
        return self.mean(self.totals)

    def stage(self, name: str) -> float:
        return self.mean(self.stages.get(name, []))


class StageTimer:
    """Exclusive wall time per stage of one forward; synchronises CUDA around each stage."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.times: Dict[str, float] = defaultdict(float)
        self._stack: List[List] = []  # [stage, start, time of the stages nested inside]
        self._undo: List[Callable[[], None]] = []

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _enter(self, stage: str) -> None:
        self._stack.append([stage, self.now(), 0.0])

    def _exit(self) -> None:
        stage, start, nested = self._stack.pop()
        elapsed = self.now() - start
        self.times[stage] += elapsed - nested
        if self._stack:
            self._stack[-1][2] += elapsed

    def hook_module(self, module: torch.nn.Module, stage: str) -> None:
        handles = [
            module.register_forward_pre_hook(lambda _m, _i: self._enter(stage)),
            module.register_forward_hook(lambda _m, _i, _o: self._exit()),
        ]
        self._undo.append(lambda: [h.remove() for h in handles])

    def wrap_attr(self, owner, attr: str, stage: str) -> None:
        """Time ``owner.attr(...)`` calls (a bound method on an instance, a frozen dataclass's
        included, or a module's function)."""
        original = getattr(owner, attr)
        had_own = attr in vars(owner)
        # a frozen dataclass (the models' readers) refuses setattr; its instance dict takes it
        frozen = dataclasses.is_dataclass(owner) and not isinstance(owner, type)
        set_attr = object.__setattr__ if frozen else setattr
        del_attr = object.__delattr__ if frozen else delattr

        def timed(*args, **kwargs):
            self._enter(stage)
            try:
                return original(*args, **kwargs)
            finally:
                self._exit()

        set_attr(owner, attr, timed)
        self._undo.append(lambda: set_attr(owner, attr, original) if had_own else del_attr(owner, attr))

    def reset(self) -> None:
        self.times.clear()
        self._stack.clear()

    def remove(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()


# ---- images ----------------------------------------------------------------------------------
def find_image_dir() -> str:
    # detectron2's convention: $DETECTRON2_DATASETS, default ./datasets
    candidates = [os.path.join(os.environ.get("DETECTRON2_DATASETS", os.path.join(REPO, "datasets")), "coco128", "val2017")]
    for c in candidates:
        if os.path.isdir(c):
            return os.path.normpath(c)
    raise FileNotFoundError(
        "no coco128/val2017 image folder found; looked in: " + ", ".join(candidates) + " (set $DETECTRON2_DATASETS)"
    )


def image_paths(image_dir: str, count: int) -> List[str]:
    """The first ``count`` images of ``image_dir`` (sorted), or exit naming the folder."""
    paths = sorted(os.path.join(image_dir, f) for f in os.listdir(image_dir) if f.lower().endswith((".jpg", ".png")))
    if len(paths) < count:
        sys.exit(f"{image_dir}: {len(paths)} images, need {count} (1 warm-up + --images)")
    return paths[:count]


def load_inputs(paths: List[str], fmt: str, short_side: int, max_size: int) -> List[Dict]:
    """detectron2 test-time inputs: ``image`` ``(3, H, W)`` float32 in ``fmt`` resized as at test
    time, ``height`` / ``width`` of the original image (results are pasted at that size, as in
    detectron2's evaluation)."""
    from detectron2.data import transforms as T
    from detectron2.data.detection_utils import read_image

    resize = T.ResizeShortestEdge(short_side, max_size)
    inputs = []
    for p in paths:
        img = read_image(p, format=fmt)
        h, w = img.shape[:2]
        img = resize.get_transform(img).apply_image(img)
        inputs.append(
            {"image": torch.as_tensor(img.transpose(2, 0, 1).astype("float32")), "height": h, "width": w, "path": p}
        )
    return inputs


# ---- models ----------------------------------------------------------------------------------
def build(config: str, opts: List[str], device: str):
    """``(cfg, model)`` in eval mode with random weights (seed 0): speed needs no checkpoint."""
    from detectron2.modeling import build_model

    from instfcn_d2.config import get_instfcn_cfg

    cfg = get_instfcn_cfg(os.path.join(REPO, config), ["MODEL.DEVICE", device, "MODEL.WEIGHTS", ""] + opts)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    return cfg, model


def _timed_forward(name: str, model, timer: StageTimer, inp, tag: str, result: Optional[Result]) -> None:
    """One forward of ``model`` on ``inp``, printed; recorded in ``result`` unless it is None (warm-up)."""
    timer.reset()
    t = timer.now()
    with torch.no_grad():
        out = model([inp])
    dt = timer.now() - t
    n = len(out[0]["instances"])
    shape = "x".join(map(str, inp["image"].shape[-2:]))
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in timer.times.items())
    print(f"[{name}] {tag} {os.path.basename(inp['path'])} {shape}: {dt:.2f}s, {n} outputs ({stages})", flush=True)
    if result is not None:
        result.totals.append(dt)
        result.detections.append(n)
        for k, v in timer.times.items():
            result.stages[k].append(v)


def run_models(
    specs: List[Tuple[str, str, List[str]]],
    paths: List[str],
    args,
    instrument: Callable[[torch.nn.Module, str, StageTimer], None],
) -> List[Result]:
    """Build and hook (``instrument(model, name, timer)``) every ``(name, config, opts)`` model,
    then run them on ``paths`` *interleaved*: image 1 on every model, image 2 on every model...
    The first image is a warm-up, the others are timed (``args``: ``device``, ``short_side``,
    ``max_size``). Interleaving makes the ratios between models robust to the machine's speed
    drifting during the run (a shared 2-core VM drifted by 20% between back-to-back runs)."""
    runs = []
    try:
        for name, config, opts in specs:
            t0 = time.perf_counter()
            cfg, model = build(config, opts, args.device)
            print(f"[{name}] built in {time.perf_counter() - t0:.1f}s ({config}, input {cfg.INPUT.FORMAT})", flush=True)
            inputs = load_inputs(paths, cfg.INPUT.FORMAT, args.short_side, args.max_size)
            timer = StageTimer(args.device)
            instrument(model, name, timer)
            runs.append((name, model, inputs, timer, Result(name)))
        for i in range(len(paths)):
            tag = "warm-up" if i == 0 else f"image {i}/{len(paths) - 1}"
            for name, model, inputs, timer, result in runs:
                _timed_forward(name, model, timer, inputs[i], tag, None if i == 0 else result)
    finally:
        for _, _, _, timer, _ in runs:
            timer.remove()
    return [r[-1] for r in runs]


def fmt(x: float) -> str:
    return "—" if x != x else f"{x:.2f}"


def device_description(device: str) -> str:
    import platform

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.machine()}, {torch.get_num_threads()} torch threads"


def model_benchmark_parser(doc: str, default_plot: str) -> argparse.ArgumentParser:
    """The flags every model benchmark takes; ``doc``: the tool's module docstring (first paragraph
    = description, the rest = epilog)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=doc.split("\n\n", 1)[1])  # fmt: skip
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    p.add_argument("--images", type=int, default=3, help="timed images per model, after 1 warm-up image (default 3)")
    p.add_argument("--short-side", type=int, default=600, help="test scale: shorter image side (default 600)")
    p.add_argument("--max-size", type=int, default=1000, help="longest image side (default 1000)")
    p.add_argument("--image-dir", default=None, help="folder of JPEG images (default: coco128/val2017, see above)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    p.add_argument("--out", default=os.path.join(REPO, "docs", default_plot), help="bar plot PNG")
    return p


def run_model_benchmark(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    specs,
    instrument: Callable,
    report: Callable[[List[Result]], Tuple[str, List[str]]],
    plot: Callable[[List[Result], str, str], None],
    title: str,
) -> int:
    """Check the common flags, time ``specs`` (``run_models``), print the table and ratios that
    ``report(results)`` returns and write the plot titled ``title`` + the device."""
    if args.images < 1:
        parser.error("--images must be >= 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available")
    if args.threads:
        torch.set_num_threads(args.threads)

    import instfcn_d2  # noqa: F401  (registers the meta-architectures and backbones)

    image_dir = args.image_dir or find_image_dir()
    paths = image_paths(image_dir, args.images + 1)
    device_desc = device_description(args.device)
    print(f"device: {device_desc}; torch {torch.__version__}; images: {image_dir} "
          f"(warm-up {os.path.basename(paths[0])}, timed {', '.join(os.path.basename(x) for x in paths[1:])}); "
          f"shorter side {args.short_side}, max {args.max_size}", flush=True)  # fmt: skip
    results = run_models(specs, paths, args, instrument)
    table, ratio_lines = report(results)
    print()
    print(table)
    print()
    print("\n".join(ratio_lines))
    plot(results, args.out, f"{title}\n{device_desc}")
    print(f"\nplot: {args.out}")
    return 0
