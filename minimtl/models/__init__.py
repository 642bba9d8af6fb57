"""Detection models: Faster R-CNN and Mask R-CNN with ResNet-FPN backbones.

    model = minimtl.models.maskrcnn_resnet50_fpn(num_classes=91)
    model = minimtl.models.maskrcnn_resnet18_fpn(num_classes=4, min_size=256, max_size=256)

Every keyword is a field of RCNNConfig (min_size and max_size as in torchvision). MultiTaskRCNN
(minimtl/models/multitask.py) adds a semantic segmentation head and the multi-task loss weighting.
load_backbone_weights(model, "resnet50.pth") starts the backbone from an ImageNet checkpoint
(minimtl/models/pretrained.py).
"""

from minimtl.models.convert import convert_torchvision_state_dict
from minimtl.models.multitask import MultiTaskConfig, MultiTaskRCNN
from minimtl.models.pretrained import load_backbone_weights
from minimtl.models.rcnn import RCNN, RCNNConfig


def build(num_classes: int, backbone: str, masks: bool, **config) -> RCNN:
    unknown = set(config) - RCNNConfig.field_names()
    if unknown:
        raise TypeError(f"unknown settings {sorted(unknown)}; RCNNConfig has {sorted(RCNNConfig.field_names())}")
    return RCNN(RCNNConfig(num_classes=num_classes, backbone=backbone, masks=masks, **config))


def maskrcnn_resnet50_fpn(num_classes: int, **config) -> RCNN:
    return build(num_classes, "resnet50", True, **config)


def maskrcnn_resnet18_fpn(num_classes: int, **config) -> RCNN:
    return build(num_classes, "resnet18", True, **config)


def fasterrcnn_resnet50_fpn(num_classes: int, **config) -> RCNN:
    return build(num_classes, "resnet50", False, **config)


def fasterrcnn_resnet18_fpn(num_classes: int, **config) -> RCNN:
    return build(num_classes, "resnet18", False, **config)


__all__ = [
    "MultiTaskConfig",
    "MultiTaskRCNN",
    "RCNN",
    "RCNNConfig",
    "build",
    "convert_torchvision_state_dict",
    "fasterrcnn_resnet18_fpn",
    "fasterrcnn_resnet50_fpn",
    "load_backbone_weights",
    "maskrcnn_resnet18_fpn",
    "maskrcnn_resnet50_fpn",
]
