"""Pairwise IoU and generalised IoU: `box_iou` and `generalized_box_iou`.

Kernels: csrc/cpu/box_iou.cpp, csrc/cuda/box_iou.cu (the pair arithmetic in csrc/box_math.h).
Reference: minimtl/ops/reference.py. Chapter: notebooks/01_boxes_iou_giou.ipynb.

Boxes are (x1, y1, x2, y2); N and M are the numbers of boxes.
"""

import torch
from torch import Tensor

from minimtl.ops import _checks, reference

_RULES = """
    Degenerate and non-finite boxes (never NaN, never a crash):

    * A box with x2 <= x1 or y2 <= y1 is empty: its area is 0, so its IoU with every box is 0.
    * A box with a NaN coordinate has IoU and GIoU 0 with every box.
    * Infinite coordinates are used as they are; a value left undefined by them (inf / inf,
      inf - inf) is 0.
    * Empty inputs give an empty (N, M) result.

    Dtypes: float32 and float64; float16 and bfloat16 too, computed in float32. The result has the
    boxes' dtype. Differentiable with respect to both inputs (the gradient is the reference's).
"""


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Intersection over union of every pair of boxes.

    IoU(a, b) = |a ∩ b| / |a ∪ b|, with |a ∪ b| = |a| + |b| - |a ∩ b|.

    Args:
        boxes1: Tensor[N, 4] of (x1, y1, x2, y2) boxes.
        boxes2: Tensor[M, 4], same dtype and device.

    Returns:
        Tensor[N, M], IoU[i, j] between boxes1[i] and boxes2[j], in [0, 1].
    """
    return torch.ops.minimtl.box_iou(boxes1, boxes2)


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalised IoU (Rezatofighi et al., CVPR 2019) of every pair of boxes.

    GIoU(a, b) = IoU(a, b) - (|C| - |a ∪ b|) / |C|, C the smallest box enclosing a and b. It lies in
    [-1, 1]: 1 for identical boxes, towards -1 as disjoint boxes move apart. Where |C| = 0 (two
    identical points, or collinear segments) the penalty is left out.

    Args:
        boxes1: Tensor[N, 4] of (x1, y1, x2, y2) boxes.
        boxes2: Tensor[M, 4], same dtype and device.

    Returns:
        Tensor[N, M], GIoU[i, j] between boxes1[i] and boxes2[j].
    """
    return torch.ops.minimtl.generalized_box_iou(boxes1, boxes2)


for _fn in (box_iou, generalized_box_iou):
    if _fn.__doc__:  # None under python -OO
        _fn.__doc__ += _RULES


def _register(op: str, reference_fn) -> None:
    """Fake kernel (shapes only, for torch.compile) and autograd formula of a pairwise op."""

    @torch.library.register_fake(f"minimtl::{op}")
    def _(boxes1, boxes2):
        _checks.check_pairwise_inputs(op, boxes1, boxes2)
        return boxes1.new_empty((boxes1.shape[0], boxes2.shape[0]))  # (N, M)

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward(ctx, grad):
        # The kernel computes the reference's function exactly (in the same precision), so the
        # reference's gradient is its gradient. Backward is rare for pairwise IoU (DETR's matching
        # loss is one user) and runs at reference speed.
        _, vjp = torch.func.vjp(reference_fn, *ctx.saved_tensors)
        return vjp(grad)

    torch.library.register_autograd(f"minimtl::{op}", backward, setup_context=setup_context)


_register("box_iou", reference.box_iou)
_register("generalized_box_iou", reference.generalized_box_iou)


# --- small helpers used by the detectors (pure PyTorch: nothing here is worth a kernel) ------


def clip_boxes_to_image(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clamp boxes (..., 4) to an image of size (height, width): x into [0, width], y into [0, height]."""
    height, width = size
    x = boxes[..., 0::2].clamp(min=0, max=width)  # (..., 2): x1, x2
    y = boxes[..., 1::2].clamp(min=0, max=height)  # (..., 2): y1, y2
    return torch.stack((x, y), dim=boxes.dim()).reshape(boxes.shape)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of the boxes (N, 4) whose width and height are both >= min_size. (K,) int64"""
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return torch.where((widths >= min_size) & (heights >= min_size))[0]
