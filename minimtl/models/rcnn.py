"""Faster R-CNN and Mask R-CNN with a ResNet-FPN backbone, assembled from minimtl/modeling.

    images -> ImageTransform -> ResNet (C2..C5) -> FPN (P2..P6) -> RPN (proposals)
           -> RoIHeads: box head (+ mask head) -> detections -> back to the original images

The calling convention is torchvision's: model(images: list[Tensor[3, H, W]], targets) returns a
dict of losses in training and, in eval mode, one dict per image with "boxes" (D, 4), "labels" (D,),
"scores" (D,) and, for Mask R-CNN, "masks" (D, 1, H, W), probabilities at the input image's size.
A target is a dict with "boxes" (G, 4) (x1, y1, x2, y2 in pixels), "labels" (G,) int64 in
[1, num_classes), and "masks" (G, H, W) for Mask R-CNN; G may be 0.

Every setting lives in RCNNConfig; the defaults are torchvision's Mask R-CNN ResNet-50-FPN.
"""

import math
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor, nn

from minimtl.modeling.anchors import AnchorGenerator
from minimtl.modeling.backbone import RESNETS
from minimtl.modeling.fpn import FPN
from minimtl.modeling.mask_head import MaskConvs, MaskHead, MaskPredictor
from minimtl.modeling.poolers import MultiScaleRoIAlign
from minimtl.modeling.roi_heads import FastRCNNPredictor, RoIHeads, TwoMLPHead
from minimtl.modeling.rpn import BOX_LOSSES, RegionProposalNetwork, RPNHead, quoted_options
from minimtl.modeling.transform import ImageTransform


@dataclass
class RCNNConfig:
    num_classes: int  # including the background, class 0
    masks: bool = True  # Mask R-CNN (True) or Faster R-CNN (False)
    # backbone and FPN
    backbone: str = "resnet50"  # resnet18, resnet34, resnet50
    norm: str = "bn"  # bn, frozen_bn (for pretrained weights), gn
    norm_eps: float = 1e-5  # torchvision's COCO checkpoints were trained with frozen BN and eps 0.0
    backbone_width: int = 64
    trainable_backbone_layers: int = 5
    fpn_channels: int = 256
    channels_last: bool = True  # feature maps in NHWC memory: faster convs, and no copy before RoIAlign
    # image transform
    min_size: int | tuple[int, ...] = 800
    max_size: int = 1333
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # RPN
    anchor_sizes: tuple = ((32,), (64,), (128,), (256,), (512,))
    aspect_ratios: tuple = ((0.5, 1.0, 2.0),) * 5
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_score_thresh: float = 0.0
    rpn_box_loss: str = "smooth_l1"  # smooth_l1, giou, diou, ciou (rpn.py)
    rpn_box_loss_weight: float = 1.0  # multiplies loss_rpn_box_reg (detectron2's RPN.BBOX_REG_LOSS_WEIGHT)
    rpn_objectness_loss: str = "bce"  # bce (sampled anchors) or focal (every anchor not ignored; rpn.py)
    # box head
    roi_aligned: bool = False  # RoIAlign's half-pixel shift (torchvision: False, detectron2: True)
    box_roi_size: int = 7
    box_sampling_ratio: int = 2
    representation_size: int = 1024
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    box_loss: str = "smooth_l1"  # smooth_l1, giou, diou, ciou (roi_heads.py)
    box_loss_weight: float = 1.0  # multiplies loss_box_reg; mmdetection uses 10 with giou, 12 with ciou
    box_classifier_loss: str = "ce"  # ce (softmax) or focal (one sigmoid per foreground class; roi_heads.py)
    # focal loss (RetinaNet's values), for rpn_objectness_loss and box_classifier_loss "focal"
    focal_alpha: float = 0.25  # weight of the positives, in [0, 1]; negative: no weighting
    focal_gamma: float = 2.0  # >= 0; 0 with a negative alpha is cross-entropy
    focal_prior: float = 0.01  # in (0, 1): the probability the focal logits start at (bias initialisation)
    # mask head
    mask_roi_size: int = 14
    mask_layers: tuple[int, ...] = field(default=(256, 256, 256, 256))
    mask_dim_reduced: int = 256

    def __post_init__(self):
        if self.num_classes < 2:
            raise ValueError(f"num_classes counts the background too: at least 2, got {self.num_classes}")
        if self.backbone not in RESNETS:
            raise ValueError(f"backbone must be one of {sorted(RESNETS)}, got {self.backbone!r}")
        if len(self.anchor_sizes) != 5 or len(self.aspect_ratios) != 5:
            raise ValueError("anchor_sizes and aspect_ratios need one entry per level P2..P6 (5)")
        for name, allowed in [
            ("rpn_box_loss", BOX_LOSSES),
            ("box_loss", BOX_LOSSES),
            ("rpn_objectness_loss", ("bce", "focal")),
            ("box_classifier_loss", ("ce", "focal")),
        ]:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be {quoted_options(allowed)}, got {getattr(self, name)!r}")
        for name in ("rpn_box_loss_weight", "box_loss_weight"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if not self.focal_alpha <= 1:
            raise ValueError(f"focal_alpha must be in [0, 1] (or negative to disable it), got {self.focal_alpha}")
        if not self.focal_gamma >= 0:
            raise ValueError(f"focal_gamma must be >= 0, got {self.focal_gamma}")
        if not 0 < self.focal_prior < 1:
            raise ValueError(f"focal_prior must be in (0, 1), got {self.focal_prior}")

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}


