"""Multi-label image classification metrics: mean average precision over classes, and exact match.

Each of N images has a score s_nk in [0, 1] for each of the K foreground classes and a truth
y_nk = 1 when class k is in the image (else 0).

AP of class k: rank the N images by s_nk, highest first. With P_k = sum_n y_nk positives, and the
precision and recall at a threshold t, Prec(t) = TP(t) / (TP(t) + FP(t)) and Rec(t) = TP(t) / P_k
over the images with s_nk >= t,

    AP_k = sum_j (Rec(t_j) - Rec(t_(j-1))) Prec(t_j)      over the distinct scores t_1 > t_2 > ...

the area under the precision-recall curve as a step function, without interpolation (what
scikit-learn's average_precision_score computes). With no ties it is the mean, over the positives,
of the precision at each positive's rank: AP_k = 1/P_k sum_{n: y_nk = 1} Prec@rank(n). Tied scores
count as one threshold, so the order of tied images does not matter.

mAP = mean of AP_k over the classes present in at least one image (P_k > 0). A class that no image
has (P_k = 0) has no AP (every ranking is as good): it is left out of the mean, its AP nan, and
counted in "num_absent".

Exact match (subset accuracy): the fraction of images whose every class is decided right at the
threshold, [s_nk > threshold] = y_nk for all k.

Shapes: scores (N, K) float; present (N, K) bool or 0/1.
"""

import math

import torch
from torch import Tensor


def average_precision(scores: Tensor, present: Tensor) -> float:
    """AP of one class: scores (N,) against present (N,); nan when no image has the class."""
    if scores.dim() != 1 or scores.shape != present.shape:
        raise ValueError(
            f"average_precision: scores and present must both be (N,), got {tuple(scores.shape)} and "
            f"{tuple(present.shape)}"
        )
    present = present.bool()
    positives = int(present.sum())
    if positives == 0:
        return math.nan
    order = torch.argsort(scores, descending=True, stable=True)
    sorted_scores, hits = scores[order], present[order].double()  # (N,), (N,)
    tp, fp = torch.cumsum(hits, 0), torch.cumsum(1 - hits, 0)  # at each rank
    last = torch.ones_like(present)  # the last image of each run of equal scores: one threshold
    last[:-1] = sorted_scores[1:] != sorted_scores[:-1]
    tp, fp = tp[last], fp[last]  # (T,) at the distinct thresholds
    precision = tp / (tp + fp)
    recall_step = torch.diff(tp, prepend=tp.new_zeros(1)) / positives  # Rec(t_j) - Rec(t_(j-1))
    return float((recall_step * precision).sum())


def multilabel_metrics(scores: Tensor, present: Tensor, threshold: float = 0.5) -> dict:
    """{"mAP", "AP" (K per-class list, nan where absent), "num_absent", "exact_match", "num_images"}."""
    if scores.dim() != 2 or scores.shape != present.shape:
        raise ValueError(
            f"multilabel_metrics: scores and present must both be (N, K), got {tuple(scores.shape)} and "
            f"{tuple(present.shape)}"
        )
    scores, present = scores.detach().double().cpu(), present.detach().bool().cpu()
    ap = [average_precision(scores[:, k], present[:, k]) for k in range(scores.shape[1])]  # K
    counted = [a for a in ap if not math.isnan(a)]
    decided = (scores > threshold) == present  # (N, K)
    return {
        "mAP": sum(counted) / len(counted) if counted else math.nan,
        "AP": ap,
        "num_absent": len(ap) - len(counted),
        "exact_match": float(decided.all(dim=1).double().mean()) if len(scores) else math.nan,
        "num_images": len(scores),
    }
