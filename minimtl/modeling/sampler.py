"""Balanced sampling of training examples (Faster R-CNN section 3.1.3; Fast R-CNN section 2.3).

An image has tens of thousands of anchors, nearly all background. The losses are computed on a
random sample of `batch_size_per_image` of them, with at most `positive_fraction` foreground; when
there are too few positives, negatives fill the rest.

Shapes: P predictions; labels (P,): > 0 foreground, 0 background, < 0 ignored -> two (P,) bool
masks, the sampled positives and the sampled negatives.
"""

import torch
from torch import Tensor


class BalancedPositiveNegativeSampler:
    def __init__(self, batch_size_per_image: int, positive_fraction: float):
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def __call__(self, labels: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        positive = torch.where(labels >= 1)[0]
        negative = torch.where(labels == 0)[0]
        num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
        num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)
        pos = positive[torch.randperm(positive.numel(), device=positive.device, generator=generator)[:num_pos]]
        neg = negative[torch.randperm(negative.numel(), device=negative.device, generator=generator)[:num_neg]]
        pos_mask = torch.zeros_like(labels, dtype=torch.bool)
        neg_mask = torch.zeros_like(labels, dtype=torch.bool)
        pos_mask[pos] = True
        neg_mask[neg] = True
        return pos_mask, neg_mask
