"""Data augmentation for detection: every transform moves the targets with the image.

A transform is called as transform(image, target, generator) -> (image, target): the image is
(3, H, W) float in [0, 1]; the target holds "boxes" (K, 4) xyxy and optionally "masks" (K, H, W)
and "semantic" (H, W). Randomness comes only from `generator`, so an augmented sample is
reproducible (the datasets seed it from the sample's index).
"""

import torch
from torch import Tensor


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image: Tensor, target: dict, generator: torch.Generator):
        for transform in self.transforms:
            image, target = transform(image, target, generator)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


def _draw(generator: torch.Generator) -> float:
    return float(torch.rand((), generator=generator))


class RandomHorizontalFlip:
    """Mirror left-right with probability p: x -> W - x, so a box (x1, y1, x2, y2) -> (W - x2, y1, W - x1, y2)."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image, target, generator):
        if _draw(generator) >= self.p:
            return image, target
        width = image.shape[-1]
        target = dict(target)
        boxes = target["boxes"]
        target["boxes"] = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
        for key in ("masks", "semantic"):
            if key in target:
                target[key] = target[key].flip(-1)
        return image.flip(-1), target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class ColorJitter:
    """Random brightness, contrast and saturation factors in [1 - x, 1 + x]; the targets do not move."""

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2, saturation: float = 0.2):
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation

    def __call__(self, image, target, generator):
        def factor(amount):
            return 1 + amount * (2 * _draw(generator) - 1)

        image = image * factor(self.brightness)
        mean = image.mean()
        image = (image - mean) * factor(self.contrast) + mean
        grey = image.mean(dim=0, keepdim=True)
        image = (image - grey) * factor(self.saturation) + grey
        return image.clamp(0, 1), target

    def __repr__(self) -> str:
        return f"ColorJitter({self.brightness}, {self.contrast}, {self.saturation})"


def default_train_transforms() -> Compose:
    return Compose([RandomHorizontalFlip(0.5), ColorJitter(0.2, 0.2, 0.2)])
