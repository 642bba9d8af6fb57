"""Semantic segmentation metrics: the confusion matrix and mean IoU (PASCAL VOC, Cityscapes).

For class c, IoU_c = TP_c / (TP_c + FP_c + FN_c) over all pixels of all images; mIoU is the mean
over the classes that occur (in the ground truth or the predictions). Pixels labelled
`ignore_index` in the ground truth count for nothing.

Shapes: predictions and targets (N, H, W) or lists of (H, W) int tensors with values in [0, C).
"""

import torch
from torch import Tensor


def confusion_matrix(predictions, targets, num_classes: int, ignore_index: int = 255) -> Tensor:
    """(C, C) int64: entry [t, p] counts the pixels of true class t predicted as p."""
    matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for pred, target in zip(predictions, targets, strict=True):
        if pred.shape != target.shape:
            raise ValueError(
                f"confusion_matrix: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ"
            )
        keep = target != ignore_index
        t, p = target[keep].long().cpu(), pred[keep].long().cpu()
        if len(t) and (t.min() < 0 or t.max() >= num_classes or p.min() < 0 or p.max() >= num_classes):
            raise ValueError(f"confusion_matrix: labels must be in [0, {num_classes}) or {ignore_index}")
        matrix += torch.bincount(t * num_classes + p, minlength=num_classes**2).view(num_classes, num_classes)
    return matrix


def mean_iou(predictions, targets, num_classes: int, ignore_index: int = 255) -> dict:
    """{"mIoU": float, "IoU": per-class list (nan for a class that never occurs), "pixel_accuracy": float}."""
    return scores_from_confusion(confusion_matrix(predictions, targets, num_classes, ignore_index))


def scores_from_confusion(matrix: Tensor) -> dict:
    """mean_iou's dict from a (C, C) confusion matrix (e.g. one summed image by image)."""
    matrix = matrix.double()
    tp = matrix.diagonal()
    union = matrix.sum(0) + matrix.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.nan)
    present = union > 0
    return {
        "mIoU": float(iou[present].mean()) if present.any() else float("nan"),
        "IoU": iou.tolist(),
        "pixel_accuracy": float(tp.sum() / matrix.sum()) if matrix.sum() > 0 else float("nan"),
    }
