"""Worked solutions to the exercises of chapter 4, anchors, box deltas, matching and sampling
(notebooks/04_anchors.ipynb).

Each `exercise_K` is the answer in the form `exercises.ch04.exercise_K` takes; the reasoning is in the
comments and docstrings. `MISTAKES` holds a plausible wrong answer per exercise, which the check rejects.
Try the exercise before you read on.
"""

import math

import torch

from minimtl import ops
from minimtl.modeling.anchors import AnchorGenerator, cell_anchors, grid_anchors

# --- Exercise 1 ----------------------------------------------------------------------------------
# The neighbouring anchor of the same shape sits one stride t away along x (or y). For a square of
# side s: |a ∩ b| = (s - t) s and |a ∪ b| = 2 s^2 - (s - t) s = (s + t) s, so IoU = (s - t) / (s + t).
# With t = s/4 (this chapter's sizes: 16 on stride 4, ... 256 on stride 64): (3/4) / (5/4) = 0.6. So a
# box that equals one anchor exactly has IoU 1 with it and at most 0.6 with every other anchor of its
# level (a diagonal neighbour is lower still, and other shapes and levels lower too): only the one anchor
# can pass 0.7. With the default sizes, t = s/8: (7/8) / (9/8) = 7/9 ≈ 0.78, so the neighbours pass 0.7
# too, and a box between two cells still finds an anchor above 0.7. The price of s/8 here: twice as many
# cells along each axis, 4 times the anchors (and 4 times the RPN head's work, on maps twice as fine).
exercise_1 = {"iou_quarter": 0.6, "iou_eighth": 7 / 9, "anchor_factor": 4}


