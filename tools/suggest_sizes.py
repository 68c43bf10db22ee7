#!/usr/bin/env python
"""Input scales, anchor sizes and score-map stride for a COCO-format training set.

  python tools/suggest_sizes.py train.json                   # what it measured and chose, per model
  python tools/suggest_sizes.py train.json --model FCIS      # only the overrides, for a command line

``--model FCIS`` / ``BiSeg``: for the dilated single-map trunk of the shapes configs (anchors on one
map, stride by dilation); ``--model FCIS-FPN`` / ``BiSeg-FPN``: for the FPN configs of
``configs/custom/`` (one anchor size per level, the score maps' levels from the object sizes and
their width from the number of classes); ``--model GeneralizedRCNN``: Mask R-CNN on any FPN trunk.

The overrides go after ``tools/train_net.py --config-file CFG``, e.g. as
``$(python tools/suggest_sizes.py train.json --model FCIS-FPN)`` (see instfcn_d2/data/object_sizes.py
for the rules). The shipped configs were tuned on objects of 12 px and more; data of smaller
objects needs smaller anchors, larger inputs or finer maps.
"""
import argparse
import sys

from instfcn_d2.data.object_sizes import config_overrides, suggest_sizes

#: --model -> (MODEL.META_ARCHITECTURE, on an FPN trunk)
MODELS = {
    "FCIS": ("FCIS", False),
    "BiSeg": ("BiSeg", False),
    "FCIS-FPN": ("FCIS", True),
    "BiSeg-FPN": ("BiSeg", True),
    "InstanceFCN": ("InstanceFCN", False),
    "GeneralizedRCNN": ("GeneralizedRCNN", False),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json_file", help="COCO instances JSON of the training set")
    p.add_argument("--model", choices=list(MODELS), help="print only this model's overrides")
    p.add_argument("--min-object-side", type=float, default=12.0, help="px the 10th-percentile object is scaled to")
    p.add_argument("--max-upscale", type=float, default=2.0)
    args = p.parse_args(argv)
    try:
        s = suggest_sizes(args.json_file, min_object_side=args.min_object_side, max_upscale=args.max_upscale)
    except (OSError, ValueError) as e:
        p.error(str(e))
    if args.model:
        meta, fpn = MODELS[args.model]
        # one line of space-free words, for a command substitution: $(suggest_sizes.py ... --model M)
        print(" ".join(config_overrides(s, meta, fpn=fpn)))
        return 0
    print(s.describe())
    for name, (meta, fpn) in MODELS.items():
        print(f"{name}: {' '.join(config_overrides(s, meta, fpn=fpn))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
