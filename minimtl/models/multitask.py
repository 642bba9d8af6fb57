"""One network, several tasks: detection, instance masks and semantic segmentation on a shared
ResNet-FPN, their losses combined by minimtl.losses.MultiTaskLoss.

    images -> ImageTransform -> ResNet (C2..C5) -> FPN (P2..P6)
        detection:  RPN -> box head                     (tasks["detection"] = RPN + box losses)
        instance:   mask head on the detections' boxes  (tasks["instance"]  = mask loss)
        semantic:   SemanticFPNHead(P2..P5) or HypercolumnHead(C2..C5)
                                                        (tasks["semantic"]  = per-pixel CE)
    L = MultiTaskLoss({task: L_task})  =  sum_i alpha_i L_i  (fixed, uncertainty, DWA or GradNorm)

Every head is switched on or off in MultiTaskConfig (detection, masks, semantic); with semantic
off it is exactly RCNN. In training, forward returns the individual loss terms (for the log);
`total_loss(losses)` combines them, and the trainer uses it when the model has one. In eval mode
each image's dict has the detections (as RCNN's) and "semantic" (H, W) int64 labels.

GradNorm needs the last layer every head shares: the backbone's last stage (C5 feeds the FPN and
both semantic heads).
"""

from dataclasses import dataclass, field

import torch
from torch import Tensor

from minimtl.losses import MultiTaskLoss
from minimtl.modeling.hypercolumn import HypercolumnHead, HypercolumnRoIPooler
from minimtl.modeling.precision import full_precision
from minimtl.modeling.semantic_head import SemanticFPNHead, semantic_loss, semantic_predictions
from minimtl.models.rcnn import RCNN, RCNNConfig, check_target_count, check_targets

# Which loss terms make up each task.
TASK_TERMS = {
    "detection": ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"),
    "instance": ("loss_mask",),
    "semantic": ("loss_semantic",),
}


@dataclass
class MultiTaskConfig(RCNNConfig):
    detection: bool = True  # RPN + box head
    masks: bool | None = None  # the instance mask head, which needs detection; None: = detection
    mask_features: str = "level"  # level: one FPN level per box (FPN eq. 1); hypercolumn: all levels
    semantic: bool = True
    semantic_head: str = "fpn"  # fpn (Panoptic FPN's, on P2..P5) or hypercolumn (on C2..C5)
    semantic_channels: int = 128
    num_semantic_classes: int | None = None  # None: num_classes (class 0 the background)
    loss_strategy: str = "fixed"  # fixed, uncertainty, dwa, gradnorm (see MultiTaskLoss)
    loss_weights: dict[str, float] | None = None  # fixed weights per task (default 1 each)
    loss_options: dict = field(default_factory=dict)  # e.g. {"dwa_period": 50, "gradnorm_alpha": 1.5}

    def __post_init__(self):
        if self.masks is None:
            self.masks = self.detection
        super().__post_init__()
        if not (self.detection or self.semantic):
            raise ValueError("MultiTaskConfig: at least one of detection and semantic must be on")
        if self.masks and not self.detection:
            raise ValueError("MultiTaskConfig: masks (instance segmentation) needs detection=True")
        if self.mask_features not in ("level", "hypercolumn"):
            raise ValueError(f"mask_features must be 'level' or 'hypercolumn', got {self.mask_features!r}")
        if self.semantic_head not in ("fpn", "hypercolumn"):
            raise ValueError(f"semantic_head must be 'fpn' or 'hypercolumn', got {self.semantic_head!r}")

    @property
    def tasks(self) -> list[str]:
        on = {"detection": self.detection, "instance": self.masks, "semantic": self.semantic}
        return [task for task in TASK_TERMS if on[task]]


class MultiTaskRCNN(RCNN):
    def __init__(self, config: MultiTaskConfig):
        super().__init__(config)  # backbone, FPN, RPN, box (and mask) heads
        c = self.config
        if not c.detection:
            self.rpn = self.roi_heads = None
            if c.semantic_head == "hypercolumn":  # nothing reads the pyramid
                self.fpn = None
        elif c.masks and c.mask_features == "hypercolumn":
            self.roi_heads.mask_head.pooler = HypercolumnRoIPooler(c.fpn_channels, 4, c.mask_roi_size, 2, c.roi_aligned)
        self.semantic_head = None
        if c.semantic:
            num_semantic = c.num_semantic_classes or c.num_classes
            if c.semantic_head == "fpn":
                self.semantic_head = SemanticFPNHead(c.fpn_channels, num_semantic, c.semantic_channels)
            else:
                self.semantic_head = HypercolumnHead(self.backbone.out_channels, num_semantic, c.semantic_channels)
        self.loss_weighting = MultiTaskLoss(c.tasks, c.loss_strategy, c.loss_weights, **c.loss_options)
        if c.loss_strategy == "gradnorm":
            self.loss_weighting.set_shared_parameters(list(self.backbone.layer4.parameters()))
        if c.channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        c = self.config
        if self.training:
            check_multitask_targets(targets, images, c)
        batch, image_sizes, original_sizes, targets = self.batch_images(images, targets)
        levels = self.backbone(batch)  # C2..C5
        features = self.fpn(levels) if self.fpn is not None else None  # P2..P6
        losses, outputs = {}, [{} for _ in images]
        if c.detection:
            detections, rpn_losses, head_losses = self.detection_heads(batch, image_sizes, features, targets)
            if self.training:
                losses.update(rpn_losses)
                losses.update(head_losses)
            else:
                outputs = self.transform.postprocess(detections, image_sizes, original_sizes)
        if c.semantic:
            inputs = features[:4] if c.semantic_head == "fpn" else levels
            logits = full_precision(self.semantic_head(inputs))  # (N, S, Hb/4, Wb/4)
            batch_size = tuple(batch.shape[-2:])
            if self.training:
                losses["loss_semantic"] = semantic_loss(logits, targets, batch_size)
            else:
                labels = semantic_predictions(logits, batch_size, image_sizes, original_sizes)
                for out, image_labels in zip(outputs, labels, strict=True):
                    out["semantic"] = image_labels
        return losses if self.training else outputs

    def task_losses(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        """The loss terms grouped by task: {task: sum of its terms}."""
        return {task: sum(losses[term] for term in TASK_TERMS[task]) for task in self.config.tasks}

    def total_loss(self, losses: dict[str, Tensor]) -> Tensor:
        """L = MultiTaskLoss(task losses): what the trainer backpropagates."""
        return self.loss_weighting(self.task_losses(losses))

    def loss_weights(self) -> dict[str, float]:
        return self.loss_weighting.weights()


def check_multitask_targets(targets, images: list[Tensor], config: MultiTaskConfig) -> None:
    if config.detection:
        check_targets(targets, len(images), config)
    else:
        check_target_count(targets, len(images))
    if config.semantic:
        for i, (t, image) in enumerate(zip(targets, images, strict=True)):
            if "semantic" not in t:
                raise ValueError(f"targets[{i}] is missing 'semantic' (an (H, W) int64 label map)")
            semantic = t["semantic"]
            if semantic.dtype != torch.int64 or semantic.shape != image.shape[-2:]:
                raise ValueError(
                    f"targets[{i}]['semantic'] must be int64 of the image's size {tuple(image.shape[-2:])}, got "
                    f"{semantic.dtype} {tuple(semantic.shape)}"
                )
