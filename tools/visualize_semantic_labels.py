#!/usr/bin/env python
"""BiSeg's semantic labels derived from a COCO instances JSON: checked on every image, drawn for some.

  python tools/visualize_semantic_labels.py --json DIR/train.json --image-root DIR/images --output OUT

BiSeg trains its semantic branch on labels derived from the instances where a dataset has no label
files (``instfcn_d2/data/semantic_from_instances.py``: inside an instance its class, where
instances overlap the smaller one wins, crowd regions ignored). This tool recomputes, for every
image of the JSON, each pixel's expected label independently of that function (the class of the
smallest non-crowd instance covering it, the later annotation on equal areas) and counts the
pixels where the two disagree, with the pixels where instances nest or overlap counted apart. It
writes ``<image>_labels.png`` for ``--num-images`` images: left the instances, right the derived
labels, in detectron2's ``Visualizer`` colours. Exits 1 if any pixel disagrees.
"""
import argparse
import json
import os
import sys

import numpy as np
from detectron2.data.catalog import Metadata
from detectron2.data.datasets import load_coco_json
from detectron2.data.detection_utils import read_image
from detectron2.utils.visualizer import Visualizer
from PIL import Image

from instfcn_d2.data.semantic_from_instances import segmentation_to_mask, semantic_from_instances


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", required=True, help="COCO instances JSON")
    p.add_argument("--image-root", required=True, help="folder of its images")
    p.add_argument("--output", required=True, help="folder for the PNGs")
    p.add_argument("--num-images", type=int, default=4, help="images drawn: those with the most overlapping instances (default 4)")
    p.add_argument("--ignore-value", type=int, default=255)
    return p.parse_args(argv)


def expected_labels(masks, classes, crowd, shape, ignore_value):
    """Each pixel's label by the rule, computed without painting: the class of the smallest
    covering non-crowd instance (on equal areas the later one), else ignore under a crowd region, else 0."""
    labels = np.zeros(shape, dtype=np.int64)
    if any(crowd):
        labels[np.any([m for m, c in zip(masks, crowd) if c], axis=0)] = ignore_value
    kept = [i for i, c in enumerate(crowd) if not c]
    if not kept:
        return labels, np.zeros(shape, dtype=bool)
    stack = np.stack([masks[i] for i in kept])
    # rank: smaller area first, later annotation first among equals
    keys = np.array([(masks[i].sum(), -i) for i in kept], dtype=np.int64)
    order = np.lexsort((keys[:, 1], keys[:, 0]))
    rank = np.empty(len(kept), dtype=np.int64)
    rank[order] = np.arange(len(kept))
    cost = np.where(stack, rank[:, None, None], len(kept))
    winner = cost.argmin(axis=0)
    covered = stack.any(axis=0)
    labels[covered] = np.array([classes[i] + 1 for i in kept])[winner[covered]]
    return labels, stack.sum(axis=0) >= 2


def main(argv=None) -> int:
    args = parse_args(argv)
    if not os.path.isfile(args.json):
        sys.exit(f"visualize_semantic_labels.py: --json {args.json} does not exist")
    records = load_coco_json(args.json, args.image_root, dataset_name=None)
    with open(args.json) as f:
        cats = sorted(json.load(f)["categories"], key=lambda c: c["id"])
    names = [c["name"] for c in cats]
    contiguous = {c["id"]: i for i, c in enumerate(cats)}
    for r in records:  # detectron2's contiguous ids, as a registered dataset has them
        for a in r["annotations"]:
            a["category_id"] = contiguous[a["category_id"]]
    total = overlap = wrong = wrong_overlap = 0
    drawn = []
    for k, r in enumerate(records):
        h, w = r["height"], r["width"]
        anns = r["annotations"]
        masks = [segmentation_to_mask(a["segmentation"], h, w) for a in anns]
        classes = [a["category_id"] for a in anns]
        crowd = [bool(a.get("iscrowd", 0)) for a in anns]
        derived = semantic_from_instances(masks, classes, crowd, image_size=(h, w), ignore_value=args.ignore_value)
        expected, nested = expected_labels(masks, classes, crowd, (h, w), args.ignore_value)
        bad = derived != expected
        total += h * w
        overlap += int(nested.sum())
        wrong += int(bad.sum())
        wrong_overlap += int((bad & nested).sum())
        drawn.append((int(nested.sum()), k, derived))
        print(f"\r[labels] {k + 1}/{len(records)} images", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    print(f"{len(records)} images, {sum(len(r['annotations']) for r in records)} instances: "
          f"{overlap} pixels ({100.0 * overlap / max(total, 1):.1f}%) under two or more instances; "
          f"derived labels differ from the rule at {wrong} pixels ({wrong_overlap} of them under overlaps)")
    os.makedirs(args.output, exist_ok=True)
    for _, k, derived in sorted(drawn, key=lambda t: -t[0])[: args.num_images]:
        r = records[k]
        image = read_image(r["file_name"], format="RGB")
        meta = Metadata(thing_classes=names, stuff_classes=["background"] + names)
        left = Visualizer(image, meta).draw_dataset_dict(r).get_image()
        shown = np.where(derived == args.ignore_value, 0, derived)
        right = Visualizer(image, meta).draw_sem_seg(shown, alpha=0.6).get_image()
        path = os.path.join(args.output, os.path.splitext(os.path.basename(r["file_name"]))[0] + "_labels.png")
        Image.fromarray(np.concatenate([left, right], axis=1)).save(path)
        print(f"wrote {path}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
