"""python -m minimtl.bench ops [--device cpu|cuda] [--quick] [--only SUITE ...] [--json FILE]
python -m minimtl.bench train [--device cpu|cuda] [--runs N]"""

import argparse
import sys

from minimtl.bench import ops, train


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minimtl.bench", description=__doc__)
    sub = parser.add_subparsers(dest="suite", required=True)
    p = sub.add_parser("ops", help="kernels vs reference vs torchvision")
    ops.add_arguments(p)
    p = sub.add_parser("train", help="a Mask R-CNN training step vs torchvision's")
    train.add_arguments(p)
    args = parser.parse_args(argv)
    return {"ops": ops.main, "train": train.main}[args.suite](args)


if __name__ == "__main__":
    sys.exit(main())
