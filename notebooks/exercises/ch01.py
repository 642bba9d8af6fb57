"""Checks for the exercises of chapter 1, box IoU and generalised IoU (notebooks/01_boxes_iou_giou.ipynb).

Each `exercise_K(answer)` returns quietly when the answer is right and raises an AssertionError that
says what is wrong otherwise. Values are compared with what minimtl computes (`ops`, `reference`);
functions are run on the chapter's hand cases, on its degenerate boxes (section 1.5) and on seeded
random boxes. Worked solutions: notebooks/solutions/ch01.py.
"""

import math

import torch

from exercises.common import close_elementwise as _close
from exercises.common import record as _record
from minimtl import ops
from minimtl.bench.ops import random_boxes
from minimtl.ops import reference

NAN = float("nan")
# Section 1.5's boxes: a normal box, zero width, inverted in x, a NaN coordinate, a point.
DEGENERATE = [
    [0.0, 0.0, 2.0, 2.0],
    [1.0, 0.0, 1.0, 2.0],
    [2.0, 0.0, 0.0, 2.0],
    [0.0, NAN, 2.0, 2.0],
    [1.0, 1.0, 1.0, 1.0],
]


def _call(k: int, name: str, fn, *args):
    """fn(*args); an exception becomes an AssertionError that names the exercise and the inputs' shapes."""
    try:
        return fn(*args)
    except Exception as error:  # the learner's code failed: say where, as an assertion
        shapes = ", ".join(str(tuple(a.shape)) if torch.is_tensor(a) else repr(a) for a in args)
        raise AssertionError(f"exercise {k}: {name}({shapes}) raised {type(error).__name__}: {error}") from error


def _box(k: int, value, what: str) -> torch.Tensor:
    """One box (x1, y1, x2, y2) as a float64 tensor of shape (1, 4)."""
    box = torch.as_tensor(value, dtype=torch.float64).reshape(-1)
    assert box.shape == (4,), f"exercise {k}: {what} should be four numbers (x1, y1, x2, y2), got {value!r}"
    return box[None]


def exercise_1(answer) -> None:
    """answer: a pair (a, b) of empty boxes with GIoU(a, b) = -1."""
    assert isinstance(answer, (tuple, list)) and len(answer) == 2, f"exercise 1: pass a pair (a, b), got {answer!r}"
    a, b = _box(1, answer[0], "a"), _box(1, answer[1], "b")
    assert torch.isfinite(a).all() and torch.isfinite(b).all(), "exercise 1: use finite coordinates"
    giou = ops.generalized_box_iou(a, b).item()
    enclosing = torch.cat([torch.minimum(a[:, :2], b[:, :2]), torch.maximum(a[:, 2:], b[:, 2:])], dim=1)  # C
    assert giou == -1, (
        f"exercise 1: GIoU(a, b) should be -1, got {giou:.6g}: IoU {ops.box_iou(a, b).item():.6g}, "
        f"|C| = {reference.box_area(enclosing).item():g}; the penalty (|C| - |a ∪ b|) / |C| must be 1"
    )
    areas = reference.box_area(torch.cat([a, b])).tolist()
    assert areas == [0, 0], (
        f"exercise 1: the areas are {areas}: for non-empty boxes GIoU > -1 (rounding alone reached -1 here); "
        "the pair must be degenerate"
    )


def _fills_enclosing_box(a, b) -> bool:
    a, b = _box(2, a, "a"), _box(2, b, "b")
    return bool(ops.generalized_box_iou(a, b) == ops.box_iou(a, b))


def _integer_boxes(n: int, g: torch.Generator) -> list[tuple[float, ...]]:
    """n non-empty boxes with integer corners in [0, 4]: small enough that equal edges are common."""
    lo = torch.randint(0, 4, (n, 2), generator=g)
    hi = lo + 1 + (torch.rand(n, 2, generator=g) * (4 - lo)).long()  # in (lo, 4]
    return [tuple(float(v) for v in row) for row in torch.cat([lo, hi], 1).tolist()]


