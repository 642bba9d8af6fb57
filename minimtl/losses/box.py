"""Box regression losses, element-wise over matched pairs of boxes.

GIoU loss (Rezatofighi et al., CVPR 2019): 1 - GIoU(a, b), in [0, 2]. Unlike a loss on deltas it is
invariant to the boxes' scale, and unlike 1 - IoU it still has a gradient when the boxes do not
overlap. Same signature and semantics as torchvision.ops.generalized_box_iou_loss.

Shapes: K pairs; boxes (K, 4) and (K, 4) -> (K,) losses, or a scalar with reduction "mean"/"sum".
"""

import torch
from torch import Tensor


def giou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "none", eps: float = 1e-7) -> Tensor:
    """1 - GIoU(boxes1[k], boxes2[k]) for each k; eps keeps the divisions finite for empty boxes."""
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
    inter_w = (torch.min(x2, x2g) - torch.max(x1, x1g)).clamp(min=0)
    inter_h = (torch.min(y2, y2g) - torch.max(y1, y1g)).clamp(min=0)
    inter = inter_w * inter_h
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
    iou = inter / (union + eps)
    enclose = (torch.max(x2, x2g) - torch.min(x1, x1g)) * (torch.max(y2, y2g) - torch.min(y1, y1g))
    loss = 1 - (iou - (enclose - union) / (enclose + eps))
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else 0.0 * loss.sum()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(f"giou_loss: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
