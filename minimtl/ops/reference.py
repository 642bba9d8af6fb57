"""Readable pure-PyTorch versions of minimtl's kernels: what the notebooks teach and the tests check.

Each function here computes exactly what its kernel in csrc/ computes, the same operations in the
same order and in the same precision (float16 and bfloat16 boxes in float32, like the kernels), so
the kernels are compared with these to the last bit (IoU) or index for index (NMS).
They are written to be read, not to be fast: box_iou builds N x M temporaries for every step, and
nms fills the whole N x N IoU matrix before walking it in a Python loop.

Boxes are (x1, y1, x2, y2). Shapes: N, M boxes; K kept boxes.
"""

import torch
from torch import Tensor


def _compute_dtype(boxes: Tensor) -> torch.dtype:
    """The kernels compute in float64 for float64 boxes and in float32 for everything else."""
    return torch.float64 if boxes.dtype == torch.float64 else torch.float32


def box_area(boxes: Tensor) -> Tensor:
    """Area of each box, (N, 4) -> (N,). A box with x2 <= x1 or y2 <= y1 has area 0.

    The widths are clamped at 0, so an inverted box is empty rather than "negative times negative"
    positive. torch.clamp keeps NaN, so a box with a NaN coordinate has area NaN.
    """
    width = (boxes[:, 2] - boxes[:, 0]).clamp(min=0)
    height = (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    return width * height


def _intersection(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Area of the intersection of every pair, (N, 4), (M, 4) -> (N, M)."""
    top_left = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    bottom_right = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    wh = (bottom_right - top_left).clamp(min=0)  # (N, M, 2), 0 where the boxes do not overlap
    return wh[..., 0] * wh[..., 1]


def _safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """numerator / denominator where denominator > 0, else 0 (NaN > 0 is False, so NaN gives 0 too).

    The division only ever sees positive denominators, so no inf or NaN appears even in the branch
    that torch.where drops; that keeps the gradient finite as well.
    """
    positive = denominator > 0
    return torch.where(positive, numerator / torch.where(positive, denominator, 1), 0)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Intersection over union of every pair of boxes, (N, 4), (M, 4) -> (N, M).

    IoU(a, b) = |a ∩ b| / |a ∪ b|,  |a ∪ b| = |a| + |b| - |a ∩ b|.
    Where the union is not positive (two empty boxes) or is NaN (a NaN coordinate), IoU is 0.
    """
    dtype = boxes1.dtype
    boxes1, boxes2 = boxes1.to(_compute_dtype(boxes1)), boxes2.to(_compute_dtype(boxes2))
    area1, area2 = box_area(boxes1), box_area(boxes2)  # (N,), (M,)
    inter = _intersection(boxes1, boxes2)  # (N, M)
    union = area1[:, None] + area2[None, :] - inter  # (N, M)
    return _safe_divide(inter, union).to(dtype)


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalised IoU (Rezatofighi et al., 2019) of every pair, (N, 4), (M, 4) -> (N, M).

    GIoU(a, b) = IoU(a, b) - (|C| - |a ∪ b|) / |C|, C the smallest box enclosing a and b.
    It lies in [-1, 1] and, unlike IoU, still says how far apart two disjoint boxes are.
    Where |C| is not positive the penalty is left out; any NaN left (from inf - inf) becomes 0.
    """
    dtype = boxes1.dtype
    boxes1, boxes2 = boxes1.to(_compute_dtype(boxes1)), boxes2.to(_compute_dtype(boxes2))
    area1, area2 = box_area(boxes1), box_area(boxes2)  # (N,), (M,)
    inter = _intersection(boxes1, boxes2)  # (N, M)
    union = area1[:, None] + area2[None, :] - inter  # (N, M)
    iou = _safe_divide(inter, union)  # (N, M)

    top_left = torch.minimum(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    bottom_right = torch.maximum(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    wh = (bottom_right - top_left).clamp(min=0)  # (N, M, 2)
    enclose = wh[..., 0] * wh[..., 1]  # (N, M)

    positive = enclose > 0
    giou = torch.where(positive, iou - (enclose - union) / torch.where(positive, enclose, 1), iou)
    return torch.where(torch.isnan(giou), 0, giou).to(dtype)


def order_by_score(scores: Tensor) -> Tensor:
    """Indices of the scores in decreasing order; ties keep index order; NaN ranks as -inf."""
    key = torch.where(torch.isnan(scores), float("-inf"), scores)
    return torch.sort(key, descending=True, stable=True).indices


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression, (N, 4), (N,) -> (K,) int64 indices by decreasing score.

    Walk the boxes from the highest score down; keep a box unless a box kept before it overlaps it
    with IoU > iou_threshold.
    """
    order = order_by_score(scores)  # (N,) rank -> box index
    sorted_boxes = boxes[order].to(_compute_dtype(boxes))
    iou = box_iou(sorted_boxes, sorted_boxes).cpu()  # (N, N), rows and columns in rank order
    # The comparison happens in the compute dtype, as in the kernels (for float32 boxes, 0.7 is
    # compared as the float32 nearest to 0.7).
    threshold = torch.tensor(iou_threshold, dtype=iou.dtype)
    removed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in range(len(order)):
        if removed[i]:
            continue
        keep.append(i)
        removed[i + 1 :] |= iou[i, i + 1 :] > threshold  # i suppresses the later boxes it overlaps
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Class-aware NMS: boxes with different idxs never suppress each other.

    NMS runs on each class separately; the kept boxes of all classes are returned together, by
    decreasing score (ties keep index order), as nms orders them.
    """
    keep = []
    for c in torch.unique(idxs):
        members = torch.nonzero(idxs == c).flatten()  # (Nc,) box indices of class c
        keep.append(members[nms(boxes[members], scores[members], iou_threshold)])
    keep = torch.cat(keep) if keep else idxs.new_empty(0, dtype=torch.long)
    order = order_by_score(scores)  # rank -> box index
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device)  # box index -> rank
    return keep[torch.argsort(rank[keep])]