def exercise_2(giou_equals_iou) -> None:
    """giou_equals_iou(a, b) -> bool for two non-empty boxes given as tuples (x1, y1, x2, y2)."""
    hand = [
        ((0.0, 0.0, 2.0, 2.0), (0.0, 1.0, 2.0, 3.0)),  # section 1.3 at t = 0: same x-span, overlapping in y
        ((0.0, 0.0, 4.0, 4.0), (1.0, 1.0, 2.0, 3.0)),  # one inside the other
        ((0.0, 0.0, 2.0, 2.0), (0.0, 0.0, 2.0, 2.0)),  # identical
        ((0.0, 0.0, 2.0, 2.0), (0.0, 2.0, 2.0, 3.0)),  # same x-span, touching: IoU 0, still no penalty
        ((0.0, 0.0, 2.0, 2.0), (2.0, 0.0, 5.0, 2.0)),  # same y-span, touching in x
        ((0.0, 0.0, 2.0, 2.0), (1.0, 1.0, 3.0, 3.0)),  # section 1.3's pair: offset in both axes
        ((0.0, 0.0, 2.0, 2.0), (0.0, 3.0, 2.0, 4.0)),  # same x-span, a gap in y
        ((0.0, 0.0, 2.0, 2.0), (0.0, 1.0, 3.0, 3.0)),  # one edge shared, not a span
        ((0.0, 0.0, 2.0, 2.0), (0.5, 1.0, 1.5, 3.0)),  # a cross: the union is not a rectangle
    ]
    g = torch.Generator().manual_seed(1)
    boxes = _integer_boxes(1200, g)
    pairs = hand + list(zip(boxes[::2], boxes[1::2], strict=True))
    for a, b in pairs:
        got = _call(2, "giou_equals_iou", giou_equals_iou, a, b)
        expected = _fills_enclosing_box(a, b)
        assert bool(got) == expected, (
            f"exercise 2: giou_equals_iou({a}, {b}) should be {expected}, got {got} (IoU "
            f"{ops.box_iou(_box(2, a, 'a'), _box(2, b, 'b')).item():.4f}, GIoU "
            f"{ops.generalized_box_iou(_box(2, a, 'a'), _box(2, b, 'b')).item():.4f})"
        )


def _distance_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """DIoU with the library's rules, written like reference.generalized_box_iou. (N, 4), (M, 4) -> (N, M)."""
    iou = reference.box_iou(boxes1, boxes2)  # (N, M)
    centre1, centre2 = (boxes1[:, :2] + boxes1[:, 2:]) / 2, (boxes2[:, :2] + boxes2[:, 2:]) / 2  # (N, 2), (M, 2)
    rho2 = ((centre1[:, None, :] - centre2[None, :, :]) ** 2).sum(-1)  # (N, M)
    top_left = torch.minimum(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    bottom_right = torch.maximum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    diagonal2 = ((bottom_right - top_left) ** 2).sum(-1)  # (N, M)
    diou = iou - reference._safe_divide(rho2, diagonal2)  # no penalty where c^2 = 0 (or NaN)
    return torch.where(torch.isnan(diou), 0, diou)


def _descent(iou_fn, steps: int = 30, lr: float = 2.5) -> list[torch.Tensor]:
    """Section 1.9's descent on 1 - iou_fn(b, a) from b = (3, 0.5, 4.5, 2.5), float32: the path, steps + 1 boxes."""
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[3.0, 0.5, 4.5, 2.5]]).requires_grad_()
    path = [b.detach().clone()]
    for step in range(steps):
        loss = (1 - iou_fn(b, a)).sum()
        b.grad = None
        loss.backward()
        with torch.no_grad():
            b -= lr * 0.5 * (1 + math.cos(math.pi * step / steps)) * b.grad
        path.append(b.detach().clone())
    return path


def exercise_3(answer) -> None:
    """answer: {"distance_box_iou": fn, "widest": the largest x2 - x1 of b along the DIoU descent}."""
    answer = _record(3, answer, {"distance_box_iou", "widest"})
    diou = answer["distance_box_iou"]
    a, b = torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    got, expected = _call(3, "distance_box_iou", diou, a, b), _distance_box_iou(a, b)
    assert torch.is_tensor(got) and got.shape == (1, 1), (
        f"exercise 3: distance_box_iou should return (N, M), got {got!r}"
    )
    assert abs(got.item() - expected.item()) < 1e-6, (
        f"exercise 3: distance_box_iou(a, b) should be 1/7 - 2/18 = {expected.item():.4f} for the boxes of section "
        f"1.3 (centres 1.414 apart, C = (0, 0, 3, 3)), got {got.item():.4f}"
    )
    empty = _call(3, "distance_box_iou", diou, torch.zeros(0, 4), torch.ones(3, 4))
    assert tuple(empty.shape) == (0, 3), f"exercise 3: 0 boxes against 3 should give a (0, 3) result, got {empty.shape}"
    special = torch.tensor(DEGENERATE)
    got = _call(3, "distance_box_iou", diou, special, special)
    assert not got.isnan().any(), f"exercise 3: DIoU must never be NaN; on section 1.5's boxes it gave\n{got}"
    _close(3, "DIoU of section 1.5's boxes", got, _distance_box_iou(special, special), atol=1e-6)
    g = torch.Generator().manual_seed(3)
    for dtype, atol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        b1, b2 = random_boxes(40, dtype, size=100.0, generator=g), random_boxes(30, dtype, size=100.0, generator=g)
        got = _call(3, "distance_box_iou", diou, b1, b2)
        assert got.dtype == dtype, f"exercise 3: {dtype} boxes should give a {dtype} result, got {got.dtype}"
        _close(3, f"DIoU of random {dtype} boxes", got, _distance_box_iou(b1, b2), atol=atol)
    start = torch.tensor([[3.0, 0.5, 4.5, 2.5]], requires_grad=True)
    (grad,) = torch.autograd.grad(_call(3, "distance_box_iou", diou, start, a).sum(), start)
    (expected_grad,) = torch.autograd.grad(_distance_box_iou(start, a).sum(), start)
    _close(3, "the gradient of DIoU at section 1.9's start", grad, expected_grad, atol=1e-6)
    widest = max((box[0, 2] - box[0, 0]).item() for box in _descent(_distance_box_iou))
    got = answer["widest"]
    got = got.item() if torch.is_tensor(got) and got.numel() == 1 else got
    assert isinstance(got, (int, float)) and math.isclose(got, widest, rel_tol=1e-3), (
        f"exercise 3: along the descent on 1 - DIoU (section 1.9's start, 30 steps), b is at most {widest:.3f} wide, "
        f"got widest = {answer['widest']!r}"
    )


