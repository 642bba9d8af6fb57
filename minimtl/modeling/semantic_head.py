"""The semantic segmentation branch of Panoptic FPN (Kirillov, Girshick, He & Dollar, "Panoptic
Feature Pyramid Networks", CVPR 2019, section 3.2 and figure 3), and what every semantic head
shares: targets, loss and predictions at the image's size.

Each pyramid level P2..P5 (strides 4..32) is brought to stride 4 by a chain of stages, one per
factor of 2, each a 3x3 conv (128 channels), GroupNorm, ReLU and a 2x bilinear upsampling (P2
gets one stage without upsampling). The four maps are summed, a 1x1 conv gives the logits of
each class, and a 4x bilinear upsampling brings them to the image:

    logits = up4( conv1x1( sum_l stages_l(P_l) ) )

Loss: per-pixel cross-entropy against the semantic label map (0 = background), the padding the
batch adds around each image ignored.

Shapes: N images; levels (N, C, H/s, W/s) for s = 4, 8, 16, 32; D channels; S classes;
batch (Hb, Wb); labels (N, Hb, Wb) int64, IGNORE where there is no label.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minimtl.losses import pixel_cross_entropy

IGNORE = 255  # the label of pixels that count for nothing (the padding)


class SemanticFPNHead(nn.Module):
    """levels P2..P5 (N, C, H_l, W_l) -> logits (N, S, H_2, W_2) at the finest level's stride."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 128, num_levels: int = 4):
        super().__init__()
        self.stages = nn.ModuleList()
        for level in range(num_levels):  # level 0 is P2: one stage, no upsampling; level l: l stages
            layers = []
            for k in range(max(level, 1)):
                layers += [
                    nn.Conv2d(in_channels if k == 0 else channels, channels, 3, padding=1, bias=False),
                    nn.GroupNorm(math.gcd(32, channels), channels),
                    nn.ReLU(inplace=True),
                ]
                if level > 0:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.stages.append(nn.Sequential(*layers))
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m is not self.classifier:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, features: list[Tensor]) -> Tensor:
        if len(features) != len(self.stages):
            raise ValueError(f"SemanticFPNHead: expected {len(self.stages)} levels, got {len(features)}")
        size = features[0].shape[-2:]
        summed = 0
        for stage, feature in zip(self.stages, features, strict=True):
            x = stage(feature)
            if x.shape[-2:] != size:  # odd sizes: 2x upsampling can miss the finest map by a pixel
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            summed = summed + x
        return self.classifier(summed)  # (N, S, H_2, W_2)


def semantic_labels(targets: list[dict[str, Tensor]], batch_size: tuple[int, int]) -> Tensor:
    """Each target's "semantic" (h, w) map, padded with IGNORE to the batch: (N, Hb, Wb) int64."""
    labels = torch.full((len(targets), *batch_size), IGNORE, dtype=torch.int64, device=targets[0]["semantic"].device)
    for slot, t in zip(labels, targets, strict=True):
        h, w = t["semantic"].shape
        slot[:h, :w] = t["semantic"]
    return labels


def semantic_loss(logits: Tensor, targets: list[dict[str, Tensor]], batch_size: tuple[int, int]) -> Tensor:
    """Cross-entropy of (N, S, h, w) logits, upsampled to the batch (Hb, Wb), against the padded labels."""
    labels = semantic_labels(targets, batch_size)
    logits = F.interpolate(logits, size=batch_size, mode="bilinear", align_corners=False)
    return pixel_cross_entropy(logits.float(), labels, ignore_index=IGNORE)


def semantic_predictions(
    logits: Tensor, batch_size: tuple[int, int], image_sizes: list[tuple[int, int]], original_sizes
) -> list[Tensor]:
    """Per image, the label of each pixel at the original size: (N, S, h, w) -> [(H, W) int64]."""
    logits = F.interpolate(logits, size=batch_size, mode="bilinear", align_corners=False)  # (N, S, Hb, Wb)
    out = []
    for image_logits, (h, w), original in zip(logits, image_sizes, original_sizes, strict=True):
        image_logits = image_logits[None, :, :h, :w]  # this image, without the padding
        if (h, w) != tuple(original):
            image_logits = F.interpolate(image_logits, size=original, mode="bilinear", align_corners=False)
        out.append(image_logits[0].argmax(dim=0))
    return out
