"""Checks for the exercises of chapter 4, anchors, box deltas, matching and sampling (notebooks/04_anchors.ipynb).

Each `exercise_K(answer)` returns quietly when the answer is right and raises an AssertionError that
says what is wrong otherwise. Values are compared with what minimtl computes on the chapter's image
(`AnchorGenerator`, `BoxCoder`, `Matcher`, `BalancedPositiveNegativeSampler`, `sigmoid_focal_loss`);
functions are run on hand cases and seeded random boxes. Worked solutions: notebooks/solutions/ch04.py.
"""

import math

import torch
import torch.nn.functional as F

from exercises.common import record as _record
from exercises.common import run as _call
from minimtl import ops
from minimtl.losses.focal import sigmoid_focal_loss
from minimtl.modeling.anchors import AnchorGenerator, cell_anchors, grid_anchors
from minimtl.modeling.box_coder import BoxCoder
from minimtl.modeling.matcher import Matcher
from minimtl.modeling.sampler import BalancedPositiveNegativeSampler

# The chapter's image (section 4.3): 256 x 256, five ground-truth boxes, the small model's anchor sizes.
SIZE = 256
GT_BOXES = torch.tensor(
    [[20.0, 30, 110, 90], [150, 30, 214, 94], [184, 120, 200, 228], [60, 186, 70, 196], [40, 120, 130, 170]]
)
SMALL_SIZES = ((16,), (32,), (64,), (128,), (256,))
RATIOS = (0.5, 1.0, 2.0)


