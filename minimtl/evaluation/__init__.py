"""Evaluation, written from scratch: COCO box and mask AP/AR (equal to pycocotools'), semantic mIoU."""

from minimtl.evaluation.coco import STAT_NAMES, evaluate
from minimtl.evaluation.semantic import confusion_matrix, mean_iou

__all__ = ["evaluate", "STAT_NAMES", "confusion_matrix", "mean_iou"]
