"""Evaluation, written from scratch: COCO box and mask AP/AR (equal to pycocotools'), streamed one
image at a time by CocoEvaluator; error analysis (TIDE's error types and their AP cost, a confusion
matrix of detections); semantic mIoU; multi-label image classification mAP and exact match."""

from minimtl.evaluation.classification import average_precision, multilabel_metrics
from minimtl.evaluation.coco import (
    IOU_THRESHOLDS,
    RECALL_THRESHOLDS,
    STAT_NAMES,
    CocoEvaluator,
    evaluate,
    evaluate_curves,
    per_class_ap,
)
from minimtl.evaluation.errors import (
    COUNT_COLUMNS,
    DETECTION_TYPES,
    ERROR_TYPES,
    ErrorAnalysis,
    analyze_errors,
    ap_at,
    classify_image,
    detection_confusion_matrix,
    fix_errors,
    missed_objects,
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
    "average_precision",
    "multilabel_metrics",
    "analyze_errors",
    "ap_at",
    "classify_image",
    "detection_confusion_matrix",
    "fix_errors",
    "missed_objects",
    "ErrorAnalysis",
    "DETECTION_TYPES",
    "ERROR_TYPES",
    "COUNT_COLUMNS",
]
