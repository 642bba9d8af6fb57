"""Hypercolumns (Hariharan, Arbelaez, Girshick & Malik, "Hypercolumns for Object Segmentation and
Fine-grained Localization", CVPR 2015, sections 3.1-3.2).

A CNN's early layers say *where* an edge is but not *what* it belongs to; its late layers say
what, but only coarsely where. The hypercolumn of a pixel is the stack of the activations of all
layers above that pixel (each map upsampled to the pixel's resolution), so that one classifier
sees both:

    h(p) = [ up(F_1)(p), up(F_2)(p), ..., up(F_L)(p) ]             (concatenation)
    logits(p) = W h(p) + b = sum_l W_l up(F_l)(p) + b               (a linear classifier)

Because upsampling and a 1x1 linear map commute, the classifier on the concatenation equals a 1x1
conv on each level, upsampled and summed (section 3.2) - which is how it is computed here, at the
cost of the small maps instead of the large one. A nonlinearity after the sum turns the linear
classifier into a small per-pixel MLP (the paper's fine-tuned variant).

Two uses:
* HypercolumnHead: semantic segmentation of the whole image from the backbone's C2..C5.
* HypercolumnRoIPooler: the mask head's input for each box taken from every pyramid level at once
  (section 3.3, "hypercolumns inside boxes"), instead of from the one level FPN's eq. 1 picks.

Shapes: N images; levels l with (N, C_l, H_l, W_l) maps, the first the finest (stride s_0);
K boxes; D hidden channels; S semantic classes.
"""

import torch.nn.functional as F
from torch import Tensor, nn

from minimtl import ops
from minimtl.modeling.poolers import level_scales


class HypercolumnHead(nn.Module):
    """Per-pixel classifier on hypercolumns: levels (N, C_l, H_l, W_l) -> logits (N, S, H_0, W_0).

    Each level is projected by a 1x1 conv to D channels and upsampled (bilinearly) to the finest
    level's size; the sum, after ReLU, goes through a 1x1 conv (D -> D), ReLU and a 1x1 classifier.
    """

    def __init__(self, in_channels: list[int], num_classes: int, channels: int = 128):
        super().__init__()
        self.projections = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.hidden = nn.Conv2d(channels, channels, 1)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        for conv in [*self.projections, self.hidden]:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def hypercolumns(self, features: list[Tensor]) -> Tensor:
        """sum_l up(W_l F_l): (N, D, H_0, W_0), the (projected) hypercolumn of every pixel."""
        size = features[0].shape[-2:]
        columns = self.projections[0](features[0])  # (N, D, H_0, W_0)
        for projection, feature in zip(self.projections[1:], features[1:], strict=True):
            columns = columns + F.interpolate(projection(feature), size=size, mode="bilinear", align_corners=False)
        return columns

    def forward(self, features: list[Tensor]) -> Tensor:
        if len(features) != len(self.projections):
            raise ValueError(f"HypercolumnHead: expected {len(self.projections)} levels, got {len(features)}")
        hidden = F.relu(self.hidden(F.relu(self.hypercolumns(features))))
        return self.classifier(hidden)  # (N, S, H_0, W_0)


class HypercolumnRoIPooler(nn.Module):
    """forward(levels, boxes per image, image sizes) -> (K, D, ph, pw): every level pooled per box.

    Each box is RoI-aligned from each level at that level's scale, projected by the level's 1x1
    conv and the results summed: the box's hypercolumns. A drop-in replacement for
    MultiScaleRoIAlign in the mask head (same call), with D = out_channels.
    """

    def __init__(self, in_channels: int, num_levels: int, output_size: int, sampling_ratio=2, aligned=False):
        super().__init__()
        self.output_size = (output_size, output_size)
        self.sampling_ratio, self.aligned = sampling_ratio, aligned
        self.projections = nn.ModuleList(nn.Conv2d(in_channels, in_channels, 1) for _ in range(num_levels))
        for conv in self.projections:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)

    def forward(self, features: list[Tensor], boxes: list[Tensor], image_sizes: list[tuple[int, int]]) -> Tensor:
        if len(features) != len(self.projections):
            raise ValueError(f"HypercolumnRoIPooler: expected {len(self.projections)} levels, got {len(features)}")
        rois = ops.boxes_to_rois(list(boxes), like=features[0])  # (K, 5)
        pooled = 0
        for projection, feature, scale in zip(
            self.projections, features, level_scales(features, image_sizes), strict=True
        ):
            level = ops.roi_align(  # indices made by boxes_to_rois: nothing to check
                feature, rois, self.output_size, scale, self.sampling_ratio, self.aligned, check_indices=False
            )
            pooled = pooled + projection(level)  # (K, D, ph, pw)
        return F.relu(pooled)
