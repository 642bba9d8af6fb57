"""Worked solutions to the exercises of chapter 1, box IoU and generalised IoU (notebooks/01_boxes_iou_giou.ipynb).

Each `exercise_K` is the answer in the form `exercises.ch01.exercise_K` takes; the reasoning is in the
comments and docstrings. `MISTAKES` holds a plausible wrong answer per exercise, which the check rejects.
Try the exercise before you read on.
"""

import math

import torch

from minimtl.ops import reference

# --- Exercise 1 ----------------------------------------------------------------------------------
# IoU. The intersection lies inside each box, so 0 <= |a ∩ b| <= min(|a|, |b|), and
# |a ∪ b| = |a| + |b| - |a ∩ b| >= max(|a|, |b|) >= |a ∩ b|. Hence 0 <= IoU <= 1. IoU = 1 means
# |a ∩ b| = |a ∪ b|, so |a ∩ b| = |a| = |b|: the intersection, a rectangle inside a, has a's area, so
# it is a (two closed rectangles, one inside the other, with equal positive area are equal), and
# likewise b: a = a ∩ b = b. Conversely identical non-empty boxes give |a ∩ a| / |a ∪ a| = 1.
#
# GIoU. a ∪ b ⊆ C, so the penalty (|C| - |a ∪ b|) / |C| is >= 0 and GIoU <= IoU <= 1. Rewrite
#     GIoU = IoU - 1 + |a ∪ b| / |C|.
# For non-empty boxes IoU >= 0 and |a ∪ b| >= |a| > 0 (and |C| is finite), so GIoU > -1.
#
# The consequence: GIoU = -1 needs IoU = 0 and |a ∪ b| = 0 while |C| > 0, i.e. two *empty* boxes
# whose enclosing box is not flat. Two points that differ in both x and y are the simplest pair (two
# parallel segments side by side work too); two equal points are not: then |C| = 0 and the library
# leaves the penalty out (GIoU = IoU = 0, section 1.5).
exercise_1 = ((1.0, 1.0, 1.0, 1.0), (3.0, 3.0, 3.0, 3.0))


# --- Exercise 2 ----------------------------------------------------------------------------------
def exercise_2(a, b) -> bool:
    """GIoU = IoU exactly when the penalty is 0, i.e. when a ∪ b fills the enclosing box C.

    The union of two non-empty rectangles is itself a rectangle (then it is C) in two ways only:
    * one box contains the other (C is the larger one);
    * both have the same span in one axis, and their spans in the other axis overlap or touch
      (section 1.3 at t = 0: the same x-span [0, 2], y-spans [0, 2] and [1, 3]). Touching counts:
      (0, 0, 2, 2) and (0, 2, 2, 3) have IoU 0 and GIoU 0.
    In every other case part of C is covered by neither box (the gap between them, or two corners when
    they are offset in both axes), so GIoU < IoU.
    """
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b

    def contains(outer, inner):
        return outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3]

    same_x, same_y = (ax1, ax2) == (bx1, bx2), (ay1, ay2) == (by1, by2)
    meet_x, meet_y = max(ax1, bx1) <= min(ax2, bx2), max(ay1, by1) <= min(ay2, by2)  # overlap or touch
    return contains(a, b) or contains(b, a) or (same_x and meet_y) or (same_y and meet_x)


# --- Exercise 3 ----------------------------------------------------------------------------------
def distance_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """DIoU (Zheng et al., AAAI 2020) of every pair, (N, 4), (M, 4) -> (N, M).

    DIoU(a, b) = IoU(a, b) - rho^2 / c^2, rho the distance between the centres, c the diagonal of C.
    The library's rules carry over: where c^2 is not positive (two identical points) the penalty is
    left out, with _safe_divide; a NaN anywhere (a NaN coordinate) becomes 0.
    """
    iou = reference.box_iou(boxes1, boxes2)  # (N, M)
    centre1 = (boxes1[:, :2] + boxes1[:, 2:]) / 2  # (N, 2)
    centre2 = (boxes2[:, :2] + boxes2[:, 2:]) / 2  # (M, 2)
    rho2 = ((centre1[:, None, :] - centre2[None, :, :]) ** 2).sum(-1)  # (N, M)
    top_left = torch.minimum(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2): C's corners
    bottom_right = torch.maximum(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    diagonal2 = ((bottom_right - top_left) ** 2).sum(-1)  # (N, M)
    diou = iou - reference._safe_divide(rho2, diagonal2)
    return torch.where(torch.isnan(diou), 0, diou)


def widest_along_descent(iou_fn, steps: int = 30, lr: float = 2.5) -> float:
    """Section 1.9's descent on 1 - iou_fn(b, a), and the largest width x2 - x1 of b along it."""
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[3.0, 0.5, 4.5, 2.5]], requires_grad=True)
    widest = (b[0, 2] - b[0, 0]).item()
    for step in range(steps):
        loss = (1 - iou_fn(b, a)).sum()
        b.grad = None
        loss.backward()
        with torch.no_grad():
            b -= lr * 0.5 * (1 + math.cos(math.pi * step / steps)) * b.grad
        widest = max(widest, (b[0, 2] - b[0, 0]).item())
    return widest


