"""Checks for the exercises of chapter 11 (training and evaluation). `exercise_K(answer)` returns
quietly when the answer is right and raises an AssertionError that says what is wrong otherwise.
Each check computes the answer with minimtl itself (evaluate, analyze_errors, the trainer's schedule,
box_iou) on the exercise's own small example, in well under a second."""

import math

import numpy as np
import torch

from minimtl.app import presets
from minimtl.app.config import resolve
from minimtl.engine.trainer import learning_rate_factor
from minimtl.evaluation import RECALL_THRESHOLDS, analyze_errors, classify_image, evaluate
from minimtl.ops import box_iou

# The hand example of section 11.3: two objects, three detections.
HAND_TARGET = {"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), "labels": torch.tensor([1, 1])}
HAND_BOXES = torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 34]])


def _number(answer, what: str) -> float:
    assert isinstance(answer, (int, float, np.floating, np.integer)) and not isinstance(answer, bool), (
        f"{what}: give a number, got {type(answer).__name__} {answer!r}"
    )
    return float(answer)


def exercise_1(answer) -> None:
    """AP50 of the hand example with the scores of the second and third detections swapped."""
    detections = {"boxes": HAND_BOXES, "labels": torch.tensor([1, 1, 1]), "scores": torch.tensor([0.9, 0.7, 0.8])}
    expected = evaluate([detections], [HAND_TARGET])["AP50"]
    value = _number(answer, "exercise 1")
    assert abs(value - expected) < 1e-3, (
        f"AP50 is not {value:.4f}. With the scores swapped the ranking is hit, hit, miss: where does recall "
        "reach 1, and what is the precision there?"
    )


def _raw_and_coco_ap(flags, num_objects: int):
    """AP at the 101 recall levels from the raw precision and from its envelope (COCO's), for a ranking."""
    tp = np.cumsum(flags)
    precision = tp / np.arange(1, len(flags) + 1)
    recall = tp / num_objects
    at = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")  # the first rank reaching each level
    reached = at < len(flags)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    raw, coco = np.zeros(len(at)), np.zeros(len(at))
    raw[reached], coco[reached] = precision[at[reached]], envelope[at[reached]]
    return raw.mean(), coco.mean()


def exercise_2(answer) -> None:
    """(flags, num_objects): a ranking (1 = true positive, by decreasing score) whose COCO AP (envelope)
    is at least 0.15 above the AP read from the raw precision."""
    assert isinstance(answer, tuple) and len(answer) == 2, f"give (flags, num_objects), got {answer!r}"
    flags, num_objects = answer
    flags = [int(f) for f in flags]
    assert flags and set(flags) <= {0, 1}, "flags must be a non-empty list of 0 (false) and 1 (true positive)"
    assert isinstance(num_objects, int) and num_objects >= max(sum(flags), 1), (
        f"there must be at least as many objects as true positives ({sum(flags)}), got {num_objects!r}"
    )
    raw, coco = _raw_and_coco_ap(np.array(flags), num_objects)
    # the envelope's AP is `evaluate`'s: a box per object, the true positives on them, the rest on nothing
    objects = torch.tensor([[20.0 * k, 0, 20 * k + 10, 10] for k in range(num_objects)])
    rows = [objects[k].tolist() for k in range(sum(flags))]
    boxes, hit = [], 0
    for f in flags:
        boxes.append(rows[hit] if f else [0.0, 50, 10, 60])
        hit += f
    detections = {"boxes": torch.tensor(boxes), "labels": torch.ones(len(flags), dtype=torch.int64),
                  "scores": torch.linspace(1, 0.01, len(flags))}  # fmt: skip
    target = {"boxes": objects, "labels": torch.ones(num_objects, dtype=torch.int64)}
    assert abs(coco - evaluate([detections], [target])["AP50"]) < 1e-9  # the check's own consistency
    assert coco - raw >= 0.15, (
        f"this ranking gives AP {coco:.3f} with the envelope and {raw:.3f} with the raw precision: a difference "
        f"of {coco - raw:.3f}, under 0.15. The two differ where precision rises again after a run of false "
        "positives: put some there, followed by many true positives."
    )


