"""Sigmoid focal loss (Lin, Goyal, Girshick, He & Dollár, "Focal Loss for Dense Object Detection",
ICCV 2017 — RetinaNet — section 3, eqs. 4-5).

A dense detector sees ~100k anchors per image, nearly all easy background. Summed, their small
cross-entropies drown the few hard examples. The focal loss scales each term down by how easy it is:
    p_t = p if y = 1 else 1 - p                      (p = sigmoid(x), the probability of the true label)
    FL(p_t) = -α_t (1 - p_t)^γ log(p_t)              α_t = α if y = 1 else 1 - α
γ = 0 and α < 0 (no α weighting) give plain binary cross-entropy; the paper uses γ = 2, α = 0.25.
-log(p_t) is computed by binary_cross_entropy_with_logits, which is stable for large |x|
(log(sigmoid(x)) would round to log(0) = -inf).

Same signature and semantics as torchvision.ops.sigmoid_focal_loss; there the mean of no elements
is NaN, here it is 0 (still part of the graph).

Shapes: any; inputs (logits) and targets (in [0, 1], usually 0/1) have the same shape (*) -> (*),
or a scalar with reduction "mean"/"sum".
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from minimtl.losses.box import _reduce


def sigmoid_focal_loss(
    inputs: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "none"
) -> Tensor:
    """Focal loss of each logit in `inputs` against the binary label in `targets`; alpha < 0 disables α_t."""
    if inputs.shape != targets.shape:
        raise ValueError(
            f"sigmoid_focal_loss: inputs and targets must have the same shape, got {tuple(inputs.shape)} and "
            f"{tuple(targets.shape)}"
        )
    if alpha > 1:
        raise ValueError(f"sigmoid_focal_loss: alpha must be in [0, 1] (or negative to disable it), got {alpha}")
    if gamma < 0:
        raise ValueError(f"sigmoid_focal_loss: gamma must be >= 0, got {gamma}")
    targets = targets.to(inputs.dtype)
    p = torch.sigmoid(inputs)
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")  # -log(p_t)
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return _reduce(loss, reduction, "sigmoid_focal_loss")
