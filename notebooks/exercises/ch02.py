"""Checks for the exercises of chapter 2, non-maximum suppression (notebooks/02_nms.ipynb).

Each `exercise_K(answer)` returns quietly when the answer is right and raises an AssertionError that
says what is wrong otherwise. Values are compared with what minimtl computes (`ops.nms`,
`reference.nms`, `ops.box_iou`); functions are run on the chapter's hand example, on edge cases and on
seeded random boxes. Worked solutions: notebooks/solutions/ch02.py.
"""

import math

import torch

from exercises.common import close_elementwise as _close
from exercises.common import record as _record
from minimtl import ops
from minimtl.bench.ops import random_boxes, unique_scores
from minimtl.ops import reference

# Section 3's hand example.
HAND_BOXES = torch.tensor(
    [[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 5.0]]
)
HAND_SCORES = torch.tensor([0.9, 0.8, 0.7, 0.95])

W = 64  # boxes per word of the CUDA mask (kBoxesPerBlock in csrc/cuda/nms.cu)
# The gather kernel's shared memory, as csrc/cuda/nms.cu declares it: 48 KiB of 8-byte words, less the
# 64 `diagonal` words and `group_kept`, one bit per box.
MAX_BOXES = (48 * 1024 // 8 - W - 1) * W


def _call(k: int, name: str, fn, *args, **kwargs):
    """fn(*args, **kwargs); an exception becomes an AssertionError that names the exercise."""
    try:
        return fn(*args, **kwargs)
    except Exception as error:  # the learner's code failed: say where, as an assertion
        raise AssertionError(f"exercise {k}: {name} raised {type(error).__name__}: {error}") from error


def _as_list(k: int, value, what: str) -> list[int]:
    if torch.is_tensor(value):
        value = value.tolist()
    assert isinstance(value, (list, tuple)), f"exercise {k}: {what} should be a list of indices, got {value!r}"
    return [int(v) for v in value]


def _greedy(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, inclusive: bool) -> list[int]:
    """Greedy NMS as reference.nms, with IoU > t (inclusive=False) or IoU >= t (inclusive=True)."""
    order = reference.order_by_score(scores).tolist()
    iou = ops.box_iou(boxes, boxes)
    t = torch.tensor(threshold, dtype=iou.dtype)  # compared in the boxes' dtype, as the kernels do
    keep = []
    for i in order:
        if all(not (iou[j, i] >= t if inclusive else iou[j, i] > t) for j in keep):
            keep.append(i)
    return keep


def exercise_1(answer) -> None:
    """answer: {"keep": the hand example's indices at 0.5 with >=, "boxes": (a, b) integer boxes with IoU 0.5}."""
    answer = _record(1, answer, {"keep", "boxes"})
    keep = _as_list(1, answer["keep"], "keep")
    strict = reference.nms(HAND_BOXES, HAND_SCORES, 0.5).tolist()
    expected = _greedy(HAND_BOXES, HAND_SCORES, 0.5, inclusive=True)
    assert _greedy(HAND_BOXES, HAND_SCORES, 0.5, inclusive=False) == strict  # the helper is the reference with >
    assert keep == expected, (
        f"exercise 1: with >= the hand example keeps {expected} at threshold 0.5 (with > it keeps {strict}), got {keep}"
    )
    pair = answer["boxes"]
    assert isinstance(pair, (list, tuple)) and len(pair) == 2, (
        f"exercise 1: boxes should be a pair (a, b), got {pair!r}"
    )
    a, b = (torch.as_tensor(box, dtype=torch.float32).reshape(1, 4) for box in pair)
    assert torch.equal(a, a.round()) and torch.equal(b, b.round()), f"exercise 1: use integer coordinates, got {pair}"
    assert (reference.box_area(torch.cat([a, b])) > 0).all(), f"exercise 1: both boxes should be non-empty, got {pair}"
    iou = ops.box_iou(a, b).item()
    assert iou == 0.5, f"exercise 1: IoU(a, b) should be exactly 0.5, got {iou!r}"
    inter = reference._intersection(a, b).item()
    areas = reference.box_area(torch.cat([a, b])).tolist()
    assert inter < min(areas), (
        f"exercise 1: one box contains the other here (|a ∩ b| = {inter:g}, areas {areas}), as box 3 lies in box 0: "
        "find another way to reach 0.5"
    )


def _iou_count(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> int:
    """The IoUs the CPU kernel computes: N - 1 - r for each kept box of rank r."""
    n = len(boxes)
    rank = torch.empty(n, dtype=torch.long)
    rank[reference.order_by_score(scores)] = torch.arange(n)
    return sum(n - 1 - rank[i].item() for i in ops.nms(boxes, scores, threshold).tolist())  # == reference.nms


def exercise_2(answer) -> None:
    """answer: {"count": fn(boxes, scores, iou_threshold) -> int, "all_kept": fn(n), "top_removes_all": fn(n)}."""
    answer = _record(2, answer, {"count", "all_kept", "top_removes_all"})
    for n in (1, 2, 10, 40):
        disjoint = torch.arange(n, dtype=torch.float32)[:, None] * 3 + torch.tensor([0.0, 0.0, 1.0, 1.0])  # (n, 4)
        expected = _iou_count(disjoint, torch.arange(n, dtype=torch.float32), 0.5)
        got = _call(2, f"all_kept({n})", answer["all_kept"], n)
        assert got == expected, (
            f"exercise 2: when all {n} boxes are kept the kernel computes {expected} IoUs, got {got}"
        )
        same = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(n, 1)  # (n, 4): the top box removes all the others
        expected = _iou_count(same, torch.arange(n, 0, -1, dtype=torch.float32), 0.5)
        got = _call(2, f"top_removes_all({n})", answer["top_removes_all"], n)
        assert got == expected, (
            f"exercise 2: when the top box removes the other {n - 1}, the kernel computes {expected} IoUs, got {got}"
        )
    g = torch.Generator().manual_seed(2)
    sparse, crowded = random_boxes(300, generator=g), random_boxes(300, size=100.0, generator=g)
    crowded_tied = random_boxes(200, size=200.0, generator=g)
    cases = [
        ("the hand example at 0.5", HAND_BOXES, HAND_SCORES, 0.5),
        ("the hand example at 0.49", HAND_BOXES, HAND_SCORES, 0.49),
        ("no boxes", torch.zeros(0, 4), torch.zeros(0), 0.5),
        ("300 boxes in a 1000 x 1000 image", sparse, unique_scores(300, generator=g), 0.5),
        ("300 boxes in a 100 x 100 image", crowded, unique_scores(300, generator=g), 0.5),
        ("tied scores", crowded_tied, torch.randint(0, 3, (200,), generator=g) / 3, 0.3),
    ]
    for name, boxes, scores, threshold in cases:
        got = _call(2, "count", answer["count"], boxes, scores, threshold)
        expected = _iou_count(boxes, scores, threshold)
        kept = len(ops.nms(boxes, scores, threshold))
        assert got == expected, (
            f"exercise 2: on {name} (threshold {threshold}) the CPU kernel keeps {kept} of {len(boxes)} boxes and "
            f"computes {expected} IoUs, got {got}"
        )


def _soft_nms(boxes, scores, sigma=0.5, score_threshold=0.001):
    """Gaussian Soft-NMS (Bodla et al., ICCV 2017), as exercise 3 specifies it. -> (keep, kept scores)."""
    iou = ops.box_iou(boxes, boxes)  # (N, N)
    scores = scores.clone()
    alive = scores >= score_threshold  # (N,)
    keep, kept_scores = [], []
    while alive.any():
        i = torch.where(alive, scores, -math.inf).argmax().item()  # ties: the first, the lowest index
        keep.append(i)
        kept_scores.append(scores[i].item())
        alive[i] = False
        scores = torch.where(alive, scores * torch.exp(-(iou[i] ** 2) / sigma), scores)
        alive &= scores >= score_threshold
    return torch.tensor(keep, dtype=torch.int64), torch.tensor(kept_scores, dtype=scores.dtype)


def exercise_3(soft_nms) -> None:
    """soft_nms(boxes, scores, sigma=0.5, score_threshold=0.001) -> (keep int64, their scores when picked)."""
    g = torch.Generator().manual_seed(3)
    cases = [
        ("the hand example", HAND_BOXES.double(), HAND_SCORES.double(), {}),
        ("the hand example, sigma 0.1", HAND_BOXES.double(), HAND_SCORES.double(), {"sigma": 0.1}),
        ("no boxes", torch.zeros(0, 4, dtype=torch.float64), torch.zeros(0, dtype=torch.float64), {}),
        ("three equal boxes with equal scores", torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 3, dtype=torch.float64),
         torch.ones(3, dtype=torch.float64), {}),
        ("scores below the threshold", HAND_BOXES.double(), torch.tensor([0.9, 0.0005, 0.7, 0.95], dtype=torch.float64),
         {"score_threshold": 0.001}),
        ("60 crowded random boxes", random_boxes(60, torch.float64, size=150.0, generator=g),
         torch.rand(60, generator=g, dtype=torch.float64), {"sigma": 0.3, "score_threshold": 0.05}),
    ]  # fmt: skip
    for name, boxes, scores, kwargs in cases:
        out = _call(3, "soft_nms", soft_nms, boxes, scores, **kwargs)
        assert isinstance(out, tuple) and len(out) == 2, (
            f"exercise 3: soft_nms should return (keep, scores), got {out!r}"
        )
        keep, kept_scores = out
        expected_keep, expected_scores = _soft_nms(boxes, scores, **kwargs)
        assert torch.is_tensor(keep) and keep.dtype == torch.int64, (
            f"exercise 3: keep should be int64 indices, got {keep!r}"
        )
        assert keep.tolist() == expected_keep.tolist(), (
            f"exercise 3: on {name} ({kwargs or 'defaults'}) Soft-NMS picks the boxes {expected_keep.tolist()} in this "
            f"order, got {keep.tolist()} (re-sort by the decayed scores after every pick)"
        )
        _close(3, f"the scores of the picked boxes on {name}", kept_scores, expected_scores, atol=1e-9)


def _triangular_words(n: int) -> int:
    """Words of the upper triangle of tiles: row i holds column blocks i // 64 ... B - 1."""
    blocks = math.ceil(n / W)
    return sum(min(W, n - r * W) * (blocks - r) for r in range(blocks))


def exercise_4(answer) -> None:
    """answer: {"mask_bytes": {n: bytes}, "triangular_bytes": {n: bytes}, "word_index": fn(i, col_block, n)}."""
    answer = _record(4, answer, {"mask_bytes", "triangular_bytes", "word_index"})
    sizes = (100_000, MAX_BOXES)
    for key in ("mask_bytes", "triangular_bytes"):
        assert isinstance(answer[key], dict) and set(answer[key]) == set(sizes), (
            f"exercise 4: {key} should map each of {sizes} to a number of bytes, got {answer[key]!r}"
        )
    for n in sizes:
        full = n * math.ceil(n / W) * 8
        assert answer["mask_bytes"][n] == full, (
            f"exercise 4: the mask for {n:,} boxes is {n:,} rows of {math.ceil(n / W):,} 8-byte words = {full:,} "
            f"bytes, got {answer['mask_bytes'][n]!r}"
        )
        triangular = _triangular_words(n) * 8
        assert answer["triangular_bytes"][n] == triangular, (
            f"exercise 4: keeping only the tiles on and above the diagonal, {n:,} boxes need {triangular:,} bytes "
            f"({triangular / full:.1%} of the full mask), got {answer['triangular_bytes'][n]!r}"
        )
    word_index = answer["word_index"]
    for n in (1, 63, 64, 65, 130, 700):
        blocks, position = math.ceil(n / W), 0
        for i in range(n):
            for col_block in range(i // W, blocks):
                got = _call(4, f"word_index({i}, {col_block}, {n})", word_index, i, col_block, n)
                assert got == position, (
                    f"exercise 4: with {n} boxes, word (row {i}, column block {col_block}) is word {position} of the "
                    f"triangular layout (row by row, each row from its own block to the last), got {got}"
                )
                position += 1
    n, blocks = 100_000, math.ceil(100_000 / W)
    for i, col_block in ((0, 0), (99_999, blocks - 1), (64 * 700 + 5, 900)):
        r = i // W
        expected = W * (r * blocks - r * (r - 1) // 2) + (i - r * W) * (blocks - r) + (col_block - r)
        got = _call(4, f"word_index({i}, {col_block}, {n})", word_index, i, col_block, n)
        assert got == expected, f"exercise 4: word_index({i}, {col_block}, {n}) should be {expected}, got {got}"


def _float32_spacing(value: float) -> float:
    x = torch.tensor(value, dtype=torch.float32)
    return (torch.nextafter(x, torch.tensor(math.inf)) - x).item()


def exercise_5(answer) -> None:
    """answer: {"shifted": IoUs, "per_class": IoUs, "last_class": the largest class index at 1/64 pixel or finer}."""
    answer = _record(5, answer, {"shifted", "per_class", "last_class"})
    n, classes = 8000, 80
    shifted = n * (n - 1) // 2  # every box kept: sum over ranks r of N - 1 - r
    per_class = classes * ((n // classes) * (n // classes - 1) // 2)
    assert answer["shifted"] == shifted, (
        f"exercise 5: one NMS over all {n:,} shifted boxes, every box kept, computes {shifted:,} IoUs, got "
        f"{answer['shifted']!r}"
    )
    assert answer["per_class"] == per_class, (
        f"exercise 5: {classes} NMS runs over {n // classes} boxes each, every box kept, compute {per_class:,} IoUs, "
        f"got {answer['per_class']!r}"
    )
    width = 1333  # offsets c * (max coordinate + 1), as in section 2.4's cell
    c = 0
    while _float32_spacing(c * (width + 1) + width) <= 1 / 64:
        c += 1
    last = c - 1
    assert answer["last_class"] == last, (
        f"exercise 5: class {last} reaches {last * (width + 1) + width:,}, where float32 numbers are "
        f"{_float32_spacing(last * (width + 1) + width)} apart; class {last + 1} reaches "
        f"{(last + 1) * (width + 1) + width:,}, spacing {_float32_spacing((last + 1) * (width + 1) + width)}. "
        f"The answer is {last}, got {answer['last_class']!r}"
    )


_EXERCISE_6 = {
    "earlier_words": {
        "A": None,
        "B": "the mask is allocated with at::empty and the mask kernel returns at once below the diagonal: those "
        "words are never written, so they hold garbage, not zeros",
        "C": "each thread takes words group + 1 + t, group + 1 + t + 256, ...: no thread touches an earlier word",
    },
    "word_group": {
        "A": None,
        "B": "the previous groups' spreads only OR in what the *earlier* groups' boxes remove; the group's own boxes "
        "remove each other too (at threshold 0.49, box 3 removes box 0 of section 3, both in group 0)",
        "C": "boxes of one group do remove each other: the diagonal word diagonal[b] holds whom box b removes in it",
    },
    "first_barrier": {
        "P": None,
        "Q": "group_kept is written after the first barrier, by the decide step; the second barrier orders that",
        "R": "__syncthreads orders shared memory among the block's threads; it does nothing for the end of a kernel",
    },
    "second_barrier": {
        "Q": None,
        "P": "thread 0 reads diagonal and removed[group] before the second barrier: the first one protects those reads",
        "R": "__syncthreads orders shared memory among the block's threads; it does nothing for the end of a kernel",
    },
}


def exercise_6(answer) -> None:
    """answer: {"earlier_words": A/B/C, "word_group": A/B/C, "first_barrier": P/Q/R, "second_barrier": P/Q/R}."""
    answer = _record(6, answer, set(_EXERCISE_6))
    for question, options in _EXERCISE_6.items():
        choice = answer[question]
        assert choice in options, f"exercise 6: {question} should be one of {sorted(options)}, got {choice!r}"
        assert options[choice] is None, f"exercise 6: {question} is not {choice}: {options[choice]}"