def exercise_3(answer) -> None:
    """The demo's learning rate at steps 50, 1550, 2250 (cosine) and at step 2500 with schedule="step"."""
    train = resolve(presets.preset("demo")).train
    step_schedule = resolve(presets.preset("demo"), {"train": {"schedule": "step"}}).train
    expected = [train.lr * learning_rate_factor(s, train) for s in (50, 1550, 2250)]
    expected.append(step_schedule.lr * learning_rate_factor(2500, step_schedule))
    assert isinstance(answer, (tuple, list)) and len(answer) == 4, f"give four learning rates, got {answer!r}"
    names = ("step 50 (warm-up)", "step 1550 (cosine)", "step 2250 (cosine)", "step 2500 (step schedule)")
    for name, value, right in zip(names, answer, expected, strict=True):
        value = _number(value, f"exercise 3, {name}")
        assert math.isclose(value, right, rel_tol=1e-4), (
            f"{name}: {value:.6g} is not the trainer's learning rate. Warm-up starts at lr * warmup_factor; "
            "the cosine runs over the steps after the warm-up; milestones are fractions of all the steps."
        )


# Exercise 4's scene: a circle, a square and a triangle (labels 1, 2, 3), six detections.
SCENE_TARGET = {"boxes": torch.tensor([[10.0, 10, 40, 40], [60, 10, 90, 40], [10, 60, 40, 90]]),
                "labels": torch.tensor([1, 2, 3])}  # fmt: skip
SCENE_DETECTIONS = {
    "boxes": torch.tensor(
        [
            [10.0, 10, 40, 40],
            [10, 60, 40, 90],
            [12, 10, 40, 42],
            [60, 10, 75, 25],
            [100, 100, 120, 120],
            [60, 25, 90, 55],
        ]
    ),
    "labels": torch.tensor([1, 2, 1, 2, 3, 3]),
    "scores": torch.tensor([0.95, 0.9, 0.85, 0.8, 0.7, 0.6]),
}


def exercise_4(answer) -> None:
    """The TIDE error type of each of the six detections of the scene, in order."""
    expected = classify_image(SCENE_DETECTIONS, SCENE_TARGET)["types"].tolist()
    assert isinstance(answer, (list, tuple)) and len(answer) == 6, f"give six type names, got {answer!r}"
    wrong = [(k, a, e) for k, (a, e) in enumerate(zip(answer, expected, strict=True)) if a != e]
    assert not wrong, "not right: " + "; ".join(
        f"detection {k} is not {a!r} (compute its IoU with every object, of its class and of the others)"
        for k, a, _ in wrong
    )


DUPLICATE_DETECTIONS = {"boxes": torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 11], [20, 20, 30, 30]]),
                        "labels": torch.tensor([1, 1, 1]), "scores": torch.tensor([0.9, 0.8, 0.7])}  # fmt: skip


def exercise_5(answer) -> None:
    """The AP50 cost of the duplicate (0.8) in a scene with the hand example's two objects."""
    expected = analyze_errors([DUPLICATE_DETECTIONS], [HAND_TARGET]).costs["duplicate"]
    value = _number(answer, "exercise 5")
    assert abs(value - expected) < 1e-3, (
        f"{value:.4f} is not the AP50 gained by removing the duplicate. Compute AP50 with it (ranking hit, "
        "miss, hit) and without it (hit, hit), and subtract."
    )


def exercise_6(answer) -> None:
    """The largest whole-pixel horizontal shifts (16 px box at IoU 0.9, at 0.5; 64 px box at 0.9, at 0.5)."""
    assert isinstance(answer, (tuple, list)) and len(answer) == 4, f"give four whole numbers, got {answer!r}"
    cases = ((16, 0.9), (16, 0.5), (64, 0.9), (64, 0.5))
    for (side, threshold), shift in zip(cases, answer, strict=True):
        assert isinstance(shift, (int, np.integer)) and shift >= 0, f"shifts are whole pixels >= 0, got {shift!r}"
        box = torch.tensor([[0.0, 0, side, side]])

        def iou(s, box=box, side=side):
            return float(box_iou(box, torch.tensor([[float(s), 0, s + side, side]]))[0, 0])

        assert iou(shift) >= threshold and iou(shift + 1) < threshold, (
            f"a {side} px box shifted by {shift} px has IoU {iou(shift):.3f} (by {shift + 1}: {iou(shift + 1):.3f}) "
            f"with itself: {shift} is not the largest shift keeping IoU >= {threshold}. IoU = (w - s) / (w + s)."
        )
