#!/usr/bin/env python
"""Export a trained model (InstanceFCN, FCIS, BiSeg, detectron2's Mask R-CNN) into a folder that runs
without detectron2, and optionally evaluate the exported model as ``train_net.py --eval-only``
evaluates the original.

detectron2's ``tools/deploy/export_model.py`` for this project's models. The folder holds the
model's dense part as a graph (``--format``) and ``deploy.json``; ``instfcn_d2.deploy.load(folder)``
runs it with the model's post-processing, needing only torch, torchvision and instfcn_d2's ops:

  torchscript       model.ts        torch.jit.trace; any image size
  exported_program  model.pt2       torch.export with dynamic height and width (32..4096 px)
  aoti              model_aoti.pt2  that program compiled ahead of time by AOTInductor (needs a C++
                                    compiler at export time only)
  onnx              model.onnx      torch.onnx.export (dynamo) with dynamic height and width, run by
                                    ONNX Runtime (pip install onnxruntime onnx onnxscript)

The graph ends at the dense maps in every format; the post-processing after it is instfcn_d2's
Python. ``--whole`` (FCIS and BiSeg; ``exported_program`` or ``aoti``) puts everything in one graph
instead, image to detections (``whole.pt2`` / ``whole_aoti.pt2``): the ``aoti`` one also runs from
C++ without Python (tools/deploy/). InstanceFCN and Mask R-CNN export as graphs only. Mask R-CNN is three graphs in the chosen format: ``model.*`` (image -> features and RPN outputs),
``box_head.*`` and ``mask_head.*`` (pooled RoI features -> per-RoI outputs).

Examples (PY=.venv/bin/python)::

  $PY tools/export_model.py --config-file configs/shapes/fcis_R18_cpu.yaml --format aoti \\
      --output output/export/fcis_aoti MODEL.WEIGHTS output/shapes/fcis_R18_cpu/model_final.pth
  # the whole model in one AOTInductor artefact (also for C++: tools/deploy/README.md)
  $PY tools/export_model.py --config-file configs/shapes/fcis_R18_cpu.yaml --format aoti --whole \\
      --output output/export/fcis_whole MODEL.WEIGHTS output/shapes/fcis_R18_cpu/model_final.pth
  # the same, then the exported model evaluated on DATASETS.TEST (COCO AP, as --eval-only)
  $PY tools/export_model.py --config-file configs/shapes/biseg_fused_7_9_R18_cpu.yaml \\
      --format exported_program --output output/export/biseg_ep --run-eval \\
      MODEL.WEIGHTS output/main_job/model_final.pth

Config overrides (``KEY VALUE ...``, ``MODEL.WEIGHTS`` among them) come last, after the flags, as
in detectron2's ``export_model.py`` and ``train_net.py``. ``MODEL.WEIGHTS`` is required
(``--allow-random-weights`` exports a random model on purpose) and loaded strictly: a checkpoint
that does not fit the model built from the config is an error naming the file and the parameters.

``--sample-image`` (default: the first image of the first ``DATASETS.TEST``) is read and resized
as ``DefaultPredictor`` does (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``) and used to trace or
export; a second image of another size is then run through the exported model and compared with
the original, and the tool stops with an error if they differ.
"""
import argparse
import logging
import os
import sys
import time

import torch

import instfcn_d2  # noqa: F401  (registers datasets and models)
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

from instfcn_d2.checkpoint import MissingWeightsError, load_trained_weights, require_trained_weights
from instfcn_d2.config import get_instfcn_cfg
from instfcn_d2.data.coco_json import apply_coco_json_config
from instfcn_d2.deploy import FORMATS, load
from instfcn_d2.deploy.artefact import WHOLE_FORMATS, graph_files, read_metadata
from instfcn_d2.engine import Trainer
from instfcn_d2.export import export_model
from instfcn_d2.export.evaluation import DeployedModelAdapter
from instfcn_d2.export.verify import compare_with_eager
from instfcn_d2.export.whole import WHOLE_KINDS

logger = logging.getLogger("instfcn_d2.export_model")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--config-file", required=True, metavar="FILE", help="the model's config")
    p.add_argument("--format", choices=FORMATS, default="exported_program", help="the graph's format")
    p.add_argument("--whole", action="store_true",
                   help="one graph from the image to the detections (FCIS, BiSeg; exported_program or aoti)")
    p.add_argument("--output", required=True, metavar="DIR", help="the folder to write (created)")
    p.add_argument("--sample-image", metavar="FILE", help="image to trace / export with (default: the first test image)")
    p.add_argument("--run-eval", action="store_true", help="evaluate the exported model on the config's DATASETS.TEST")
    p.add_argument("--allow-random-weights", action="store_true", help="export even when MODEL.WEIGHTS is empty")
    # Earlier releases took the overrides after --opts (as demo.py does): still accepted, not shown.
    p.add_argument("--opts", dest="legacy_opts", nargs=argparse.REMAINDER, default=[], help=argparse.SUPPRESS)
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                   help="config overrides as KEY VALUE pairs, after the flags (e.g. MODEL.WEIGHTS model_final.pth)")
    return p