class RCNN(nn.Module):
    """Faster R-CNN (config.masks False) or Mask R-CNN (True); see the module docstring."""

    def __init__(self, config: RCNNConfig):
        super().__init__()
        c = self.config = config
        self.transform = ImageTransform(c.min_size, c.max_size, c.image_mean, c.image_std)
        self.backbone = RESNETS[c.backbone](
            norm=c.norm, width=c.backbone_width, trainable_stages=c.trainable_backbone_layers, norm_eps=c.norm_eps
        )
        self.fpn = FPN(self.backbone.out_channels, c.fpn_channels)
        anchors = AnchorGenerator(c.anchor_sizes, c.aspect_ratios)
        self.rpn = RegionProposalNetwork(
            anchors,
            RPNHead(c.fpn_channels, anchors.num_anchors_per_location()[0]),
            c.rpn_fg_iou_thresh,
            c.rpn_bg_iou_thresh,
            c.rpn_batch_size_per_image,
            c.rpn_positive_fraction,
            (c.rpn_pre_nms_top_n_train, c.rpn_pre_nms_top_n_test),
            (c.rpn_post_nms_top_n_train, c.rpn_post_nms_top_n_test),
            c.rpn_nms_thresh,
            c.rpn_score_thresh,
            c.rpn_box_loss,
            box_loss_weight=c.rpn_box_loss_weight,
            objectness_loss=c.rpn_objectness_loss,
            focal_alpha=c.focal_alpha,
            focal_gamma=c.focal_gamma,
            focal_prior=c.focal_prior,
        )
        mask_head = None
        if c.masks:
            mask_head = MaskHead(
                MultiScaleRoIAlign(c.mask_roi_size, 2, c.roi_aligned),
                MaskConvs(c.fpn_channels, c.mask_layers),
                MaskPredictor(c.mask_layers[-1], c.mask_dim_reduced, c.num_classes),
            )
        self.roi_heads = RoIHeads(
            MultiScaleRoIAlign(c.box_roi_size, c.box_sampling_ratio, c.roi_aligned),
            TwoMLPHead(c.fpn_channels * c.box_roi_size**2, c.representation_size),
            FastRCNNPredictor(c.representation_size, c.num_classes),
            c.box_fg_iou_thresh,
            c.box_bg_iou_thresh,
            c.box_batch_size_per_image,
            c.box_positive_fraction,
            c.bbox_reg_weights,
            c.box_score_thresh,
            c.box_nms_thresh,
            c.box_detections_per_img,
            c.box_loss,
            mask_head,
            classifier_loss=c.box_classifier_loss,
            box_loss_weight=c.box_loss_weight,
            focal_alpha=c.focal_alpha,
            focal_gamma=c.focal_gamma,
            focal_prior=c.focal_prior,
        )
        if c.channels_last:
            self.to(memory_format=torch.channels_last)  # the conv weights; forward() converts the images

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        if self.training:
            check_targets(targets, len(images), self.config)
        batch, image_sizes, original_sizes, targets = self.batch_images(images, targets)
        features = self.fpn(self.backbone(batch))  # P2..P6
        detections, rpn_losses, head_losses = self.detection_heads(batch, image_sizes, features, targets)
        if self.training:
            return {**head_losses, **rpn_losses}
        return self.transform.postprocess(detections, image_sizes, original_sizes)

    def batch_images(self, images: list[Tensor], targets):
        """Resize, normalise and pad the images into one batch (N, 3, Hb, Wb); also returns each image's
        size inside the batch, its original size, and the targets resized with it."""
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        batch, image_sizes, targets = self.transform(images, targets)
        if self.config.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch, image_sizes, original_sizes, targets

    def detection_heads(self, batch: Tensor, image_sizes, features: list[Tensor], targets):
        """The RPN, then the box (and mask) heads, on P2..P6: detections per image (in evaluation),
        the RPN's losses and the heads' losses (in training)."""
        proposals, rpn_losses = self.rpn(tuple(batch.shape[-2:]), image_sizes, features, targets)
        detections, head_losses = self.roi_heads(features[:4], proposals, image_sizes, targets)
        return detections, rpn_losses, head_losses