_EXERCISE_4_OPTIONS = "ABCD"


def exercise_4(answer) -> None:
    """answer: the letter of the explanation (A, B, C or D) that fits the chapter's account."""
    assert answer in tuple(_EXERCISE_4_OPTIONS), (
        f"exercise 4: answer one of {list(_EXERCISE_4_OPTIONS)}, got {answer!r}"
    )
    lanes = {dtype: 512 // torch.finfo(dtype).bits for dtype in (torch.float32, torch.float64)}  # AVX-512
    computed_in = reference._compute_dtype(torch.zeros(0, 4, dtype=torch.float16))
    reasons = {
        "A": f"float16 boxes are computed in {computed_in} by both: the kernel converts each box as it loads it, the "
        "reference converts its inputs first and its N x M result back at the end, one more pass",
        "C": "the reference's time goes into its N x M temporaries, not into Python: at N = M = 2000 each is 16 or "
        "32 MB in float32 (section 1.4), and twice that in float64",
        "D": f"a 512-bit vector holds {lanes[torch.float32]} float32 lanes but {lanes[torch.float64]} float64 lanes, "
        "and each float64 output is 8 bytes instead of 4",
    }
    assert answer == "B", f"exercise 4: not {answer}: {reasons[answer]}"


def _iou_both_orders(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    area_a, area_b = reference.box_area(a), reference.box_area(b)  # (1,), (1,)
    inter = reference._intersection(a, b)  # (1, 1)
    union_kernel = (area_a[:, None] + area_b[None, :]) - inter
    union_other = area_a[:, None] + (area_b[None, :] - inter)
    return inter / union_kernel, inter / union_other


def exercise_5(answer) -> None:
    """answer: a pair (a, b) of float32 boxes whose IoU depends on the order of the union's operations."""
    assert isinstance(answer, (tuple, list)) and len(answer) == 2, f"exercise 5: pass a pair (a, b), got {answer!r}"
    a, b = (_box(5, box, name).float() for box, name in zip(answer, "ab", strict=True))
    assert torch.isfinite(a).all() and torch.isfinite(b).all(), "exercise 5: use finite coordinates"
    inter = reference._intersection(a, b).item()
    assert inter > 0, f"exercise 5: a and b should overlap (their IoU is 0 in any order), got |a ∩ b| = {inter}"
    kernel, other = _iou_both_orders(a, b)
    assert torch.equal(kernel, ops.box_iou(a, b)), "exercise 5: (area_a + area_b) - inter should be ops.box_iou's IoU"
    assert not torch.equal(kernel, other), (
        f"exercise 5: both orders give IoU {kernel.item():.9g} in float32 for these boxes: every sum here is exact. "
        "Try areas whose sum needs more than float32's 24 bits (a large box and a small one with a fractional side)"
    )


# --- exercise 6: rotated boxes ---------------------------------------------------------------------


def _corners(box: list[float]) -> list[tuple[float, float]]:
    """The corners of (cx, cy, w, h, theta), counter-clockwise in a y-up frame."""
    cx, cy, w, h, theta = box
    c, s = math.cos(theta), math.sin(theta)
    return [
        (cx + c * u - s * v, cy + s * u + c * v)
        for u, v in ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2))
    ]