def _pyramid_shapes(height: int, width: int) -> list[tuple[int, int]]:
    """P2..P6's map sizes for a padded image (section 4.3): P6 is P5 subsampled by 2, so ceil(P5 / 2)."""
    shapes = [(height // 2**k, width // 2**k) for k in range(2, 6)]
    return shapes + [((shapes[-1][0] + 1) // 2, (shapes[-1][1] + 1) // 2)]


def _chapter_anchors(ratios=RATIOS) -> torch.Tensor:
    """All anchors of the chapter's image, P2..P6 concatenated. (R, 4)"""
    return torch.cat(AnchorGenerator(SMALL_SIZES, (ratios,) * 5)((SIZE, SIZE), _pyramid_shapes(SIZE, SIZE)))


def _number(k: int, what: str, value) -> float:
    assert isinstance(value, (int, float)) or (torch.is_tensor(value) and value.numel() == 1), (
        f"exercise {k}: {what} should be a number, got {value!r}"
    )
    return float(value)


def exercise_1(answer) -> None:
    """answer: {"iou_quarter": the IoU at a shift of s/4, "iou_eighth": at s/8, "anchor_factor": how many times as
    many anchors a stride of s/8 gives as one of s/4}."""
    answer = _record(1, answer, {"iou_quarter", "iou_eighth", "anchor_factor"})
    square = cell_anchors((32,), (1.0,), dtype=torch.float64)  # (1, 4): the square anchor of size s = 32
    for key, stride in (("iou_quarter", 8), ("iou_eighth", 4)):
        neighbour = square + torch.tensor([stride, 0.0, stride, 0.0], dtype=torch.float64)  # the next cell's anchor
        expected = ops.box_iou(square, neighbour).item()
        got = _number(1, key, answer[key])
        assert abs(got - expected) < 1e-6, (
            f"exercise 1: a square of side s and the same square shifted by s/{32 // stride} overlap in "
            f"{32 - stride} x 32 out of a union of {32 + stride} x 32: IoU {expected:.4f}, got {key} = {got}"
        )
    generator = AnchorGenerator(SMALL_SIZES[:1], (RATIOS,))
    per_cell = len(generator((SIZE, SIZE), [(SIZE // 4, SIZE // 4)])[0])  # P2 at stride 4 = s/4
    finer = len(generator((SIZE, SIZE), [(SIZE // 2, SIZE // 2)])[0])  # stride 2 = s/8
    assert _number(1, "anchor_factor", answer["anchor_factor"]) == finer / per_cell, (
        f"exercise 1: halving the stride doubles the cells along each axis: {finer} anchors instead of {per_cell} on "
        f"P2, {finer / per_cell:g} times as many, got {answer['anchor_factor']!r}"
    )


def exercise_2(answer) -> None:
    """answer: {"best_iou": box 2's best IoU with ratios 0.25 ... 4, "reaches": bool, "anchors_800x1216": int}."""
    answer = _record(2, answer, {"best_iou", "reaches", "anchors_800x1216"})
    ratios = (0.25, 0.5, 1.0, 2.0, 4.0)
    best = ops.box_iou(GT_BOXES[2:3], _chapter_anchors(ratios)).max().item()
    before = ops.box_iou(GT_BOXES[2:3], _chapter_anchors()).max().item()
    got = _number(2, "best_iou", answer["best_iou"])
    assert abs(got - best) < 1e-4, (
        f"exercise 2: with ratios {ratios} box 2 (16 x 108) reaches IoU {best:.4f} (it was {before:.4f} with "
        f"{RATIOS}), got {got}"
    )
    assert answer["reaches"] is (best >= 0.7), (
        f"exercise 2: IoU {best:.4f}: does it reach 0.7? Not {answer['reaches']!r}"
    )
    count = sum(len(a) for a in AnchorGenerator(aspect_ratios=(ratios,) * 5)((800, 1216), _pyramid_shapes(800, 1216)))
    assert answer["anchors_800x1216"] == count, (
        f"exercise 2: 5 anchors per cell on P2..P6 of 800 x 1216 ({_pyramid_shapes(800, 1216)}) make {count:,}, got "
        f"{answer['anchors_800x1216']!r}"
    )


def _boxes(k: int, value, what: str) -> torch.Tensor:
    boxes = torch.as_tensor(value, dtype=torch.float64).reshape(-1, 4)
    assert (boxes[:, 2:] > boxes[:, :2]).all(), f"exercise {k}: {what} should be non-empty (x1, y1, x2, y2) boxes"
    return boxes


def exercise_3(answer) -> None:
    """answer: {"A": box, "B": box, "anchors": boxes}: an anchor positive by rule (i) for A, matched to B."""
    answer = _record(3, answer, {"A", "B", "anchors"})
    gt = torch.cat([_boxes(3, answer["A"], "A"), _boxes(3, answer["B"], "B")])  # (2, 4)
    assert len(gt) == 2, "exercise 3: A and B should be one box each"
    anchors = _boxes(3, answer["anchors"], "the anchors")  # (R, 4)
    iou = ops.box_iou(gt, anchors)  # (2, R)
    matches = Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou)  # (R,)
    best_a = iou[0].max().item()
    assert 0 < best_a < 0.7, (
        f"exercise 3: A's best anchor should reach A only by rule (i): IoU above 0 and below 0.7, got {best_a:.4f}"
    )
    rule_i = torch.where(iou[0] == best_a)[0].tolist()  # A's best anchors (all of them, on a tie)
    to_b = [r for r in rule_i if matches[r] == 1]
    assert to_b, (
        f"exercise 3: A's best anchors {rule_i} are matched to {[int(matches[r]) for r in rule_i]} (0 = A, 1 = B): "
        "one of them should go to B, the box it overlaps more"
    )
    assert (matches == 0).sum() == 0, (
        f"exercise 3: anchors {torch.where(matches == 0)[0].tolist()} are still matched to A: make A lose all of them"
    )


def exercise_4(rescaled_deltas) -> None:
    """rescaled_deltas(deltas (K, 4), lam) -> the deltas of the same targets against the anchors scaled by lam."""
    g = torch.Generator().manual_seed(4)
    xy = torch.rand(2, 50, 2, generator=g, dtype=torch.float64) * 200
    wh = torch.rand(2, 50, 2, generator=g, dtype=torch.float64) * 100 + 5
    anchors, targets = torch.cat([xy, xy + wh], dim=2)  # (50, 4) each
    coder = BoxCoder()
    deltas = coder.encode(targets, anchors)
    centre, half = (anchors[:, :2] + anchors[:, 2:]) / 2, (anchors[:, 2:] - anchors[:, :2]) / 2
    for lam in (0.5, 1.0, 1.7, 3.0):
        scaled = torch.cat([centre - lam * half, centre + lam * half], dim=1)  # about the anchor's centre
        expected = coder.encode(targets, scaled)
        got = _call(4, f"rescaled_deltas(deltas, {lam})", rescaled_deltas, deltas.clone(), lam)
        assert torch.is_tensor(got) and got.shape == expected.shape, (
            f"exercise 4: rescaled_deltas should return (K, 4) = {tuple(expected.shape)}, got {got!r}"
        )
        wrong = [
            name for j, name in enumerate(("dx", "dy", "dw", "dh")) if not torch.allclose(got[:, j], expected[:, j])
        ]
        assert not wrong, (
            f"exercise 4: with the anchors scaled by {lam} about their centres, {', '.join(wrong)} should be "
            f"{expected[0, [('dx', 'dy', 'dw', 'dh').index(n) for n in wrong]].tolist()} for the first pair (deltas "
            f"{deltas[0].tolist()}), got {got[0, [('dx', 'dy', 'dw', 'dh').index(n) for n in wrong]].tolist()}"
        )


def exercise_5(answer) -> None:
    """answer: {"label": what minimtl's Matcher gives every anchor, "torchvision_positives": how many anchors
    torchvision's matcher makes positive}."""
    answer = _record(5, answer, {"label", "torchvision_positives"})
    anchors = _chapter_anchors()
    outside = torch.tensor([[1000.0, 1000.0, 1100.0, 1100.0]])  # far outside the 256 x 256 image
    iou = ops.box_iou(outside, anchors)  # (1, R): all 0
    labels = Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou).unique().tolist()
    assert labels == [Matcher.BELOW_LOW_THRESHOLD]  # every anchor the same label
    assert answer["label"] == labels[0], (
        f"exercise 5: every anchor gets {labels[0]} (Matcher.BELOW_LOW_THRESHOLD: negative), got {answer['label']!r}"
    )
    # torchvision's matcher claims every prediction that ties for the box's best IoU, 0 included.
    tied = int((iou[0] == iou[0].max()).sum())
    assert answer["torchvision_positives"] == tied, (
        f"exercise 5: the box's best IoU is {iou[0].max().item()}, and all {tied} anchors tie for it: torchvision "
        f"makes {tied} positive, got {answer['torchvision_positives']!r}"
    )


def _negative_shares() -> dict[str, float]:
    iou = ops.box_iou(GT_BOXES, _chapter_anchors())
    matches = Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou)
    labels = (matches >= 0).long()
    labels[matches == Matcher.BETWEEN_THRESHOLDS] = -1
    positive, negative = torch.where(labels == 1)[0], torch.where(labels == 0)[0]
    sampled_pos, sampled_neg = BalancedPositiveNegativeSampler(256, 0.5)(labels, torch.Generator().manual_seed(0))
    used = torch.cat([positive, negative])
    targets = torch.cat([torch.ones(len(positive)), torch.zeros(len(negative))])
    n_pos = len(positive)

    def share(loss):
        return (loss[n_pos:].sum() / loss.sum()).item()

    logits = torch.zeros(len(labels))  # the RPN head at initialisation: zero bias, weights of std 0.01
    ce = F.binary_cross_entropy_with_logits(logits, labels.clamp(min=0).float(), reduction="none")
    prior = -math.log((1 - 0.01) / 0.01)  # RetinaNet's bias: sigmoid(prior) = 0.01
    return {
        "sampled": (ce[sampled_neg].sum() / ce[sampled_pos | sampled_neg].sum()).item(),
        "focal": share(sigmoid_focal_loss(logits[used], targets, alpha=0.25, gamma=2.0)),
        "focal_prior": share(sigmoid_focal_loss(torch.full((len(used),), prior), targets, alpha=0.25, gamma=2.0)),
    }


def exercise_6(answer) -> None:
    """answer: {"sampled", "focal", "focal_prior"}: the negatives' share of the loss at initialisation."""
    answer = _record(6, answer, {"sampled", "focal", "focal_prior"})
    what = {
        "sampled": "cross-entropy over the 256 sampled anchors, every logit 0",
        "focal": "the focal loss (alpha 0.25, gamma 2) over all positive and negative anchors, every logit 0",
        "focal_prior": "the same focal loss with every logit at the prior bias -log(99)",
    }
    for key, expected in _negative_shares().items():
        got = _number(6, key, answer[key])
        assert math.isclose(got, expected, rel_tol=1e-4, abs_tol=1e-7), (
            f"exercise 6: with {what[key]}, the negatives carry {expected:.5f} of the loss, got {key} = {got:.5f}"
        )


def _fixed_stride(sizes, aspect_ratios, feature_shapes) -> list[torch.Tensor]:
    levels = zip(sizes, aspect_ratios, feature_shapes, strict=True)
    return [grid_anchors(cell_anchors(s, r), shape, (2 ** (k + 2),) * 2) for k, (s, r, shape) in enumerate(levels)]


def exercise_7(answer) -> None:
    """answer: {"anchors": fn(sizes, aspect_ratios, image_size, feature_shapes) -> per-level anchors at strides
    4, 8, ..., 64, "changed_levels": the levels ("P2" ... "P6") whose anchors move for an 800 x 1216 image}."""
    answer = _record(7, answer, {"anchors", "changed_levels"})
    sizes, ratios = ((32,), (64,), (128,), (256,), (512,)), (RATIOS,) * 5
    images = {"800 x 1216": (800, 1216), "256 x 256": (256, 256), "200 x 136 (tests/test_anchors.py)": (200, 136)}
    for name, image_size in images.items():
        shapes = _pyramid_shapes(*image_size)
        got = _call(7, "anchors", answer["anchors"], sizes, ratios, image_size, shapes)
        expected = _fixed_stride(sizes, ratios, shapes)
        assert isinstance(got, (list, tuple)) and len(got) == 5, (
            f"exercise 7: anchors should return one tensor per level (5), got {type(got).__name__}"
        )
        for level, (a, b) in enumerate(zip(got, expected, strict=True)):
            assert torch.is_tensor(a) and a.shape == b.shape and torch.equal(a.to(b.dtype), b), (
                f"exercise 7: for a {name} image, P{level + 2}'s anchors should sit every {2 ** (level + 2)} pixels "
                f"from (0, 0), cell by cell as AnchorGenerator orders them"
            )
    shapes = _pyramid_shapes(800, 1216)
    package = AnchorGenerator(sizes, ratios)((800, 1216), shapes)
    fixed = _fixed_stride(sizes, ratios, shapes)
    changed = {
        f"P{level + 2}" for level, (a, b) in enumerate(zip(package, fixed, strict=True)) if not torch.equal(a, b)
    }
    assert set(answer["changed_levels"]) == changed, (
        f"exercise 7: for 800 x 1216 the strides inferred by AnchorGenerator are "
        f"{[(800 // h, 1216 // w) for h, w in shapes]}: the anchors of {sorted(changed)} move, got "
        f"{answer['changed_levels']!r}"
    )
