"""Checks for the exercises of chapter 7, the Fast R-CNN box head (notebooks/07_fast_rcnn.ipynb, 7.6).

`exercise_K(answer)` returns quietly when the answer to exercise K is right, and raises an
AssertionError that says what is wrong otherwise. Each check compares the answer with minimtl's own
code (`RoIHeads.losses`, `RoIHeads.detect`, `BalancedPositiveNegativeSampler`, `BoxCoder`,
`losses.smooth_l1_loss`) on hand cases, edge cases and seeded random inputs; none trains a model.
Worked solutions: notebooks/solutions/ch07.py.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from exercises.common import call as _call
from exercises.common import close as _close
from exercises.common import has_keys as _keys
from exercises.common import keeps_global_rng as _keeps_global_rng
from exercises.common import number as _number
from minimtl import ops
from minimtl.losses import smooth_l1_loss
from minimtl.modeling.box_coder import BoxCoder
from minimtl.modeling.poolers import MultiScaleRoIAlign
from minimtl.modeling.roi_heads import RoIHeads
from minimtl.modeling.sampler import BalancedPositiveNegativeSampler

IMAGE_SIZE = (128, 128)  # the chapter's images
BRANCHES = ("quadratic", "linear")


# --- helpers: every failure is an AssertionError that names the exercise ---------------------------


def _same_detections(k: int, what: str, got, expected: list[dict]) -> None:
    if not isinstance(got, (list, tuple)) or len(got) != len(expected):
        raise AssertionError(f"exercise {k}: {what}: return one dict per image ({len(expected)})")
    for i, (mine, theirs) in enumerate(zip(got, expected, strict=True)):
        if not isinstance(mine, dict) or {"boxes", "labels", "scores"} - set(mine):
            raise AssertionError(f"exercise {k}: {what}: image {i} needs a dict with boxes, labels and scores")
        if len(mine["boxes"]) != len(theirs["boxes"]):
            raise AssertionError(
                f"exercise {k}: {what}, image {i}: {len(theirs['boxes'])} detections expected, got {len(mine['boxes'])}"
            )
        for key in ("boxes", "scores", "labels"):
            _close(k, f"{what}, image {i}, {key}", mine[key], theirs[key])


def heads_for_tests(**settings) -> RoIHeads:
    """A RoIHeads whose losses and detect can run (the pooler, head and predictor are not used)."""
    return RoIHeads(MultiScaleRoIAlign(7), nn.Identity(), nn.Identity(), **settings)


def random_boxes(generator, n: int, size=IMAGE_SIZE, centres=None) -> Tensor:
    """n boxes (n, 4) inside an image of `size`, crowded around a few centres when they are given."""
    h, w = size
    if centres is None:
        centre = torch.rand(n, 2, generator=generator) * torch.tensor([w, h])
    else:
        which = torch.randint(0, len(centres), (n,), generator=generator)
        centre = centres[which] + 5 * torch.randn(n, 2, generator=generator)
    half = 5 + 20 * torch.rand(n, 2, generator=generator)
    boxes = torch.cat([centre - half, centre + half], dim=1)
    return ops.clip_boxes_to_image(boxes, size)


def training_batch(generator, heads: RoIHeads, num_classes: int):
    """Sampled proposals, matched indices, labels and targets of two images, as RoIHeads.forward makes them."""
    proposals, targets = [], []
    for num_objects in (3, 1):
        gt = random_boxes(generator, num_objects)
        centres = (gt[:, :2] + gt[:, 2:]) / 2
        proposals.append(random_boxes(generator, 40, centres=centres))
        labels = torch.randint(1, num_classes, (num_objects,), generator=generator)
        targets.append({"boxes": gt, "labels": labels})
    torch.manual_seed(0)  # the sampler draws with the global generator (restored by _keeps_global_rng)
    sampled, matched, labels = heads.sample_proposals(proposals, targets)
    return sampled, matched, labels, targets


def detection_inputs(generator, num_classes: int, counts=(30, 20), delta_scale=1.0):
    """Head outputs for two images: logits (K, C), deltas (K, 4C), proposals per image, image sizes."""
    centres = torch.tensor([[40.0, 40.0], [90.0, 70.0], [60.0, 100.0]])
    proposals = [random_boxes(generator, n, centres=centres) for n in counts]
    k = sum(counts)
    class_logits = 2 * torch.randn(k, num_classes, generator=generator)
    deltas = delta_scale * torch.randn(k, 4 * num_classes, generator=generator)
    return class_logits, deltas, proposals, [IMAGE_SIZE, IMAGE_SIZE]


# --- the exercises -----------------------------------------------------------------------------------


@_keeps_global_rng
def exercise_1(foreground_fraction) -> None:
    """foreground_fraction(num_foreground, num_background, batch_size_per_image, positive_fraction) -> float."""
    cases = [(512, 0.25), (64, 0.25), (64, 1.0), (512, 1.0)]
    counts = [(0, 0), (0, 100), (3, 0), (3, 100), (16, 100), (40, 63), (40, 2000), (100, 3), (300, 2000), (700, 5)]
    for batch, fraction in cases:
        sampler = BalancedPositiveNegativeSampler(batch, fraction)
        for num_fg, num_bg in counts:
            labels = torch.cat([torch.ones(num_fg), torch.zeros(num_bg)])
            pos, neg = sampler(labels, generator=torch.Generator().manual_seed(0))
            sampled = int(pos.sum() + neg.sum())
            expected = int(pos.sum()) / sampled if sampled else 0.0
            got = _number(1, "the fraction", _call(1, foreground_fraction, num_fg, num_bg, batch, fraction))
            assert math.isclose(got, expected, abs_tol=1e-9), (
                f"exercise 1: {num_fg} foreground and {num_bg} background candidates, {batch} per image, at most "
                f"{fraction:.0%} foreground: the foreground is {expected:.4f} of the sampler's sample, got {got:.4f}"
                + (" (it samples fewer than the batch when there are fewer candidates)" if sampled < batch else "")
            )


@_keeps_global_rng
def exercise_2(answer: dict) -> None:
    """{"losses": f(heads, logits, deltas (K, 4), proposals, matched, labels, targets) -> dict,
    "detect": f(heads, logits, deltas (K, 4), proposals, image_sizes) -> [dict]}: class-agnostic deltas.

    Class-agnostic deltas are class-specific ones that happen to be equal for every class, so the
    answer must agree with minimtl's RoIHeads on deltas.repeat(1, C).
    """
    _keys(2, answer, ("losses", "detect"))
    generator = torch.Generator().manual_seed(0)
    num_classes = 4
    heads = heads_for_tests()
    sampled, matched, labels, targets = training_batch(generator, heads, num_classes)
    k = sum(len(s) for s in sampled)
    class_logits = torch.randn(k, num_classes, generator=generator)
    deltas = 0.5 * torch.randn(k, 4, generator=generator)
    got = _call(2, answer["losses"], heads, class_logits, deltas, sampled, matched, labels, targets)
    expected = heads.losses(class_logits, deltas.repeat(1, num_classes), sampled, matched, labels, targets)
    if not isinstance(got, dict) or set(got) != set(expected):
        raise AssertionError(f"exercise 2: losses should return a dict with the keys {sorted(expected)}")
    for name in expected:
        _close(2, f"losses' {name}", got[name], expected[name])

    for delta_scale in (0.5, 3.0):
        class_logits, deltas, proposals, sizes = detection_inputs(generator, num_classes)
        deltas = delta_scale * deltas[:, :4]  # (K, 4): one set for every class
        got = _call(2, answer["detect"], heads, class_logits, deltas, proposals, sizes)
        expected = heads.detect(class_logits, deltas.repeat(1, num_classes), proposals, sizes)
        _same_detections(2, "detect", got, expected)


def argmax_rule(heads: RoIHeads, class_logits, deltas, proposals, image_sizes) -> list[dict]:
    """Detections when each proposal gives only its most likely class (none when that is the background)."""
    out = []
    counts = [len(p) for p in proposals]
    boxes_all = heads.box_coder.decode(deltas, torch.cat(proposals)).reshape(len(deltas), -1, 4)  # (K, C, 4)
    for boxes, scores, size in zip(
        boxes_all.split(counts), F.softmax(class_logits, -1).split(counts), image_sizes, strict=True
    ):
        score, label = scores.max(dim=1)  # (P,): the argmax over every class, background included
        boxes = ops.clip_boxes_to_image(boxes[torch.arange(len(label)), label], size)
        keep = torch.where((label > 0) & (score > heads.score_thresh))[0]
        boxes, score, label = boxes[keep], score[keep], label[keep]
        keep = ops.remove_small_boxes(boxes, min_size=1e-2)
        boxes, score, label = boxes[keep], score[keep], label[keep]
        keep = ops.batched_nms(boxes, score, label, heads.nms_thresh)[: heads.detections_per_img]
        out.append({"boxes": boxes[keep], "labels": label[keep], "scores": score[keep]})
    return out


def _found(detections: dict, box: Tensor, label: int) -> bool:
    """Is the object found: a detection of its class with IoU >= 0.5 (chapter 7's foreground rule)?"""
    same = detections["labels"] == label
    return bool(same.any() and ops.box_iou(box[None], detections["boxes"][same]).max() >= 0.5)


@_keeps_global_rng
def exercise_3(answer: dict) -> None:
    """{"proposals": (K, 4), "class_logits": (K, C), "boxes": (G, 4), "labels": (G,)} in a 128 x 128 image,
    zero deltas: every object found by detect, at least one lost by the argmax rule."""
    _keys(3, answer, ("proposals", "class_logits", "boxes", "labels"))
    proposals, logits = torch.as_tensor(answer["proposals"]).float(), torch.as_tensor(answer["class_logits"]).float()
    boxes, labels = torch.as_tensor(answer["boxes"]).float(), torch.as_tensor(answer["labels"]).long()
    if proposals.dim() != 2 or proposals.shape[1] != 4 or len(proposals) == 0:
        raise AssertionError(f"exercise 3: proposals should be a (K, 4) tensor, K >= 1, got {tuple(proposals.shape)}")
    if logits.dim() != 2 or logits.shape[0] != len(proposals) or logits.shape[1] < 3:
        raise AssertionError(
            f"exercise 3: class_logits should be (K, C) = ({len(proposals)}, C) with C >= 3 (the background and at "
            f"least two classes), got {tuple(logits.shape)}"
        )
    num_classes = logits.shape[1]
    if boxes.dim() != 2 or boxes.shape[1] != 4 or len(boxes) != len(labels) or len(boxes) == 0:
        raise AssertionError("exercise 3: boxes (G, 4) and labels (G,) describe the objects, at least one")
    if not ((labels >= 1) & (labels < num_classes)).all():
        raise AssertionError(f"exercise 3: the objects' labels should be in [1, {num_classes}), got {labels.tolist()}")
    heads = heads_for_tests()
    deltas = torch.zeros(len(proposals), 4 * num_classes)
    every_pair = heads.detect(logits, deltas, [proposals], [IMAGE_SIZE])[0]
    argmax = argmax_rule(heads, logits, deltas, [proposals], [IMAGE_SIZE])[0]
    for g, (box, label) in enumerate(zip(boxes, labels.tolist(), strict=True)):
        assert _found(every_pair, box, label), (
            f"exercise 3: object {g} (class {label}, {box.tolist()}) is not found even by detect (a detection of its "
            "class at IoU >= 0.5): make an example that the every-pair rule gets right"
        )
    lost = [
        g for g, (box, label) in enumerate(zip(boxes, labels.tolist(), strict=True)) if not _found(argmax, box, label)
    ]
    assert lost, (
        "exercise 3: the argmax rule finds every object of your example too; it loses an object only when a proposal's "
        "second most likely class is the one that object needs"
    )


@_keeps_global_rng
def exercise_4(giou_box_loss) -> None:
    """giou_box_loss(heads, deltas (K, 4C), proposals, matched, labels, targets) -> the GIoU loss_box_reg."""
    generator = torch.Generator().manual_seed(1)
    num_classes = 4
    heads = heads_for_tests(box_loss="giou")
    for delta_scale in (0.3, 2.0):
        sampled, matched, labels, targets = training_batch(generator, heads, num_classes)
        k = sum(len(s) for s in sampled)
        class_logits = torch.randn(k, num_classes, generator=generator)
        deltas = delta_scale * torch.randn(k, 4 * num_classes, generator=generator)
        expected = heads.losses(class_logits, deltas, sampled, matched, labels, targets)["loss_box_reg"]
        got = _call(4, giou_box_loss, heads, deltas, sampled, matched, labels, targets)
        if isinstance(got, Tensor) and got.shape == expected.shape:
            wrong_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
            heads.box_coder, right_coder = wrong_coder, heads.box_coder
            unweighted = heads.losses(class_logits, deltas, sampled, matched, labels, targets)["loss_box_reg"]
            heads.box_coder = right_coder
            if torch.allclose(got, unweighted, atol=1e-6) and not torch.allclose(got, expected, atol=1e-6):
                raise AssertionError(
                    "exercise 4: you decoded the deltas with unit weights; the box head's are (10, 10, 5, 5) "
                    "(heads.box_coder)"
                )
        _close(4, f"the GIoU box loss (deltas of scale {delta_scale})", got, expected)


@_keeps_global_rng
def exercise_5(answer: dict) -> None:
    """{"loss": the smooth-L1 loss of a 10 % width error with unit weights, "branch": "quadratic" | "linear",
    "beta": b, "scale": s}, with s * smooth_l1(x; b) == smooth_l1(5 x; 1/9) for every x."""
    _keys(5, answer, ("loss", "branch", "beta", "scale"))
    target, predicted = torch.tensor([[10.0, 15, 50, 45]]), torch.tensor([[8.0, 15, 52, 45]])  # 40 and 44 wide
    proposal = torch.tensor([[12.0, 14, 48, 44]])
    beta = 1 / 9
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    expected = smooth_l1_loss(coder.encode(predicted, proposal), coder.encode(target, proposal), beta=beta).item()
    weighted = BoxCoder((10.0, 10.0, 5.0, 5.0))
    with_weights = smooth_l1_loss(weighted.encode(predicted, proposal), weighted.encode(target, proposal), beta=beta)
    loss = _number(5, "loss", answer["loss"])
    if math.isclose(loss, with_weights.item(), rel_tol=1e-3):
        raise AssertionError(
            "exercise 5: that is the loss with the weights (10, 10, 5, 5); the question is with (1, 1, 1, 1)"
        )
    assert math.isclose(loss, expected, rel_tol=1e-3), (
        f"exercise 5: the smooth-L1 loss (beta = 1/9) of a width 10 % too large, with unit weights, is not {loss:.5g}; "
        "the delta that is off is dw = log(w / w_a)"
    )
    error = math.log(44 / 40)
    branch = "quadratic" if error < beta else "linear"
    assert answer["branch"] in BRANCHES, f"exercise 5: branch should be one of {BRANCHES}, got {answer['branch']!r}"
    assert answer["branch"] == branch, (
        f"exercise 5: |dw error| = {error:.4f} against beta = {beta:.4f}: which side of beta is it on?"
    )
    b, s = _number(5, "beta", answer["beta"]), _number(5, "scale", answer["scale"])
    if b <= 0:
        raise AssertionError(f"exercise 5: beta must be > 0, got {b}")
    x = torch.linspace(-1.0, 1.0, 2001, dtype=torch.float64)  # errors of the unweighted dw, both branches
    mine = s * smooth_l1_loss(x, torch.zeros_like(x), beta=b, reduction="none")
    weighted_loss = smooth_l1_loss(5 * x, torch.zeros_like(x), beta=beta, reduction="none")
    worst = (mine - weighted_loss).abs().max().item()
    assert worst < 1e-9 * max(1.0, s), (
        f"exercise 5: scale * smooth_l1(x; beta) with beta = {b:.4g}, scale = {s:.4g} is not smooth_l1(5 x; 1/9) "
        f"(off by up to {worst:.3g}); smooth_l1(c x; beta) = c smooth_l1(x; beta / c)"
    )


def detect_one_nms_reference(heads: RoIHeads, class_logits, deltas, proposals, image_sizes) -> list[dict]:
    """RoIHeads.detect with one NMS over all classes (ops.nms in place of ops.batched_nms)."""
    num_classes = class_logits.shape[-1]
    boxes_all = heads.box_coder.decode(deltas, torch.cat(proposals)).reshape(len(deltas), -1, 4)  # (K, C, 4)
    scores_all = F.softmax(class_logits, -1)
    counts = [len(p) for p in proposals]
    out = []
    for boxes, scores, size in zip(boxes_all.split(counts), scores_all.split(counts), image_sizes, strict=True):
        boxes = ops.clip_boxes_to_image(boxes, size)
        labels = torch.arange(num_classes).view(1, -1).expand_as(scores)
        boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
        keep = torch.where(scores > heads.score_thresh)[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = ops.remove_small_boxes(boxes, min_size=1e-2)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = ops.nms(boxes, scores, heads.nms_thresh)[: heads.detections_per_img]
        out.append({"boxes": boxes[keep], "labels": labels[keep], "scores": scores[keep]})
    return out


@_keeps_global_rng
def exercise_6(detect_one_nms) -> None:
    """detect_one_nms(heads, class_logits, deltas, proposals, image_sizes) -> [dict] with one NMS over classes."""
    heads = heads_for_tests()
    # By hand: one proposal, two classes likely (0.5 and 0.4), zero deltas: the same box twice.
    logits = torch.log(torch.tensor([[0.1, 0.5, 0.4]]))
    proposals = [torch.tensor([[20.0, 20.0, 80.0, 100.0]])]
    got = _call(6, detect_one_nms, heads, logits, torch.zeros(1, 12), proposals, [IMAGE_SIZE])
    if (
        isinstance(got, (list, tuple))
        and len(got) == 1
        and isinstance(got[0], dict)
        and len(got[0].get("boxes", [])) == 2
    ):
        raise AssertionError(
            "exercise 6: one proposal likely to be class 1 (0.5) or class 2 (0.4), the same box for both: one NMS over "
            "all classes keeps only the class-1 box; you kept both, as the per-class NMS does"
        )
    _same_detections(
        6, "the hand case", got, detect_one_nms_reference(heads, logits, torch.zeros(1, 12), proposals, [IMAGE_SIZE])
    )

    generator = torch.Generator().manual_seed(0)
    for settings in ({}, {"score_thresh": 0.2, "detections_per_img": 10}):
        heads = heads_for_tests(**settings)
        class_logits, deltas, proposals, sizes = detection_inputs(generator, 4, delta_scale=2.0)
        got = _call(6, detect_one_nms, heads, class_logits, deltas, proposals, sizes)
        expected = detect_one_nms_reference(heads, class_logits, deltas, proposals, sizes)
        _same_detections(6, f"random head outputs {settings or '(default settings)'}", got, expected)