# b starts 1.5 wide and ends about 2 wide (on a), but is about 3.9 wide on the way: yes, it still grows
# (under GIoU it reached about 4.7). While the boxes are disjoint, IoU is 0 and the loss is the penalty
# rho^2 / c^2 alone. b's x1 is not an edge of C (a's x1 = 0 is), so moving it left only brings b's
# centre closer to a's: it moves fast. Moving x2 left brings the centre closer too, but also narrows C
# (c^2 down), and the two nearly cancel: x2 barely moves. So b widens. y2 even moves up, away from a:
# a taller C lowers rho^2 / c^2 more than the raised centre increases it. What DIoU changes is x2's
# direction (under GIoU it moved right, away from a): the detour is smaller, not gone.
exercise_3 = {"distance_box_iou": distance_box_iou, "widest": widest_along_descent(distance_box_iou)}

# --- Exercise 4 ----------------------------------------------------------------------------------
# B. float64 roughly doubles both. The reference is limited by memory traffic (section 1.4): each of
# its N x M temporaries has twice the bytes. The kernel works in registers, but a vector instruction
# holds half as many float64 numbers (8 against 16 float32 with AVX-512, 2 against 4 with SSE2), and it
# writes 8 output bytes per pair instead of 4. float16 buys neither much: both compute in float32
# (reference._compute_dtype), the kernel converting each box as it loads it, the reference converting
# its inputs up front and its (N, M) result back at the end, which is one more pass over memory.
# Measured on a busy 2-core machine the ratios jump around (a stalled thread can cost 10x); measure on
# an idle one, several times, before reading anything into them.
exercise_4 = "B"

# --- Exercise 5 ----------------------------------------------------------------------------------
# a = (0, 0, 1, 1) and b = (0, 0, 0.2, 0.2): b lies inside a, so mathematically |a ∪ b| = |a| = 1.
# In float32, inter = area_b = 0.2f * 0.2f ≈ 0.04000000283. The kernel's order first rounds 1 + 0.04
# to float32 (spacing 2^-23 near 1); subtracting 0.04 again gives 0.99999994 = 1 - 2^-24, not 1, and
# the IoU comes out one ulp above 0.04000000283. The other order computes area_b - inter = 0 exactly and
# 1 + 0 = 1, so its IoU is inter itself. The same formula, two IEEE operations in another order: other
# bits. A kernel written that way would differ from the reference in the last bit for such pairs, and
# `torch.equal` (no tolerance) would fail; worse, NMS compares the IoU with a threshold, and one ulp can
# flip a decision exactly at the threshold.
exercise_5 = ((0.0, 0.0, 1.0, 1.0), (0.0, 0.0, 0.2, 0.2))


# --- Exercise 6 ----------------------------------------------------------------------------------
def _corners(cx, cy, w, h, theta):
    """The corners of a rotated box, counter-clockwise (positive orientation: the shoelace sum is > 0)."""
    c, s = math.cos(theta), math.sin(theta)
    half = ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2))
    return [(cx + c * u - s * v, cy + s * u + c * v) for u, v in half]


