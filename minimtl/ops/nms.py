"""Non-maximum suppression: `nms` and the class-aware `batched_nms`.

Kernels: csrc/cpu/nms.cpp (greedy, vectorised), csrc/cuda/nms.cu (64-box bitmask tiles).
Reference: minimtl/ops/reference.py. Chapter: notebooks/02_nms.ipynb.

N boxes in, K kept boxes out.
"""

import torch
from torch import Tensor

from minimtl.ops import _checks

_RULES = """
    Order and ties: boxes are ranked by decreasing score; equal scores keep their index order
    (a stable sort, the same on CPU and CUDA).

    Non-finite input (never a crash or a hang):

    * A NaN score ranks as -inf: the box comes last, and is still kept unless a box overlaps it.
    * A box with a NaN coordinate overlaps nothing (IoU 0): it is kept and suppresses nothing.
    * Infinite coordinates follow box_iou's rules.
    * A NaN iou_threshold is an error; a threshold >= 1 keeps every box.

    Dtypes: boxes and scores float32 or float64 (float16 and bfloat16 too, with the IoU computed in
    float32); they may differ. The IoU is compared with iou_threshold in that compute dtype.
"""


def _threshold(iou_threshold) -> float:
    # The schema takes a Python float; accept a 0-d tensor too (a common source of errors).
    return float(iou_threshold.item() if isinstance(iou_threshold, Tensor) else iou_threshold)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression.

    Walks the boxes from the highest score down and keeps a box unless a box kept before it
    overlaps it with IoU strictly greater than `iou_threshold`.

    Args:
        boxes: Tensor[N, 4] of (x1, y1, x2, y2) boxes.
        scores: Tensor[N], one score per box.
        iou_threshold: boxes overlapping a kept box with IoU > iou_threshold are discarded.

    Returns:
        Tensor[K] int64, the indices of the kept boxes, by decreasing score.
    """
    return torch.ops.minimtl.nms(boxes, scores, _threshold(iou_threshold))


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Class-aware non-maximum suppression: boxes with different `idxs` never suppress each other.

    The result equals running `nms` on each class separately and listing all kept boxes together
    by decreasing score.

    Args:
        boxes: Tensor[N, 4] of (x1, y1, x2, y2) boxes.
        scores: Tensor[N], one score per box.
        idxs: Tensor[N] of integers, the class (or image, or any group) of each box.
        iou_threshold: as in `nms`.

    Returns:
        Tensor[K] int64, the indices of the kept boxes, by decreasing score.
    """
    return torch.ops.minimtl.batched_nms(boxes, scores, idxs, _threshold(iou_threshold))


for _fn in (nms, batched_nms):
    if _fn.__doc__:  # None under python -OO
        _fn.__doc__ += _RULES


def _kept_indices(boxes: Tensor) -> Tensor:
    """The output of a fake NMS: a data-dependent number (0 <= K <= N) of int64 indices."""
    num_kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((num_kept,), dtype=torch.long)  # (K,)


@torch.library.register_fake("minimtl::nms")
def _(boxes, scores, iou_threshold):
    _checks.check_nms_inputs("nms", boxes, scores, None, iou_threshold)
    return _kept_indices(boxes)


@torch.library.register_fake("minimtl::batched_nms")
def _(boxes, scores, idxs, iou_threshold):
    _checks.check_nms_inputs("batched_nms", boxes, scores, idxs, iou_threshold)
    return _kept_indices(boxes)