# --- Exercise 2 ----------------------------------------------------------------------------------
def pyramid_shapes(height, width):
    """P2..P6's map sizes for a padded image (section 4.3)."""
    shapes = [(height // 2**k, width // 2**k) for k in range(2, 6)]
    return shapes + [((shapes[-1][0] + 1) // 2, (shapes[-1][1] + 1) // 2)]


def _box_2_with_five_ratios():
    ratios = (0.25, 0.5, 1.0, 2.0, 4.0)
    generator = AnchorGenerator(((16,), (32,), (64,), (128,), (256,)), (ratios,) * 5)
    anchors = torch.cat(generator((256, 256), pyramid_shapes(256, 256)))
    best = ops.box_iou(torch.tensor([[184.0, 120, 200, 228]]), anchors).max().item()
    count = sum(len(a) for a in AnchorGenerator(aspect_ratios=(ratios,) * 5)((800, 1216), pyramid_shapes(800, 1216)))
    return {"best_iou": best, "reaches": best >= 0.7, "anchors_800x1216": count}


# Box 2 is 16 x 108 (h/w = 6.75). Ratio 4 at size 32 gives a 16 x 64 anchor (w = 32/2, h = 32 x 2); centred
# on the bar, it lies inside it: IoU = 1024 / 1728 = 0.593, up from 0.367, but still below 0.7. A 16 x 108 box
# needs r ≈ 6.75 and s = sqrt(16 x 108) ≈ 42, between two levels' sizes: extreme shapes stay rule (i)'s job.
# Anchors for 800 x 1216: 5 instead of 3 per cell, 242,991 x 5/3 = 404,985 (+67%, for a few thin objects).
exercise_2 = _box_2_with_five_ratios()

# --- Exercise 3 ----------------------------------------------------------------------------------
# Anchor a = (0, 0, 10, 10) is A's best anchor, IoU(A, a) = 40 / 100 = 0.4 < 0.7: positive by rule (i) only.
# B = (0, 0, 10, 7) covers more of it, IoU 0.7, and the matcher assigns every positive anchor the ground
# truth it overlaps *most*: a is matched to B. The other anchor is negative. A ends with no anchor at all.
#
# For the regression target itself this is fine: a regresses onto B, the box it overlaps most, a sensible
# target. The problem is A: rule (i) exists so that every object has a positive anchor, and here A has
# none, so the RPN learns to call it background, exactly the failure rule (i) was meant to prevent. It
# happens with close, nested or overlapping objects (a person and the bag they carry). torchvision and
# detectron2 behave the same; a fix would give a rule-(i) anchor to the box it was best for, at the price of
# regressing it onto a box it overlaps less.
exercise_3 = {"A": (0, 0, 10, 4), "B": (0, 0, 10, 7), "anchors": [(0, 0, 10, 10), (20, 0, 30, 10)]}


# --- Exercise 4 ----------------------------------------------------------------------------------
def rescaled_deltas(deltas: torch.Tensor, lam: float) -> torch.Tensor:
    """The deltas of the same targets against the anchors scaled by lam about their centres. (K, 4) -> (K, 4)

    Invariance: translating both boxes by (u, v) changes neither x - x_a nor w_a, w; scaling both by
    lam (about any point) multiplies x - x_a, w_a, w and w by lam. Every delta is a ratio of two such
    lengths (dx = (x - x_a) / w_a, dw = log(w / w_a)), so encoding is invariant to both.

    Scaling only the anchor about its centre keeps x_a and multiplies w_a, h_a by lam: all four change,
    dx = (x - x_a) / (lam w_a) -> dx / lam (and dy), dw = log(w / (lam w_a)) -> dw - log lam (and dh).
    (With weights (wx, wy, ww, wh): dx -> dx / lam and dw -> dw - ww log lam.)
    """
    out = deltas.clone()
    out[:, :2] = deltas[:, :2] / lam
    out[:, 2:] = deltas[:, 2:] - math.log(lam)
    return out


exercise_4 = rescaled_deltas

# --- Exercise 5 ----------------------------------------------------------------------------------
# Every anchor has IoU 0 with the box, so it is below the low threshold: BELOW_LOW_THRESHOLD, -1,
# negative. Rule (i) does nothing, because minimtl's matcher lets a ground truth claim its best anchors
# only when that best IoU is above 0. torchvision's does not check: all 16,368 anchors (12,288 + 3,072 +
# 768 + 192 + 48) tie for the best IoU, 0, and all become positive, matched to a box none of them
# touches: the whole image is foreground, with regression targets 1000 pixels away. minimtl's answer is
# what we want for the anchors; the box itself can never get a proposal, which is a data problem (clip the
# boxes to the image, or drop the ones outside it).
exercise_5 = {"label": -1, "torchvision_positives": 12288 + 3072 + 768 + 192 + 48}

# --- Exercise 6 ----------------------------------------------------------------------------------
# At initialisation the RPN head's objectness logits are about 0 (zero bias, weights of std 0.01): p = 0.5
# for every anchor. Section 4.5: 16 positives, 16,223 negatives, 129 ignored.
# * Sampling: all 16 positives and 240 negatives, each cross-entropy term log 2: 240 / 256 = 0.9375.
# * Focal loss on all anchors: at p = 0.5 every term is alpha_t (1/2)^2 log 2. With every logit equal, the
#   focal weight (1 - p_t)^gamma is the same for all anchors and changes nothing; only alpha_t does:
#   0.75 x 16,223 / (0.75 x 16,223 + 0.25 x 16) = 0.99967. Worse than sampling: the negatives carry all.
# * That is why RetinaNet also initialises the bias to -log((1 - pi) / pi), pi = 0.01: every anchor starts
#   at p = 0.01, the easy negatives are confidently right, (1 - p_t)^2 = 10^-4 silences them, and the
#   positives (p_t = 0.01, loss 0.25 x 0.99^2 x 4.6 each) carry the loss: the negatives' share is 0.0007.
POSITIVES, NEGATIVES = 16, 16223


def _negative_share(p: float, alpha: float = 0.25, gamma: float = 2.0) -> float:
    """The negatives' share of the summed focal loss when every anchor predicts probability p."""
    positive = alpha * (1 - p) ** gamma * -math.log(p)  # p_t = p
    negative = (1 - alpha) * p**gamma * -math.log(1 - p)  # p_t = 1 - p
    return NEGATIVES * negative / (NEGATIVES * negative + POSITIVES * positive)


exercise_6 = {"sampled": 240 / 256, "focal": _negative_share(0.5), "focal_prior": _negative_share(0.01)}


# --- Exercise 7 ----------------------------------------------------------------------------------
def fixed_stride_anchors(sizes, aspect_ratios, image_size, feature_shapes):
    """AnchorGenerator's anchors, but level l (P2 first) at stride 2^(l + 2) whatever the map's size.

    AnchorGenerator infers the stride as image_size // map_size, which is not a power of two when the
    padded image does not halve evenly down to P6: for 800 x 1216, P6 is 13 x 19 and 800 // 13 = 61. Here
    the stride is the level's true one, 64, so the anchors sit on the map's cells. For 800 x 1216 only
    P6 moves (P2..P5 divide evenly). tests/test_anchors.py's test_anchors_match_torchvision would then
    fail: its 200 x 136 image gives P4..P6 strides of 15, 28 and 50 vertically in torchvision.

    Why keep torchvision's behaviour anyway: checkpoints trained with torchvision (the pretrained
    weights that minimtl.models converts) learned their RPN deltas against those anchors, and the test
    suite checks minimtl against torchvision bit for bit; the RPN learns around the offset at little cost.
    """
    return [
        grid_anchors(cell_anchors(s, r), shape, (2 ** (level + 2),) * 2)
        for level, (s, r, shape) in enumerate(zip(sizes, aspect_ratios, feature_shapes, strict=True))
    ]


exercise_7 = {"anchors": fixed_stride_anchors, "changed_levels": {"P6"}}


# --- Mistakes the checks must reject ---------------------------------------------------------------
def _size_deltas_only(deltas, lam):
    """Thinks that scaling the anchor only changes the size deltas: forgets that dx divides by w_a."""
    out = deltas.clone()
    out[:, 2:] -= math.log(lam)
    return out


MISTAKES = {
    1: {"iou_quarter": 0.75, "iou_eighth": 0.875, "anchor_factor": 2},  # |a ∩ b| / |a|, and one axis only
    2: {"best_iou": 0.3673, "reaches": False, "anchors_800x1216": 242991},  # the three-ratio generator's
    3: {"A": (0, 0, 10, 7), "B": (0, 0, 10, 4), "anchors": [(0, 0, 10, 10), (20, 0, 30, 10)]},  # a goes to A
    4: _size_deltas_only,
    5: {"label": 0, "torchvision_positives": 16368},  # torchvision's answer: every anchor matched to the box
    6: {"sampled": 240 / 256, "focal": 16223 / (16223 + 16), "focal_prior": 0.6887},  # cross-entropy, not focal
    7: {"anchors": fixed_stride_anchors, "changed_levels": {"P5", "P6"}},
}