def setup_cfg(args):
    opts = list(args.opts) + list(getattr(args, "legacy_opts", None) or [])
    cfg = get_instfcn_cfg(args.config_file, opts + ["MODEL.DEVICE", "cpu"])
    apply_coco_json_config(cfg)
    cfg.freeze()
    try:
        require_trained_weights(cfg, args.allow_random_weights, tool="export_model.py",
                                example="MODEL.WEIGHTS path/to/model_final.pth")
    except MissingWeightsError as e:
        raise SystemExit(str(e)) from None
    return cfg


def test_images(cfg, sample_path):
    """Two images at the network's input resolution, as the test mapper makes them: the sample
    (``--sample-image`` or the first test image) and a second one of another size."""
    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)

    def prepared(path):
        image = utils.read_image(path, format=cfg.INPUT.FORMAT)
        out = resize.get_transform(image).apply_image(image)
        return torch.as_tensor(out.astype("float32").transpose(2, 0, 1)), image.shape[:2]

    from detectron2.data import DatasetCatalog

    paths = [sample_path] if sample_path else []
    if not cfg.DATASETS.TEST:
        if not paths:
            raise SystemExit("export_model.py: no --sample-image and no DATASETS.TEST to take one from")
        return [prepared(paths[0])]
    dataset = DatasetCatalog.get(cfg.DATASETS.TEST[0])
    first = prepared(paths[0] if paths else dataset[0]["file_name"])
    # another image of another size, to catch a graph specialised to the first: the next test
    # image, cropped to 3/4 of its sides (test sets of one image size exist)
    second, second_size = prepared(dataset[1]["file_name"] if len(dataset) > 1 and not paths else dataset[0]["file_name"])
    h, w = second.shape[-2:]
    crop = second[:, : max(32, h * 3 // 4), : max(32, w * 3 // 4)].contiguous()
    scale = second_size[0] / h
    return [first, (crop, (round(crop.shape[-2] * scale), round(crop.shape[-1] * scale)))]


def main(argv=None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.whole and args.format not in WHOLE_FORMATS:
        parser.error(f"--whole exports to {' or '.join(WHOLE_FORMATS)}, not --format {args.format}")
    setup_logger(name="instfcn_d2")
    setup_logger(name="detectron2", abbrev_name="d2")
    if args.sample_image and not os.path.isfile(args.sample_image):
        raise SystemExit(f"export_model.py: --sample-image {args.sample_image} not found")
    cfg = setup_cfg(args)
    if args.whole and cfg.MODEL.META_ARCHITECTURE not in WHOLE_KINDS:
        raise SystemExit(
            f"export_model.py: --whole: a {cfg.MODEL.META_ARCHITECTURE} exports as a graph only (its "
            f"post-processing runs in Python after it); the models that export whole: {', '.join(WHOLE_KINDS)}"
        )
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        load_trained_weights(model, cfg.MODEL.WEIGHTS)
    model.eval()
    images = test_images(cfg, args.sample_image)
    names = MetadataCatalog.get(cfg.DATASETS.TEST[0]).get("thing_classes", None) if cfg.DATASETS.TEST else None
    start = time.perf_counter()
    path = export_model(
        model,
        args.format,
        images[0][0],
        args.output,
        input_format=cfg.INPUT.FORMAT,
        class_names=names,
        test_resize=(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST),
        whole=args.whole,
    )
    size = sum(os.path.getsize(os.path.join(args.output, f)) for f in graph_files(read_metadata(args.output)).values())
    print(f"[export_model] {args.format}: {path} (graphs {size / 2**20:.1f} MiB, {time.perf_counter() - start:.0f} s)")
    deployed = load(args.output)
    for image, original_size in images:
        report = compare_with_eager(model, deployed, image, tuple(original_size))
        print(f"[export_model] check on a {tuple(image.shape[1:])} image: {report}")
        if not report.equal:
            raise SystemExit(f"export_model.py: the exported model differs from the original: {report}")
    if args.run_eval:
        for name, results in evaluate_exported(cfg, deployed, args.output).items():
            print(f"[export_model] {name}, exported {args.format} model:")
            print_csv_format(results)
    return 0


def evaluate_exported(cfg, deployed, output_dir: str) -> dict:
    """``{dataset: results}`` of the exported model on each ``DATASETS.TEST``, with the test
    loader and evaluators of ``train_net.py --eval-only`` (``Trainer.test``)."""
    adapter = DeployedModelAdapter(deployed)
    out = {}
    for name in cfg.DATASETS.TEST:
        loader = Trainer.build_test_loader(cfg, name)
        evaluator = Trainer.build_evaluator(cfg, name, os.path.join(output_dir, "inference", name))
        out[name] = inference_on_dataset(adapter, loader, evaluator)
    return out


if __name__ == "__main__":
    sys.exit(main())
