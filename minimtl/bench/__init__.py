"""Benchmarks: `python -m minimtl.bench ops` times each kernel against its reference and, when it is
installed, torchvision's op, side by side in one run, and prints the ratios."""
