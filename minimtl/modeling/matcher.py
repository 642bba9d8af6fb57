"""Matching predictions to ground truth by IoU (Faster R-CNN section 3.1.2).

Each anchor (or proposal) is matched to the ground-truth box it overlaps most, and labelled by
that IoU: foreground if IoU >= high, background if IoU < low, ignored in between (it teaches
nothing clear either way). With allow_low_quality_matches (the RPN's rule (i)), every ground-truth
box also claims the anchors that overlap it best, even below `high`, so that no object is left
without a positive anchor.

Shapes: G ground-truth boxes, P predictions; quality (G, P) -> matches (P,) int64, the index of
the matched ground truth, or BELOW_LOW_THRESHOLD (-1) / BETWEEN_THRESHOLDS (-2).
"""

import torch
from torch import Tensor


class Matcher:
    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(self, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = False):
        if low_threshold > high_threshold:
            raise ValueError(f"matcher: low_threshold {low_threshold} must be <= high_threshold {high_threshold}")
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, quality: Tensor) -> Tensor:
        """quality[g, p]: IoU of ground truth g and prediction p. (G, P) -> (P,) int64."""
        if quality.shape[0] == 0:  # no ground truth: everything is background
            return torch.full((quality.shape[1],), self.BELOW_LOW_THRESHOLD, dtype=torch.int64, device=quality.device)
        if quality.shape[1] == 0:
            return torch.empty((0,), dtype=torch.int64, device=quality.device)
        best_quality, matches = quality.max(dim=0)  # (P,), (P,): ties go to the first ground truth
        best_any = matches.clone() if self.allow_low_quality_matches else None
        matches[best_quality < self.low_threshold] = self.BELOW_LOW_THRESHOLD
        between = (best_quality >= self.low_threshold) & (best_quality < self.high_threshold)
        matches[between] = self.BETWEEN_THRESHOLDS
        if best_any is not None:
            # Each ground truth's best predictions (all of them, on a tie) keep their match. A
            # ground truth that overlaps nothing (best 0) claims nothing: otherwise every
            # prediction at IoU 0 would tie for its best and turn positive (torchvision's matcher
            # does that; a GT box outside all anchors then makes the whole image foreground).
            best_per_gt = quality.max(dim=1).values  # (G,)
            _, predictions = torch.where((quality == best_per_gt[:, None]) & (best_per_gt[:, None] > 0))
            matches[predictions] = best_any[predictions]
        return matches
