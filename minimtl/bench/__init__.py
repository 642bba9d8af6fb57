"""Benchmarks, each printing ratios measured side by side in one run:

python -m minimtl.bench ops     each kernel against its reference and torchvision's op
python -m minimtl.bench train   a Mask R-CNN training step against torchvision's
"""
