#!/usr/bin/env python
"""Inference speed of exported models: eager vs TorchScript vs ExportedProgram vs AOTInductor vs
ONNX Runtime, and the whole model in one AOTInductor package (``aoti_whole``).

For FCIS and BiSeg (the coco128 CPU configs, C = 80, random weights with seed 0: speed needs no
checkpoint), each exported in the formats of ``tools/export_model.py`` (``--formats``; ONNX needs
onnxruntime, onnx and onnxscript, and runs with torch's thread count), then all of them run
**interleaved** image by image on the same COCO images at shorter side 600 (a shared VM drifts
in speed between back-to-back runs; interleaving moves all variants alike). Each exported model
runs the same post-processing after its graph (instfcn_d2.deploy); its outputs are checked equal
to the eager model's on every image. Prints a table of s / image and the ratios to eager, and
draws them (``--out``).

  python tools/benchmark_export.py --images 4 --out docs/benchmark_export.png
  # a quick check of the ONNX Runtime column, without AOTInductor's minutes of compiling
  python tools/benchmark_export.py --images 1 --short-side 160 --max-size 200 --models "FCIS R18" \
      --formats torchscript onnx
"""
import argparse
import os
import sys
import tempfile
import time

import torch

from instfcn_d2.benchmark import build, device_description, find_image_dir, image_paths, load_inputs

MODELS = {
    "FCIS R18": "configs/coco128/fcis_R18_cpu.yaml",
    "BiSeg R18 fused (7, 9)": "configs/coco128/biseg_fused_7_9_R18_cpu.yaml",
}
#: the variants: each graph format of export_model.py, and the whole model in one package (--whole)
FORMATS = ("torchscript", "exported_program", "aoti", "onnx", "aoti_whole")
TITLES = {"torchscript": "TorchScript", "exported_program": "ExportedProgram", "aoti": "AOTInductor", "onnx": "ONNX Runtime",
          "aoti_whole": "AOTInductor, whole model"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--images", type=int, default=4, help="timed images (one more is the warm-up)")
    p.add_argument("--short-side", type=int, default=600)
    p.add_argument("--max-size", type=int, default=1000)
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    p.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS), help="the exported formats to run")
    p.add_argument("--out", help="PNG bar chart of s / image")
    args = p.parse_args(argv)
    formats = [f for f in FORMATS if f in args.formats]

    import instfcn_d2  # noqa: F401
    from instfcn_d2.deploy import load
    from instfcn_d2.export import dense_graph_for, export_model
    from instfcn_d2.export.verify import compare_with_eager

    paths = image_paths(find_image_dir(), args.images + 1)
    rows, graph_rows = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            cfg, model = build(MODELS[name], ["INPUT.MIN_SIZE_TEST", str(args.short_side), "INPUT.MAX_SIZE_TEST", str(args.max_size)], "cpu")
            inputs = load_inputs(paths, cfg.INPUT.FORMAT, args.short_side, args.max_size)
            runners = {"eager": lambda x, m=model: m([{"image": x["image"], "height": x["height"], "width": x["width"]}])}
            # the graph alone (what compiling can speed up): eager's dense part, and each artefact's graph
            graph = dense_graph_for(model).eval()
            graph_runners = {"eager": lambda x, g=graph: g(x["image"].contiguous())}
            deployed = {}
            for fmt in formats:
                start = time.perf_counter()
                print(f"[{name}] exporting {fmt} ...", flush=True)
                whole = fmt.endswith("_whole")
                export_model(model, fmt.replace("_whole", ""), inputs[0]["image"], os.path.join(tmp, f"{name}_{fmt}"),
                             input_format=cfg.INPUT.FORMAT, whole=whole)
                deployed[fmt] = load(os.path.join(tmp, f"{name}_{fmt}"))
                print(f"[{name}] {fmt} exported in {time.perf_counter() - start:.0f} s", flush=True)
                runners[fmt] = lambda x, d=deployed[fmt]: d(x["image"], (x["height"], x["width"]))
                # a whole model has no graph apart from its post-processing
                graph_runners[fmt] = (lambda x: None) if whole else (lambda x, d=deployed[fmt]: d.run_graph(x["image"]))
            times = {k: [] for k in runners}
            graph_times = {k: [] for k in runners}
            for i, x in enumerate(inputs):
                for fmt in formats:  # outputs equal to eager's, on every image
                    report = compare_with_eager(model, deployed[fmt], x["image"], (x["height"], x["width"]))
                    if not report.equal:
                        print(f"[{name}] {fmt} differs from eager on {x['path']}: {report}")
                for key, run in runners.items():
                    with torch.no_grad():
                        t = time.perf_counter()
                        run(x)
                        dt = time.perf_counter() - t
                    with torch.no_grad():
                        t = time.perf_counter()
                        graph_runners[key](x)
                        dg = time.perf_counter() - t
                    if i > 0:  # the first image warms up
                        times[key].append(dt)
                        graph_times[key].append(dg)
                print(f"[{name}] image {i} {tuple(x['image'].shape[1:])}: " + ", ".join(
                    f"{k} {times[k][-1]:.3f} s" for k in runners if i > 0), flush=True)
            rows[name] = {k: sum(v) / len(v) for k, v in times.items()}
            graph_rows[name] = {k: sum(v) / len(v) for k, v in graph_times.items()}

    print(f"\n{device_description('cpu')}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.images} images at shorter side {args.short_side} (max {args.max_size}), batch 1\n")
    # the ratio column: eager over the fastest exported format
    print("| model | eager s/img | " + " | ".join(TITLES[f] for f in formats) + " | eager / fastest |")
    print("|---|---:|" + "---:|" * len(formats) + "---:|")
    for name, r in rows.items():
        fastest = min(formats, key=lambda f: r[f]) if formats else "eager"
        print(f"| {name} | {r['eager']:.3f} | " + " | ".join(f"{r[f]:.3f} ({r['eager'] / r[f]:.2f}x)" for f in formats)
              + f" | **{r['eager'] / r[fastest]:.2f}x** ({TITLES.get(fastest, fastest)}) |")
    print("\nThe graph alone (normalisation, trunk, RPN head, maps), s / image:\n")
    print("| model | eager | " + " | ".join(TITLES[f] for f in formats) + " | graph share of eager |")
    print("|---|---:|" + "---:|" * len(formats) + "---:|")
    for name, g in graph_rows.items():
        cells = ["-" if f.endswith("_whole") else f"{g[f]:.3f} ({g['eager'] / g[f]:.2f}x)" for f in formats]
        print(f"| {name} | {g['eager']:.3f} | " + " | ".join(cells) + f" | {g['eager'] / rows[name]['eager']:.0%} |")
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        keys = ["eager", *formats]
        fig, ax = plt.subplots(figsize=(7, 3.5))
        width = 0.8 / len(keys)
        for j, k in enumerate(keys):
            ax.bar([i + j * width for i in range(len(rows))], [r[k] for r in rows.values()], width, label=TITLES.get(k, k))
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))], list(rows))
        ax.set_ylabel("s / image (CPU)")
        ax.set_title(f"Exported models, shorter side {args.short_side}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.out, dpi=120)
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
