"""Losses: box regression (smooth L1, GIoU/DIoU/CIoU), focal, segmentation (pixel cross-entropy, Dice),
and the combination of several tasks' losses (MultiTaskLoss; PCGrad's gradient surgery)."""

from minimtl.losses.box import ciou_loss, diou_loss, giou_loss, smooth_l1_loss
from minimtl.losses.focal import sigmoid_focal_loss
from minimtl.losses.multitask import MultiTaskLoss
from minimtl.losses.pcgrad import pcgrad_backward
from minimtl.losses.segmentation import binary_dice_loss, dice_loss, pixel_cross_entropy

__all__ = [
    "MultiTaskLoss",
    "binary_dice_loss",
    "ciou_loss",
    "dice_loss",
    "diou_loss",
    "giou_loss",
    "pcgrad_backward",
    "pixel_cross_entropy",
    "sigmoid_focal_loss",
    "smooth_l1_loss",
]