def check_target_count(targets, num_images: int) -> None:
    """Training needs a list with one target dict per image."""
    if targets is None or len(targets) != num_images:
        got = "None" if targets is None else f"{len(targets)} targets"
        raise ValueError(f"training needs one target dict per image: {num_images} images, got {got}")


def check_targets(targets, num_images: int, config: RCNNConfig) -> None:
    """Clear errors, before any computation, for the target mistakes that otherwise become NaN."""
    check_target_count(targets, num_images)
    for i, t in enumerate(targets):
        needed = ("boxes", "labels", "masks") if config.masks else ("boxes", "labels")
        missing = [k for k in needed if k not in t]
        if missing:
            raise ValueError(f"targets[{i}] is missing {missing}")
        boxes, labels = t["boxes"], t["labels"]
        if boxes.dim() != 2 or boxes.shape[-1] != 4 or not boxes.is_floating_point():
            raise ValueError(
                f"targets[{i}]['boxes'] must be a float Tensor[G, 4], got {boxes.dtype} {tuple(boxes.shape)}"
            )
        if labels.dtype != torch.int64 or labels.shape != boxes.shape[:1]:
            raise ValueError(
                f"targets[{i}]['labels'] must be int64 of shape ({len(boxes)},), got {labels.dtype} "
                f"{tuple(labels.shape)}"
            )
        if len(labels) and not ((labels >= 1) & (labels < config.num_classes)).all():
            raise ValueError(f"targets[{i}]['labels'] must be in [1, {config.num_classes}), got {labels.tolist()}")
        bad = torch.where(~(boxes[:, 2:] > boxes[:, :2]).all(dim=1))[0]  # NaN compares false: bad too
        if len(bad):
            raise ValueError(
                f"targets[{i}] has a degenerate box (x2 <= x1 or y2 <= y1, or NaN) at index "
                f"{bad[0].item()}: {boxes[bad[0]].tolist()}"
            )
        if config.masks and t["masks"].shape[0] != len(boxes):
            raise ValueError(
                f"targets[{i}]['masks'] must be (G, H, W) with G = {len(boxes)}, got {tuple(t['masks'].shape)}"
            )