def _clip(polygon, a, b):
    """Sutherland-Hodgman: the part of `polygon` on the left of the directed line a -> b."""

    def side(p):
        return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])

    out = []
    for i, p in enumerate(polygon):
        q = polygon[(i + 1) % len(polygon)]
        sp, sq = side(p), side(q)
        if sp >= 0:
            out.append(p)
        if (sp >= 0) != (sq >= 0):
            t = sp / (sp - sq)
            out.append((p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])))
    return out


def _shoelace(polygon) -> float:
    return 0.5 * abs(sum(p[0] * q[1] - q[0] * p[1] for p, q in zip(polygon, polygon[1:] + polygon[:1], strict=True)))


def _rotated_iou(b1: list[float], b2: list[float]) -> float:
    if not all(side > 0 for side in (b1[2], b1[3], b2[2], b2[3])):  # an empty box (or NaN): IoU 0
        return 0.0
    area1, area2 = b1[2] * b1[3], b2[2] * b2[3]
    polygon, clip = _corners(b1), _corners(b2)
    for i in range(4):
        polygon = _clip(polygon, clip[i], clip[(i + 1) % 4])
        if not polygon:
            return 0.0
    inter = _shoelace(polygon)
    return inter / (area1 + area2 - inter)


def _rotated_iou_matrix(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    rows = [[_rotated_iou(a, b) for b in boxes2.tolist()] for a in boxes1.tolist()]
    return torch.tensor(rows, dtype=torch.float64).reshape(len(boxes1), len(boxes2))


def exercise_6(rotated_box_iou) -> None:
    """rotated_box_iou((N, 5), (M, 5)) -> (N, M) for boxes (cx, cy, w, h, theta), theta in radians."""

    def run(b1, b2):
        out = _call(6, "rotated_box_iou", rotated_box_iou, b1, b2)
        assert torch.is_tensor(out) and out.shape == (len(b1), len(b2)), (
            f"exercise 6: rotated_box_iou of {len(b1)} and {len(b2)} boxes should be a ({len(b1)}, {len(b2)}) "
            f"tensor, got {out if not torch.is_tensor(out) else out.shape}"
        )
        return out.double()

    axis = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0], [4.0, 0.0, 5.0, 1.0], [0.5, 0.0, 1.5, 4.0]])
    as_rotated = torch.cat([(axis[:, :2] + axis[:, 2:]) / 2, axis[:, 2:] - axis[:, :2], torch.zeros(4, 1)], 1)
    got = run(as_rotated.double(), as_rotated.double())
    _close(6, "with theta = 0, the IoU of ops.box_iou", got, ops.box_iou(axis, axis), atol=1e-6)
    square = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    turned = torch.tensor([[0.0, 0.0, 1.0, 1.0, math.pi / 4]], dtype=torch.float64)
    got = run(square, turned).item()
    assert abs(got - 1 / math.sqrt(2)) < 1e-6, (
        f"exercise 6: a unit square and the same square turned by 45 degrees overlap in a regular octagon of area "
        f"2(sqrt(2) - 1): IoU 1/sqrt(2) = {1 / math.sqrt(2):.6f}, got {got:.6f} (theta is in radians)"
    )
    standing = torch.tensor([[5.0, 5.0, 4.0, 2.0, math.pi / 2]], dtype=torch.float64)
    lying = torch.tensor([[5.0, 5.0, 2.0, 4.0, 0.0]], dtype=torch.float64)
    got = run(standing, lying).item()
    assert abs(got - 1) < 1e-6, f"exercise 6: a 4 x 2 box turned by 90 degrees is the 2 x 4 box: IoU 1, got {got:.6f}"
    flat = torch.tensor([[0.0, 0.0, 0.0, 2.0, 0.3], [0.0, 0.0, 2.0, 2.0, 0.3]], dtype=torch.float64)
    got = run(flat, flat)
    assert not got.isnan().any() and got[0].abs().max() == 0 and got[:, 0].abs().max() == 0, (
        f"exercise 6: a box of width 0 is empty: IoU 0 with every box, never NaN; got\n{got}"
    )
    assert run(torch.zeros(0, 5, dtype=torch.float64), square).shape == (0, 1)
    g = torch.Generator().manual_seed(6)

    def random_rotated(n):  # centres in [0, 6], sides in [1, 5], any angle: (n, 5)
        centres, sides = torch.rand(n, 2, generator=g) * 6, torch.rand(n, 2, generator=g) * 4 + 1
        return torch.cat([centres, sides, (torch.rand(n, 1, generator=g) * 2 - 1) * math.pi], dim=1).double()

    b1, b2 = random_rotated(9), random_rotated(8)
    expected = _rotated_iou_matrix(b1, b2)
    assert (expected > 0).float().mean() > 0.3  # the random boxes do overlap
    _close(6, "the IoU of random rotated boxes", run(b1, b2), expected, atol=1e-6)
