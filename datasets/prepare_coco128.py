#!/usr/bin/env python
"""Derive coco128's extra annotation files (see datasets/README.md).

Writes, under --output (default ``$INSTFCN_D2_CACHE/coco128``, i.e. ``~/.cache/instfcn_d2/coco128``):
``instances_val2017.json`` (val instance masks from the panoptic PNGs), ``sem_val2017/*.png`` and
``sem_train2017/*.png`` (uint8 semantic labels). Splits already up to date are skipped.
The work itself lives in ``instfcn_d2.data.convert_coco128``; this is only its command line.
"""

import argparse
import logging
import sys
from pathlib import Path

from instfcn_d2.data.convert_coco128 import prepare_coco128


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="the coco128 folder (default: $DETECTRON2_DATASETS/coco128; ./datasets/coco128 when unset)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="where derived files go (default: $INSTFCN_D2_CACHE/coco128; ~/.cache/instfcn_d2/coco128 when unset)",
    )
    parser.add_argument(
        "--splits", nargs="+", choices=("train", "val"), default=["train", "val"], help="splits to prepare"
    )
    parser.add_argument("--force", action="store_true", help="redo the conversion even when up to date")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        # root / output None: the package's defaults, from the environment variables
        written = prepare_coco128(args.root, args.output, splits=args.splits, force=args.force)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for key, path in written.items():
        print(f"{key}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
