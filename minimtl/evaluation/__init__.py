"""Evaluation, written from scratch: COCO box and mask AP/AR (equal to pycocotools'), streamed one
image at a time by CocoEvaluator; semantic mIoU."""

from minimtl.evaluation.coco import (
    IOU_THRESHOLDS,
    RECALL_THRESHOLDS,
    STAT_NAMES,
    CocoEvaluator,
    evaluate,
    evaluate_curves,
    per_class_ap,
)
from minimtl.evaluation.semantic import confusion_matrix, mean_iou

__all__ = [
    "CocoEvaluator",
    "evaluate",
    "evaluate_curves",
    "per_class_ap",
    "STAT_NAMES",
    "IOU_THRESHOLDS",
    "RECALL_THRESHOLDS",
    "confusion_matrix",
    "mean_iou",
]
