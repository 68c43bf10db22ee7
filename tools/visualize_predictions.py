#!/usr/bin/env python
"""Draw a model's predicted masks over dataset images (next to the ground truth) as PNGs.

  python tools/visualize_predictions.py --config-file CFG --output OUT/vis \
      MODEL.WEIGHTS OUT/model_final.pth

``MODEL.WEIGHTS`` is required (a random model's masks mislead; ``--allow-random-weights`` draws
them anyway) and loaded strictly: a checkpoint that does not fit the model built from the config
is an error naming the file and the parameters, not a warning.

Uses detectron2's ``DefaultPredictor`` (with that strict load) and ``Visualizer``. Writes one
``<image>_pred_vs_gt.png`` per image (left: prediction, right: ground truth) and, for models that
also predict semantic segmentation (BiSeg), ``<image>_sem_seg.png`` (left: the predicted label map,
right: the record's label file when it has one).
"""
import argparse
import os

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.data.detection_utils import read_image
from detectron2.utils.visualizer import ColorMode, Visualizer
from PIL import Image

import instfcn_d2  # noqa: F401  (registers datasets and models)
from instfcn_d2.checkpoint import MissingWeightsError, require_trained_weights
from instfcn_d2.config import get_instfcn_cfg
from instfcn_d2.data.coco_json import apply_coco_json_config
from instfcn_d2.data.semantic_from_instances import semantic_from_annotations
from instfcn_d2.engine import build_predictor


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--dataset", default=None, help="dataset name (default: the config's first DATASETS.TEST)")
    parser.add_argument("--num-images", type=int, default=4, help="images drawn (default: 4)")
    parser.add_argument("--score-thresh", type=float, default=0.5, help="score of the predictions drawn (default: 0.5)")
    parser.add_argument("--output", required=True, help="folder for the PNGs")
    parser.add_argument("--allow-random-weights", action="store_true",
                        help="draw even when MODEL.WEIGHTS is empty (a randomly initialised model: meaningless masks)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides as KEY VALUE pairs (MODEL.WEIGHTS ...)")
    return parser.parse_args(argv)


def visualize(cfg, dataset_name, num_images, score_thresh, output_dir):
    """Returns the list of PNG paths written."""
    predictor = build_predictor(cfg)  # before any file is written: a checkpoint that does not fit stops here
    os.makedirs(output_dir, exist_ok=True)
    metadata = MetadataCatalog.get(dataset_name)
    records = DatasetCatalog.get(dataset_name)[:num_images]
    written = []
    for i, record in enumerate(records):
        bgr = read_image(record["file_name"], format="BGR")
        outputs = predictor(bgr)
        instances = outputs["instances"].to("cpu")
        instances = instances[instances.scores >= score_thresh]
        rgb = bgr[:, :, ::-1]
        pred = Visualizer(rgb, metadata, scale=2.0, instance_mode=ColorMode.IMAGE).draw_instance_predictions(instances)
        # Instances only: records may also carry a semantic label file, which would be drawn too.
        gt_record = {k: v for k, v in record.items() if k != "sem_seg_file_name"}
        gt = Visualizer(rgb, metadata, scale=2.0).draw_dataset_dict(gt_record)
        stem = os.path.splitext(os.path.basename(record["file_name"]))[0]
        path = os.path.join(output_dir, f"{stem}_pred_vs_gt.png")
        Image.fromarray(_side_by_side(pred.get_image(), gt.get_image())).save(path)
        written.append(path)
        if "sem_seg" in outputs:
            path = os.path.join(output_dir, f"{stem}_sem_seg.png")
            Image.fromarray(_semantic_panel(rgb, outputs["sem_seg"], record, metadata)).save(path)
            written.append(path)
        print(f"[visualize] {i + 1}/{len(records)} {path}: {len(instances)} instances >= {score_thresh}", flush=True)
    return written


def _side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    return np.concatenate([left, np.full((left.shape[0], 8, 3), 255, np.uint8), right], axis=1)


def _semantic_panel(rgb: np.ndarray, sem_seg, record: dict, metadata) -> np.ndarray:
    """The predicted label map (``argmax`` of ``sem_seg`` ``(C+1, H, W)``) drawn over the image, next
    to the record's label file, or to the labels derived from its instance annotations as BiSeg
    trains on them without a file (instfcn_d2.data.semantic_from_instances; crowd regions blank)."""
    if metadata.get("stuff_classes", None) is None:  # an instance dataset: 0 background, c + 1 class c
        metadata = Metadata(name=metadata.name, stuff_classes=["background"] + list(metadata.get("thing_classes", [])))
    labels = sem_seg.argmax(dim=0).to("cpu").numpy()
    pred = Visualizer(rgb, metadata, scale=2.0).draw_sem_seg(labels, alpha=0.6).get_image()
    truth = Visualizer(rgb, metadata, scale=2.0)
    if record.get("sem_seg_file_name"):
        gt = np.asarray(Image.open(record["sem_seg_file_name"]))
        right = truth.draw_sem_seg(gt, alpha=0.6).get_image()
    elif record.get("annotations") and all("segmentation" in a for a in record["annotations"]):
        gt = semantic_from_annotations(record["annotations"], rgb.shape[:2])
        right = truth.draw_sem_seg(gt, alpha=0.6).get_image()
    else:
        right = truth.output.get_image()
    return _side_by_side(pred, right)


def main(argv=None):
    args = parse_args(argv)
    cfg = get_instfcn_cfg(args.config_file, args.opts)
    for line in apply_coco_json_config(cfg):  # DATASETS.COCO_JSON_* (e.g. in OUTPUT_DIR/config.yaml)
        print(f"[visualize] {line}", flush=True)
    cfg.freeze()
    try:
        require_trained_weights(cfg, args.allow_random_weights, tool="visualize_predictions.py")
    except MissingWeightsError as e:
        raise SystemExit(str(e)) from None
    dataset = args.dataset or cfg.DATASETS.TEST[0]
    return visualize(cfg, dataset, args.num_images, args.score_thresh, args.output)


if __name__ == "__main__":
    main()
