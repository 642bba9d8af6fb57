"""python -m minimtl.bench ops [--device cpu|cuda] [--quick] [--json FILE]"""

import argparse
import sys

from minimtl.bench import ops


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minimtl.bench", description=__doc__)
    sub = parser.add_subparsers(dest="suite", required=True)
    p = sub.add_parser("ops", help="kernels vs reference vs torchvision")
    ops.add_arguments(p)
    args = parser.parse_args(argv)
    return ops.main(args)


if __name__ == "__main__":
    sys.exit(main())
