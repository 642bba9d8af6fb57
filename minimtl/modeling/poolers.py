"""Multi-scale RoIAlign: each RoI is pooled from the pyramid level that suits its size (FPN eq. 1).

A large box is best seen on a coarse level, a small one on a fine level. FPN assigns a box of
width w and height h (in image pixels) to level

    k = floor(k0 + log2(sqrt(w * h) / 224)),  clamped to [k_min, k_max],

with k0 = 4: a 224 x 224 box (an ImageNet-sized object) goes to P4, one half as wide to P3. Each
level's RoIs are then pooled with RoIAlign (minimtl.ops.roi_align) at that level's scale,
1 / 2^k; the level's scale is inferred from the sizes, rounded to a power of 2.

Shapes: N images, K RoIs over the whole batch, levels l with (N, C, Hl, Wl) maps ->
(K, C, ph, pw), in the order the boxes are given (image by image).
"""

import math

import torch
from torch import Tensor, nn

from minimtl import ops


class LevelMapper:
    """FPN eq. 1: the pyramid level of each box, as an index into the pooled levels (0 = k_min)."""

    def __init__(self, k_min: int, k_max: int, canonical_size: int = 224, canonical_level: int = 4, eps=1e-6):
        self.k_min, self.k_max = k_min, k_max
        self.canonical_size, self.canonical_level = canonical_size, canonical_level
        self.eps = eps

    def __call__(self, boxes: Tensor) -> Tensor:
        """(K, 4) -> (K,) int64 in [0, k_max - k_min]. eps: a box of exactly 224 px lands on level 4."""
        sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        levels = torch.floor(
            self.canonical_level + torch.log2(sizes / self.canonical_size) + torch.tensor(self.eps, dtype=sizes.dtype)
        )
        return torch.clamp(levels, min=self.k_min, max=self.k_max).to(torch.int64) - self.k_min


def infer_scale(feature_size: tuple[int, int], image_size: tuple[int, int]) -> float:
    """A level's scale: its size over the image's, rounded to a power of two (1/4, 1/8, ...)."""
    return 2.0 ** round(math.log2(feature_size[0] / image_size[0]))


def level_scales(features: list[Tensor], image_sizes: list[tuple[int, int]]) -> list[float]:
    """Each level's scale. The largest image of the batch defines them (the padded area holds no boxes)."""
    largest = (max(s[0] for s in image_sizes), max(s[1] for s in image_sizes))
    return [infer_scale(f.shape[-2:], largest) for f in features]


class MultiScaleRoIAlign(nn.Module):
    """forward(features of the pooled levels, boxes per image, image sizes) -> (K, C, ph, pw).

    Args:
        output_size: ph (= pw), or (ph, pw): 7 for the box head, 14 for the mask head.
        sampling_ratio: RoIAlign's samples per bin side (2 in Mask R-CNN).
        aligned: RoIAlign's half-pixel shift (torchvision: False; detectron2: True).
    """

    def __init__(
        self, output_size, sampling_ratio: int = 2, aligned: bool = False, canonical_size=224, canonical_level=4
    ):
        super().__init__()
        self.output_size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        self.sampling_ratio, self.aligned = sampling_ratio, aligned
        self.canonical_size, self.canonical_level = canonical_size, canonical_level

    def forward(self, features: list[Tensor], boxes: list[Tensor], image_sizes: list[tuple[int, int]]) -> Tensor:
        scales = level_scales(features, image_sizes)
        rois = ops.boxes_to_rois([b for b in boxes], like=features[0])  # (K, 5)
        if len(features) == 1:
            return ops.roi_align(
                features[0], rois, self.output_size, scales[0], self.sampling_ratio, self.aligned, check_indices=False
            )  # indices made by boxes_to_rois: valid, nothing to check (no wait for the GPU)
        mapper = LevelMapper(
            round(-math.log2(scales[0])), round(-math.log2(scales[-1])), self.canonical_size, self.canonical_level
        )
        levels = mapper(rois[:, 1:])  # (K,)
        first = features[0]
        out = first.new_zeros((len(rois), first.shape[1]) + self.output_size)  # (K, C, ph, pw)
        for level, (feature, scale) in enumerate(zip(features, scales, strict=True)):
            index = torch.where(levels == level)[0]
            if len(index):
                out[index] = ops.roi_align(
                    feature,
                    rois[index],
                    self.output_size,
                    scale,
                    self.sampling_ratio,
                    self.aligned,
                    check_indices=False,
                )
        return out
