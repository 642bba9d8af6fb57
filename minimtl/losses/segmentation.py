"""Semantic segmentation losses: per-pixel cross-entropy and the soft Dice loss.

Pixel cross-entropy (the FCN loss; Long, Shelhamer & Darrell, CVPR 2015, section 3): for pixel p with
true class y_p and logits z_p (C,),
    CE_p = -w[y_p] log softmax(z_p)[y_p]
    mean = Σ_p CE_p / Σ_p w[y_p]                  over the pixels whose label is not ignore_index
(the weighted mean of F.cross_entropy; w = 1 without class weights). Written out with log_softmax
and gather, so one can see what F.cross_entropy does. Where F.cross_entropy returns NaN (every pixel
ignored: 0/0) this returns 0, still part of the graph, so one unlabelled batch does not end a run.

Soft Dice loss (Milletari, Navab & Ahmadi, "V-Net", 3DV 2016, section 3, eq. 1), on the softmax
probabilities P and the one-hot targets G, for each image n and class c:
    dice[n, c] = 1 - (2 Σ_p P·G + eps) / (Σ_p P + Σ_p G + eps)
Ignored pixels count in neither P nor G. Convention: "mean" averages over ALL (image, class) pairs,
present or not. A class absent from an image (Σ G = 0) then costs Σ P / (Σ P + eps): 0 when the model
predicts none of it, towards 1 as it predicts more; so false positives are penalised, which averaging
over present classes only would not do. That is why eps (Laplace smoothing) must be > 0: with eps = 0
an absent class that is not predicted is 0/0. (V-Net squares P and G in the denominator; with a
one-hot G and P in [0, 1] we use the plain sums, the common form since.)
`binary_dice_loss` is the same for one foreground channel: sigmoid probabilities vs {0, 1} masks.

Shapes: N images, C classes, H×W pixels; logits (N, C, H, W) float, target (N, H, W) int64 with
values in [0, C) or ignore_index. pixel_cross_entropy "none" -> (N, H, W) (0 at ignored pixels);
dice_loss "none" -> (N, C); binary_dice_loss (N, *) -> (N,).
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from minimtl.losses.box import _reduce


def _check_logits_and_target(name: str, logits: Tensor, target: Tensor, ignore_index: int) -> None:
    """logits (N, C, H, W) float, target (N, H, W) int64 with values in [0, C) or ignore_index."""
    if logits.dim() != 4 or not logits.is_floating_point():
        raise ValueError(f"{name}: logits must be a float Tensor[N, C, H, W], got {logits.dtype} {tuple(logits.shape)}")
    if target.dtype != torch.int64:
        raise ValueError(f"{name}: target must be an int64 Tensor[N, H, W] of class indices, got {target.dtype}")
    n, c, h, w = logits.shape
    if target.shape != (n, h, w):
        raise ValueError(
            f"{name}: target must be Tensor[N, H, W] = {(n, h, w)} to match logits {tuple(logits.shape)}, "
            f"got {tuple(target.shape)}"
        )
    bad = target[(target != ignore_index) & ((target < 0) | (target >= c))]
    if bad.numel() > 0:
        raise ValueError(
            f"{name}: target values must be in [0, {c}) or ignore_index={ignore_index}, got {bad[0].item()}"
        )


def pixel_cross_entropy(
    logits: Tensor, target: Tensor, ignore_index: int = 255, reduction: str = "mean", weight: Tensor | None = None
) -> Tensor:
    """Per-pixel softmax cross-entropy, ignoring `ignore_index` pixels; equal to F.cross_entropy."""
    _check_logits_and_target("pixel_cross_entropy", logits, target, ignore_index)
    num_classes = logits.shape[1]
    if weight is not None and weight.shape != (num_classes,):
        raise ValueError(f"pixel_cross_entropy: weight must be Tensor[C] = ({num_classes},), got {tuple(weight.shape)}")
    valid = target != ignore_index  # (N, H, W)
    safe_target = torch.where(valid, target, 0)  # gather needs a real index, even where ignored
    log_probs = F.log_softmax(logits, dim=1)  # (N, C, H, W)
    nll = -log_probs.gather(1, safe_target[:, None]).squeeze(1)  # (N, H, W)
    pixel_weight = weight.to(logits.dtype)[safe_target] if weight is not None else torch.ones_like(nll)
    pixel_weight = torch.where(valid, pixel_weight, 0)  # (N, H, W)
    loss = torch.where(valid, nll * pixel_weight, 0)  # where, not a product: 0 · inf would be NaN
    if reduction == "mean":
        total_weight = pixel_weight.sum()
        # Every pixel ignored: the sum is 0, and 0 / 1 keeps it 0 with a graph (0 / 0 would be NaN).
        return loss.sum() / torch.where(total_weight > 0, total_weight, 1)
    return _reduce(loss, reduction, "pixel_cross_entropy")


def _soft_dice(probs: Tensor, onehot: Tensor, eps: float) -> Tensor:
    """1 - (2|P∩G| + eps) / (|P| + |G| + eps), summing over every dim from 2 on: (N, C, *) -> (N, C)."""
    dims = tuple(range(2, probs.dim()))
    intersection = (probs * onehot).sum(dim=dims)  # (N, C)
    cardinality = probs.sum(dim=dims) + onehot.sum(dim=dims)  # (N, C)
    return 1 - (2 * intersection + eps) / (cardinality + eps)


def dice_loss(
    logits: Tensor, target: Tensor, ignore_index: int = 255, eps: float = 1.0, reduction: str = "mean"
) -> Tensor:
    """Soft Dice loss of softmax(logits) against one-hot targets, per image and class: (N, C) with "none"."""
    _check_logits_and_target("dice_loss", logits, target, ignore_index)
    if eps <= 0:
        raise ValueError(f"dice_loss: eps must be > 0 (an absent, unpredicted class is 0/0 without it), got {eps}")
    num_classes = logits.shape[1]
    valid = (target != ignore_index)[:, None]  # (N, 1, H, W)
    probs = F.softmax(logits, dim=1) * valid  # (N, C, H, W), 0 at ignored pixels
    onehot = F.one_hot(torch.where(valid[:, 0], target, 0), num_classes)  # (N, H, W, C)
    onehot = onehot.permute(0, 3, 1, 2).to(probs.dtype) * valid  # (N, C, H, W)
    return _reduce(_soft_dice(probs, onehot, eps), reduction, "dice_loss")


def binary_dice_loss(logits: Tensor, targets: Tensor, eps: float = 1.0, reduction: str = "mean") -> Tensor:
    """Soft Dice loss of sigmoid(logits) against masks in [0, 1], one value per sample: (N, *) -> (N,)."""
    if logits.shape != targets.shape or logits.dim() < 1:
        raise ValueError(
            f"binary_dice_loss: logits and targets must both be Tensor[N, *] of the same shape, got "
            f"{tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    if eps <= 0:
        raise ValueError(f"binary_dice_loss: eps must be > 0 (an empty, unpredicted mask is 0/0 without it), got {eps}")
    shape = (len(logits), 1, math.prod(logits.shape[1:]))  # not (N, 1, -1): that fails when N = 0
    probs = torch.sigmoid(logits).reshape(shape)  # (N, 1, P)
    masks = targets.to(probs.dtype).reshape(shape)  # (N, 1, P)
    return _reduce(_soft_dice(probs, masks, eps)[:, 0], reduction, "binary_dice_loss")
