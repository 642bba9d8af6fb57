"""Mixed precision: which numbers may be 16-bit.

Under torch.autocast (the trainer turns it on for CUDA), convolutions and linear layers run in
bfloat16 or float16: about twice as fast, and accurate enough for the features a network computes.
Geometry is not: bfloat16 keeps 8 significant bits, so between 512 and 1024 it can only say every
4th pixel, and an anchor at x = 1000 would be off by up to 4 pixels before the network has done
anything. float16 keeps 11 bits but overflows at 65504.

So minimtl draws one line: what a head predicts (objectness, class logits, box deltas, mask and
semantic logits) is cast to at least float32 as it leaves the head (rpn.py, roi_heads.py,
mask_head.py, models/multitask.py), and everything after it (anchors, decoded boxes, IoU, NMS,
losses) is computed in that dtype. The features themselves, and RoIAlign over
them, stay in the fast dtype (the kernels accumulate in float32 anyway).
"""

import torch
from torch import Tensor


def full_precision(x: Tensor) -> Tensor:
    """x in float32 if it is a 16-bit float, else unchanged (float32 and float64 stay as they are)."""
    return x.to(full_precision_dtype(x.dtype))


def full_precision_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16 and bfloat16 -> float32; any other dtype is returned as is."""
    return torch.promote_types(dtype, torch.float32) if dtype.is_floating_point else dtype