def _clip(polygon, a, b):
    """Sutherland-Hodgman, one edge: keep the part of the polygon on the left of a -> b (the inside of a
    counter-clockwise convex polygon), adding the crossing point wherever an edge crosses the line."""

    def side(p):  # the cross product (b - a) x (p - a): > 0 on the left
        return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])

    out = []
    for i, p in enumerate(polygon):
        q = polygon[(i + 1) % len(polygon)]
        sp, sq = side(p), side(q)
        if sp >= 0:
            out.append(p)
        if (sp >= 0) != (sq >= 0):  # the edge p -> q crosses the line
            t = sp / (sp - sq)
            out.append((p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])))
    return out


def _area(polygon):
    """The shoelace formula."""
    pairs = zip(polygon, polygon[1:] + polygon[:1], strict=True)
    return 0.5 * abs(sum(p[0] * q[1] - q[0] * p[1] for p, q in pairs))


def rotated_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of every pair of rotated boxes (cx, cy, w, h, theta), theta in radians. (N, 5), (M, 5) -> (N, M).

    The intersection of two convex polygons is convex: clip box 1 by each of box 2's four edges
    (Sutherland-Hodgman), then take the shoelace area. A box with w <= 0 or h <= 0 (or NaN) is empty.
    The direction of theta does not matter for IoU: mirroring both boxes negates both angles and keeps
    every area.

    Which parts of the kernels' design survive:
    * structure of arrays: yes, five arrays instead of four;
    * one thread (or one SIMD lane) per pair, each output written once: yes, the pairs are still
      independent;
    * branch-free vectorised code: harder. The clipped polygon has 0 to 8 vertices, so the loop has a
      data-dependent length and a variable-size state; kernels bound it at 8 vertices and mask lanes;
    * bit-exactness: much harder. cos/sin differ between libm, SIMD and CUDA implementations in the
      last bit, and the clipping order (which edge first, where the polygon starts) changes the rounding.
      A kernel must fix every operation and its order, and use the same sin/cos everywhere (or take
      corners as input) to stay equal to a reference.
    """
    out = torch.zeros(len(boxes1), len(boxes2), dtype=torch.float64)
    for i, b1 in enumerate(boxes1.tolist()):
        for j, b2 in enumerate(boxes2.tolist()):
            if not all(side > 0 for side in (b1[2], b1[3], b2[2], b2[3])):
                continue  # an empty box overlaps nothing
            polygon, clip = _corners(*b1), _corners(*b2)
            for k in range(4):
                polygon = _clip(polygon, clip[k], clip[(k + 1) % 4])
                if not polygon:
                    break
            inter = _area(polygon) if polygon else 0.0
            out[i, j] = inter / (b1[2] * b1[3] + b2[2] * b2[3] - inter)
    return out.to(boxes1.dtype)


exercise_6 = rotated_box_iou


# --- Mistakes the checks must reject ---------------------------------------------------------------
def _containment_only(a, b) -> bool:  # forgets the boxes that share a span (section 1.3 at t = 0)
    def contains(outer, inner):
        return outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3]

    return contains(a, b) or contains(b, a)


def _naive_distance_box_iou(boxes1, boxes2):  # no guard: 0 / 0 = NaN for two identical points
    iou = reference.box_iou(boxes1, boxes2)
    rho2 = ((boxes1[:, None, :2] + boxes1[:, None, 2:] - boxes2[None, :, :2] - boxes2[None, :, 2:]) ** 2).sum(-1) / 4
    wh = torch.maximum(boxes1[:, None, 2:], boxes2[None, :, 2:]) - torch.minimum(
        boxes1[:, None, :2], boxes2[None, :, :2]
    )
    return iou - rho2 / (wh**2).sum(-1)


def _axis_aligned_iou(boxes1, boxes2):  # ignores theta
    def corners(b):
        return torch.cat([b[:, :2] - b[:, 2:4] / 2, b[:, :2] + b[:, 2:4] / 2], dim=1)

    return reference.box_iou(corners(boxes1), corners(boxes2))


MISTAKES = {
    1: ((1.0, 1.0, 1.0, 1.0), (1.0, 1.0, 1.0, 1.0)),  # two equal points: |C| = 0, so GIoU = 0
    2: _containment_only,
    3: {"distance_box_iou": _naive_distance_box_iou, "widest": exercise_3["widest"]},
    4: "A",
    5: ((0.0, 0.0, 2.0, 2.0), (1.0, 1.0, 3.0, 3.0)),  # small integers: every sum is exact
    6: _axis_aligned_iou,
}
