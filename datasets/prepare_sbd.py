#!/usr/bin/env python
"""Convert the SBD release (PASCAL VOC 2012 instance masks) into files detectron2 reads.

The command line of ``instfcn_d2.data.convert_sbd``, which does the work; --help shows its
description (input and output layout, skipping, errors) below the usage.
"""
import argparse
import logging
import sys
from pathlib import Path

from instfcn_d2.data import convert_sbd
from instfcn_d2.data.sbd import SPLITS


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=convert_sbd.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root", type=Path, default=None,
        help="the benchmark_RELEASE folder (default: $DETECTRON2_DATASETS/benchmark_RELEASE; "
        "./datasets/benchmark_RELEASE when unset)",
    )
    parser.add_argument(
        "--output", type=Path, default=None,
        help="where converted files go (default: $INSTFCN_D2_CACHE/sbd; ~/.cache/instfcn_d2/sbd when unset)",
    )
    parser.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS), help="splits to convert")
    parser.add_argument("--train-list", type=Path, default=None,
                        help="image list of the train split (default: <root>/dataset/train.txt)")
    parser.add_argument("--val-list", type=Path, default=None,
                        help="image list of the val split (default: <root>/dataset/val.txt)")
    parser.add_argument("--force", action="store_true", help="convert even when the outputs are up to date")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    lists = {s: p for s, p in (("train", args.train_list), ("val", args.val_list)) if p is not None}
    try:
        # root / output None: the package's defaults, from the environment variables
        written = convert_sbd.prepare_sbd(
            args.root, args.output, splits=args.splits, lists=lists, force=args.force
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for split, path in written.items():
        print(f"{split}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
