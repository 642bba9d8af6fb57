"""Evaluation, written from scratch: COCO box and mask AP/AR (equal to pycocotools'), semantic mIoU."""

from minimtl.evaluation.coco import IOU_THRESHOLDS, RECALL_THRESHOLDS, STAT_NAMES, evaluate, evaluate_curves
from minimtl.evaluation.semantic import confusion_matrix, mean_iou

__all__ = [
    "evaluate",
    "evaluate_curves",
    "STAT_NAMES",
    "IOU_THRESHOLDS",
    "RECALL_THRESHOLDS",
    "confusion_matrix",
    "mean_iou",
]
