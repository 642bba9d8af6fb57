"""Box regression losses, element-wise over matched pairs of boxes (or of box deltas).

Smooth L1 (Girshick, Fast R-CNN, ICCV 2015, section 2.3, eq. 3), on the regression deltas:
    smooth_l1(x) = 0.5 x² / beta   if |x| < beta
                   |x| - 0.5 beta   otherwise
  Quadratic near 0 (a gradient that shrinks with the error), linear far away (outliers do not blow
  up the gradient). Fast R-CNN uses beta = 1; Detectron's 1/9 is our default; beta = 0 is plain L1.

The IoU family, on boxes (x1, y1, x2, y2); all are 1 - IoU plus a penalty that keeps a gradient
when the boxes do not overlap, and all are invariant to the boxes' scale (a loss on deltas is not):
  GIoU (Rezatofighi et al., "Generalized intersection over union", CVPR 2019, the GIoU loss
  algorithm): with C the smallest enclosing box,
    L_GIoU = 1 - IoU + |C \\ (A ∪ B)| / |C|                          in [0, 2]
  DIoU (Zheng et al., "Distance-IoU loss", AAAI 2020, the DIoU loss section): with ρ the distance
  between the box centres and c the diagonal of C,
    L_DIoU = 1 - IoU + ρ² / c²                                      in [0, 2]
  CIoU (Zheng et al., AAAI 2020, the CIoU loss section): DIoU plus an aspect-ratio term,
    L_CIoU = L_DIoU + α v,  v = 4/π² (arctan(w_b/h_b) - arctan(w_a/h_a))²,  α = v / (1 - IoU + v)
  with α treated as a constant (no gradient), as in the paper's code.
Same signatures and semantics as torchvision.ops.generalized_box_iou_loss, distance_box_iou_loss and
complete_box_iou_loss (one documented difference: CIoU of a zero-size box is finite here, NaN there).

Shapes: K pairs; boxes (..., 4) and (..., 4) -> (...) losses, or a scalar with reduction "mean"/"sum".
Reductions: "none" | "mean" | "sum"; the mean of no elements is 0 (still part of the graph), not NaN.
"""

import math

import torch
from torch import Tensor


