"""One network, several tasks: detection, instance masks, semantic segmentation and multi-label image
classification on a shared ResNet-FPN, their losses combined by minimtl.losses.MultiTaskLoss.

    images -> ImageTransform -> ResNet (C2..C5) -> FPN (P2..P6)
        detection:  RPN -> box head                     (tasks["detection"] = RPN + box losses)
        instance:   mask head on the detections' boxes  (tasks["instance"]  = mask loss)
        semantic:   SemanticFPNHead(P2..P5) or HypercolumnHead(C2..C5)
                                                        (tasks["semantic"]  = per-pixel CE)
        image:      ImageClassificationHead(P2..P5)     (tasks["image"]     = per-class BCE)
    L = MultiTaskLoss({task: L_task})  =  sum_i alpha_i L_i  (fixed, uncertainty, DWA or GradNorm)

Every head is switched on or off in MultiTaskConfig (detection, masks, semantic,
image_classification); with semantic off (and image_classification off, its default) it is exactly
RCNN. In training, forward returns the individual loss terms (for the log); `total_loss(losses)`
combines them, and the trainer uses it when the model has one. In eval mode each image's dict has
the detections (as RCNN's), "semantic" (H, W) int64 labels and "image_scores" (C-1,) the probability
that each foreground class 1..C-1 is in the image.

GradNorm needs the last layer every head shares: the backbone's last stage (C5 feeds the FPN, hence
the detection, mask and image heads, and both semantic heads).
"""

from dataclasses import dataclass, field

import torch
from torch import Tensor

from minimtl.losses import MultiTaskLoss
from minimtl.modeling.hypercolumn import HypercolumnHead, HypercolumnRoIPooler
from minimtl.modeling.image_head import ImageClassificationHead, image_loss
from minimtl.modeling.precision import full_precision
from minimtl.modeling.semantic_head import SemanticFPNHead, semantic_loss, semantic_predictions
from minimtl.models.rcnn import RCNN, RCNNConfig, check_target_count, check_targets

# Which loss terms make up each task.
TASK_TERMS = {
    "detection": ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"),
    "instance": ("loss_mask",),
    "semantic": ("loss_semantic",),
    "image": ("loss_image",),
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
    image_classification: bool = False  # which classes are in the image (multi-label, on P2..P5)
    image_channels: int = 256  # the image head's hidden layer
    loss_strategy: str = "fixed"  # fixed, uncertainty, dwa, gradnorm (see MultiTaskLoss)
    loss_weights: dict[str, float] | None = None  # fixed weights per task (default 1 each)
    loss_options: dict = field(default_factory=dict)  # e.g. {"dwa_period": 50, "gradnorm_alpha": 1.5}

    def __post_init__(self):
        if self.masks is None:
            self.masks = self.detection
        super().__post_init__()
        if not (self.detection or self.semantic or self.image_classification):
            raise ValueError(
                "MultiTaskConfig: at least one of detection and semantic (or image_classification) must be on"
            )
        if self.masks and not self.detection:
            raise ValueError("MultiTaskConfig: masks (instance segmentation) needs detection=True")
        if self.mask_features not in ("level", "hypercolumn"):
            raise ValueError(f"mask_features must be 'level' or 'hypercolumn', got {self.mask_features!r}")
        if self.semantic_head not in ("fpn", "hypercolumn"):
            raise ValueError(f"semantic_head must be 'fpn' or 'hypercolumn', got {self.semantic_head!r}")
        if not (isinstance(self.image_channels, int) and self.image_channels >= 1):
            raise ValueError(
                f"image_channels must be an int >= 1 (the image head's hidden units), got {self.image_channels!r}"
            )

    @property
    def tasks(self) -> list[str]:
        on = {
            "detection": self.detection,
            "instance": self.masks,
            "semantic": self.semantic,
            "image": self.image_classification,
        }
        return [task for task in TASK_TERMS if on[task]]


class MultiTaskRCNN(RCNN):
    def __init__(self, config: MultiTaskConfig):
        super().__init__(config)  # backbone, FPN, RPN, box (and mask) heads
        c = self.config
        if not c.detection:
            self.rpn = self.roi_heads = None
            if c.semantic_head == "hypercolumn" and not c.image_classification:  # nothing reads the pyramid
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
        self.image_head = None  # no parameters when off: the state dict of the other tasks is unchanged
        if c.image_classification:
            self.image_head = ImageClassificationHead(c.fpn_channels, c.num_classes - 1, c.image_channels)
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
        if c.image_classification:
            logits = full_precision(self.image_head(features[:4], image_sizes, tuple(batch.shape[-2:])))  # (N, C-1)
            if self.training:
                losses["loss_image"] = image_loss(logits, targets)
            else:
                for out, scores in zip(outputs, torch.sigmoid(logits), strict=True):
                    out["image_scores"] = scores  # (C-1,)
        return losses if self.training else outputs

    @torch.no_grad()
    def classify(self, images: list[Tensor]) -> Tensor:
        """The image head alone (backbone, FPN, head; no detection, masks or semantic map): (N, C-1)
        probabilities that each foreground class is in each image. Puts the model in eval mode."""
        if self.image_head is None:
            raise ValueError(
                "MultiTaskRCNN.classify: the model has no image head; build it with image_classification=True"
            )
        self.eval()
        batch, image_sizes, _, _ = self.batch_images(images, None)
        features = self.fpn(self.backbone(batch))  # P2..P6
        logits = self.image_head(features[:4], image_sizes, tuple(batch.shape[-2:]))  # (N, C-1)
        return torch.sigmoid(full_precision(logits))

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
    if config.image_classification and not config.detection:  # check_targets has checked the labels
        for i, t in enumerate(targets):
            labels = t.get("labels")
            if labels is None or labels.dtype != torch.int64 or labels.dim() != 1:
                got = "nothing" if labels is None else f"{labels.dtype} {tuple(labels.shape)}"
                raise ValueError(
                    f"targets[{i}]['labels'] must be an int64 (G,) tensor (image classification), got {got}"
                )
            if len(labels) and not ((labels >= 1) & (labels < config.num_classes)).all():
                raise ValueError(f"targets[{i}]['labels'] must be in [1, {config.num_classes}), got {labels.tolist()}")
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