def _reduce(loss: Tensor, reduction: str, name: str) -> Tensor:
    """Apply a reduction; shared by every loss in minimtl.losses."""
    if reduction == "none":
        return loss
    if reduction == "mean":
        # The mean of nothing is 0, not NaN: a batch without positives must not poison the sum.
        return loss.mean() if loss.numel() > 0 else 0.0 * loss.sum()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(f"{name}: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


def _check_pairs(name: str, boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Matched pairs must have the same shape (..., 4); integer boxes become float (as torchvision)."""
    if boxes1.shape != boxes2.shape or boxes1.shape[-1:] != (4,):
        raise ValueError(
            f"{name}: boxes1 and boxes2 must both be Tensor[..., 4] of the same shape, "
            f"got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}"
        )
    if not boxes1.is_floating_point():
        boxes1 = boxes1.float()
    if not boxes2.is_floating_point():
        boxes2 = boxes2.float()
    return boxes1, boxes2


def _iou_and_enclosing_box(boxes1: Tensor, boxes2: Tensor, eps: float) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
    """The part all three IoU losses share: IoU (...), union (...) and the corners of the enclosing
    box C, (xc1, yc1, xc2, yc2), each (...)."""
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
    inter_w = (torch.min(x2, x2g) - torch.max(x1, x1g)).clamp(min=0)
    inter_h = (torch.min(y2, y2g) - torch.max(y1, y1g)).clamp(min=0)
    inter = inter_w * inter_h
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
    iou = inter / (union + eps)  # eps: two empty boxes have union 0
    enclosing = (torch.min(x1, x1g), torch.min(y1, y1g), torch.max(x2, x2g), torch.max(y2, y2g))
    return iou, union, enclosing


def giou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "none", eps: float = 1e-7) -> Tensor:
    """1 - GIoU(boxes1[k], boxes2[k]) for each k; eps keeps the divisions finite for empty boxes."""
    boxes1, boxes2 = _check_pairs("giou_loss", boxes1, boxes2)
    iou, union, (xc1, yc1, xc2, yc2) = _iou_and_enclosing_box(boxes1, boxes2, eps)
    enclose = (xc2 - xc1) * (yc2 - yc1)  # |C|
    loss = 1 - (iou - (enclose - union) / (enclose + eps))
    return _reduce(loss, reduction, "giou_loss")


def _diou_and_iou(boxes1: Tensor, boxes2: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """1 - IoU + ρ²/c², and the IoU (CIoU needs it for α)."""
    iou, _, (xc1, yc1, xc2, yc2) = _iou_and_enclosing_box(boxes1, boxes2, eps)
    diagonal_squared = (xc2 - xc1) ** 2 + (yc2 - yc1) ** 2 + eps  # c²; eps: two identical points
    centres1 = (boxes1[..., :2] + boxes1[..., 2:]) / 2  # (..., 2)
    centres2 = (boxes2[..., :2] + boxes2[..., 2:]) / 2  # (..., 2)
    distance_squared = ((centres1 - centres2) ** 2).sum(dim=-1)  # ρ²
    return 1 - iou + distance_squared / diagonal_squared, iou


def diou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "none", eps: float = 1e-7) -> Tensor:
    """1 - DIoU(boxes1[k], boxes2[k]) for each k: 1 - IoU + (centre distance / enclosing diagonal)²."""
    boxes1, boxes2 = _check_pairs("diou_loss", boxes1, boxes2)
    loss, _ = _diou_and_iou(boxes1, boxes2, eps)
    return _reduce(loss, reduction, "diou_loss")


def ciou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "none", eps: float = 1e-7) -> Tensor:
    """1 - CIoU(boxes1[k], boxes2[k]) for each k: the DIoU loss plus α·v, v the aspect-ratio mismatch."""
    boxes1, boxes2 = _check_pairs("ciou_loss", boxes1, boxes2)
    loss, iou = _diou_and_iou(boxes1, boxes2, eps)
    w1, h1 = boxes1[..., 2] - boxes1[..., 0], boxes1[..., 3] - boxes1[..., 1]
    w2, h2 = boxes2[..., 2] - boxes2[..., 0], boxes2[..., 3] - boxes2[..., 1]
    # Heights clamped at eps: a zero-height box has aspect angle arctan(w / 0) = π/2, and a box of
    # zero width and height would give 0/0 = NaN (torchvision returns NaN there; we return a number).
    v = (4 / math.pi**2) * (torch.atan(w2 / h2.clamp(min=eps)) - torch.atan(w1 / h1.clamp(min=eps))) ** 2
    with torch.no_grad():  # α is a trade-off weight, not something to optimise (as in the paper)
        alpha = v / (1 - iou + v + eps)
    return _reduce(loss + alpha * v, reduction, "ciou_loss")


def smooth_l1_loss(input: Tensor, target: Tensor, beta: float = 1 / 9, reduction: str = "sum") -> Tensor:
    """Fast R-CNN's smooth L1, element-wise; equal to F.smooth_l1_loss for beta > 0, plain L1 for beta = 0.

    The default reduction is "sum": the detection heads divide by the number of sampled anchors/RoIs
    themselves (Fast R-CNN eq. 1), not by the number of coordinates.
    """
    if input.shape != target.shape:
        raise ValueError(
            f"smooth_l1_loss: input and target must have the same shape, got {tuple(input.shape)} and "
            f"{tuple(target.shape)}"
        )
    if beta < 0:
        raise ValueError(f"smooth_l1_loss: beta must be >= 0, got {beta}")
    diff = (input - target).abs()
    if beta == 0:  # the quadratic branch would divide by 0 (and its gradient would be NaN)
        loss = diff
    else:
        loss = torch.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta)
    return _reduce(loss, reduction, "smooth_l1_loss")
