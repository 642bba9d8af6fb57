"""box_iou and generalized_box_iou: kernels (csrc/*/box_iou.*) against minimtl.ops.reference."""

import importlib
import math

import pytest
import torch
from conftest import DEVICES, requires_cuda
from helpers import check_op, run_python
from hypothesis import given
from strategies import as_boxes, box_lists

from minimtl import ops
from minimtl.bench.ops import random_boxes
from minimtl.ops import reference

PAIRWISE = [(ops.box_iou, reference.box_iou), (ops.generalized_box_iou, reference.generalized_box_iou)]
PAIRWISE_IDS = ["box_iou", "generalized_box_iou"]


# --- a case to check by hand -------------------------------------------------------------------


def test_hand_example():
    boxes = torch.tensor(
        [
            [0.0, 0.0, 2.0, 2.0],  # a
            [1.0, 1.0, 3.0, 3.0],  # b: overlaps a in the unit square [1, 2] x [1, 2]
            [4.0, 0.0, 5.0, 1.0],  # c: far right of a, disjoint
            [0.5, 0.5, 1.5, 1.5],  # d: inside a
            [1.0, 1.0, 1.0, 3.0],  # e: zero width
            [2.0, 2.0, 0.0, 0.0],  # f: a with its corners swapped: inverted, empty
        ]
    )
    a, b, c, d, e, f = range(6)
    iou = ops.box_iou(boxes, boxes)
    giou = ops.generalized_box_iou(boxes, boxes)

    # a, b: |a ∩ b| = 1, |a ∪ b| = 4 + 4 - 1 = 7; the enclosing box [0, 3]^2 has area 9.
    assert iou[a, b] == pytest.approx(1 / 7)
    assert giou[a, b] == pytest.approx(1 / 7 - (9 - 7) / 9)
    # a, c: disjoint, IoU 0; enclosing [0, 5] x [0, 2] = 10, union 4 + 1 = 5.
    assert iou[a, c] == 0
    assert giou[a, c] == pytest.approx(0 - (10 - 5) / 10)
    # a, d: d inside a, IoU = 1 / 4, and the enclosing box is a itself: no penalty.
    assert iou[a, d] == pytest.approx(0.25)
    assert giou[a, d] == pytest.approx(0.25)
    # identical boxes
    assert iou[a, a] == 1 and giou[a, a] == 1
    # e has zero area: IoU 0 with everything, itself included, and never NaN.
    assert (iou[e] == 0).all() and (iou[:, e] == 0).all()
    assert giou[e, e] == 0
    # f is inverted: area 0, not (-2) * (-2) = 4.
    assert iou[f, a] == 0 and iou[f, f] == 0
    # symmetric
    torch.testing.assert_close(iou, iou.T)
    torch.testing.assert_close(giou, giou.T)


# --- against the reference ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("op, ref", PAIRWISE, ids=PAIRWISE_IDS)
@given(boxes1=box_lists(), boxes2=box_lists())
def test_matches_reference(op, ref, dtype, boxes1, boxes2):
    # Exactly equal: the kernel performs the reference's operations in the same order.
    check_op(op, ref, as_boxes(boxes1, dtype), as_boxes(boxes2, dtype))


@pytest.mark.parametrize("op, ref", PAIRWISE, ids=PAIRWISE_IDS)
@given(boxes1=box_lists(special=True), boxes2=box_lists(special=True))
def test_special_values_match_reference(op, ref, boxes1, boxes2):
    out = check_op(op, ref, as_boxes(boxes1), as_boxes(boxes2))
    assert not out.isnan().any()


@pytest.mark.parametrize("op", [ops.box_iou, ops.generalized_box_iou], ids=PAIRWISE_IDS)
@given(boxes1=box_lists(special=True), boxes2=box_lists(special=True))
def test_never_nan_and_in_range(op, boxes1, boxes2):
    out = op(as_boxes(boxes1, torch.float64), as_boxes(boxes2, torch.float64))
    low = 0.0 if op is ops.box_iou else -1.0
    assert not out.isnan().any()
    assert ((out >= low - 1e-12) & (out <= 1 + 1e-12)).all()


def test_nan_box_gives_zero():
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [math.nan, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, math.inf]])
    for op in (ops.box_iou, ops.generalized_box_iou):
        out = op(boxes, boxes)
        assert (out[1] == 0).all() and (out[:, 1] == 0).all()
        assert not out.isnan().any()


def test_giou_stays_in_range_when_the_union_overflows():
    # Found by the fuzz pass: in float32 this box's area (3e38) is finite, but the union of two
    # such boxes (area + area - intersection) overflows to inf while the enclosing box does not; the
    # penalty (C - U) / C then was -inf and GIoU +inf. The penalty is clamped to [0, 1].
    big = torch.tensor([[-1.0, -3e38, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    for dtype in (torch.float32, torch.float64):
        out = ops.generalized_box_iou(big.to(dtype), big.to(dtype))
        assert ((out >= -1) & (out <= 1)).all(), out
        assert torch.equal(out, reference.generalized_box_iou(big.to(dtype), big.to(dtype)))
    assert ops.generalized_box_iou(big.double(), big.double())[0, 0] == 1  # no overflow in float64


# --- shapes, layouts, dtypes -------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", [ops.box_iou, ops.generalized_box_iou], ids=PAIRWISE_IDS)
@pytest.mark.parametrize("n, m", [(0, 0), (0, 3), (3, 0), (1, 1)])
def test_empty_and_single(op, device, n, m):
    for dtype in (torch.float32, torch.float64):
        out = op(random_boxes(n, dtype, device), random_boxes(m, dtype, device))
        assert out.shape == (n, m) and out.dtype == dtype and out.device.type == device


@pytest.mark.parametrize("op, ref", PAIRWISE, ids=PAIRWISE_IDS)
def test_non_contiguous(op, ref):
    wide = random_boxes(40).repeat(1, 2)  # (40, 8)
    boxes1 = wide[::2, 4:]  # strided rows, offset columns
    boxes2 = random_boxes(30).T.contiguous().T  # column-major
    assert not boxes1.is_contiguous() and not boxes2.is_contiguous()
    check_op(op, ref, boxes1, boxes2)
    torch.testing.assert_close(op(boxes1, boxes2), op(boxes1.contiguous(), boxes2.contiguous()), atol=0, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("op, ref", PAIRWISE, ids=PAIRWISE_IDS)
def test_half_precision_computes_in_float32(op, ref, dtype, device):
    boxes1, boxes2 = random_boxes(50, dtype, device), random_boxes(60, dtype, device)
    out = check_op(op, ref, boxes1, boxes2)
    torch.testing.assert_close(out, ref(boxes1.float(), boxes2.float()).to(dtype), atol=0, rtol=0)


# --- gradients ---------------------------------------------------------------------------------


@pytest.mark.parametrize("op", [ops.box_iou, ops.generalized_box_iou], ids=PAIRWISE_IDS)
def test_gradcheck(op):
    torch.manual_seed(0)
    # Continuous random boxes: away from the kinks of max/min/clamp, where gradcheck is meaningless.
    boxes1 = random_boxes(6, torch.float64, size=30, max_side=20).requires_grad_()
    boxes2 = random_boxes(5, torch.float64, size=30, max_side=20).requires_grad_()
    assert torch.autograd.gradcheck(op, (boxes1, boxes2))


@pytest.mark.parametrize("op, ref", PAIRWISE, ids=PAIRWISE_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradient_matches_reference(op, ref, dtype):
    torch.manual_seed(1)
    boxes = random_boxes(20, dtype, size=50, max_side=30)
    degenerate = torch.tensor([[3.0, 3.0, 3.0, 9.0], [5.0, 5.0, 1.0, 1.0]], dtype=dtype)  # zero-width, inverted
    check_op(op, ref, torch.cat([boxes, degenerate]), random_boxes(15, dtype, size=50, max_side=30), grad=True)


# --- the custom-op machinery: opcheck, torch.compile -------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", PAIRWISE_IDS)
def test_opcheck(name, device):
    op = getattr(torch.ops.minimtl, name).default
    samples = [
        (random_boxes(7, device=device), random_boxes(5, device=device)),
        (random_boxes(0, device=device), random_boxes(5, device=device)),
        (random_boxes(4, torch.float64, device).requires_grad_(), random_boxes(3, torch.float64, device)),
        (
            random_boxes(4, torch.float64, device).requires_grad_(),
            random_boxes(3, torch.float64, device).requires_grad_(),
        ),
    ]
    for args in samples:
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("op", [ops.box_iou, ops.generalized_box_iou], ids=PAIRWISE_IDS)
def test_torch_compile(op):
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b: op(a, b).max(dim=1).values, backend="aot_eager", fullgraph=True)
    for n, m in [(7, 5), (9, 11), (3, 2)]:  # new shapes: recompiles or runs the dynamic graph
        a, b = random_boxes(n), random_boxes(m)
        torch.testing.assert_close(compiled(a, b), op(a, b).max(dim=1).values)


def test_torch_compile_inductor_with_backward():
    torch._dynamo.reset()

    def loss(a, b):
        return (1 - ops.generalized_box_iou(a, b).diagonal()).sum()

    compiled = torch.compile(loss, fullgraph=True)
    a = random_boxes(8, size=40, max_side=30).requires_grad_()
    b = random_boxes(8, size=40, max_side=30)
    (grad,) = torch.autograd.grad(compiled(a, b), a)
    (expected,) = torch.autograd.grad(loss(a, b), a)
    torch.testing.assert_close(grad, expected)


# --- bad input ---------------------------------------------------------------------------------

BAD_INPUTS = [
    (torch.zeros(3, 5), torch.zeros(2, 4), r"boxes1 must be a Tensor\[N, 4\].*got shape \[3, 5\]"),
    (torch.zeros(2, 4), torch.zeros(4), r"boxes2 must be a Tensor\[N, 4\].*got shape \[4\]"),
    (torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long), r"boxes1 must be floating point.*Long"),
    (
        torch.zeros(2, 4),
        torch.zeros(2, 4, dtype=torch.float64),
        r"boxes1 and boxes2 must have the same dtype, got Float and Double",
    ),
]


@pytest.mark.parametrize("name", PAIRWISE_IDS)
@pytest.mark.parametrize("boxes1, boxes2, message", BAD_INPUTS)
def test_bad_input_clear_error(name, boxes1, boxes2, message):
    with pytest.raises(RuntimeError, match=f"{name}: {message}"):
        getattr(ops, name)(boxes1, boxes2)


@pytest.mark.parametrize("name", PAIRWISE_IDS)
def test_bad_input_clear_error_under_compile(name):
    # Under torch.compile the fake kernel checks the input and says the same.
    torch._dynamo.reset()
    compiled = torch.compile(getattr(ops, name), backend="aot_eager", fullgraph=True)
    with pytest.raises(Exception, match=f"{name}: boxes1 must be a Tensor\\[N, 4\\]"):
        compiled(torch.zeros(3, 5), torch.zeros(2, 4))


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("name", PAIRWISE_IDS)
def test_mixed_devices_clear_error(name):
    with pytest.raises(RuntimeError, match=f"{name}: boxes1 and boxes2 must be on the same device"):
        getattr(ops, name)(torch.zeros(2, 4, device="cuda"), torch.zeros(2, 4))


def test_non_finite_input_never_crashes():
    # In a subprocess: a crash there is a failed test, not a dead test run.
    result = run_python(
        """
        import math, torch
        from minimtl import ops
        torch.manual_seed(0)
        specials = torch.tensor([math.nan, math.inf, -math.inf, 3e38, -3e38, 0.0])
        for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            boxes = torch.rand(3000, 4) * 100
            mask = torch.rand(3000, 4) < 0.2
            boxes[mask] = specials[torch.randint(0, len(specials), (int(mask.sum()),))]
            boxes = boxes.to(dtype)
            for op in (ops.box_iou, ops.generalized_box_iou):
                out = op(boxes, boxes[:1000])
                assert out.shape == (3000, 1000) and not out.isnan().any(), op
        print("ok")
        """
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


# --- independent oracle: torchvision -----------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", PAIRWISE_IDS)
def test_matches_torchvision(name, device):
    tv_ops = importlib.import_module("torchvision.ops")
    g = torch.Generator().manual_seed(2)
    # Well-formed boxes (torchvision has no rule for empty or inverted ones).
    boxes1, boxes2 = random_boxes(300, generator=g, device=device), random_boxes(200, generator=g, device=device)
    torch.testing.assert_close(getattr(ops, name)(boxes1, boxes2), getattr(tv_ops, name)(boxes1, boxes2))


# --- CUDA against CPU --------------------------------------------------------------------------


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", PAIRWISE_IDS)
@given(boxes1=box_lists(max_size=40, special=True), boxes2=box_lists(max_size=40, special=True))
def test_cuda_matches_cpu(name, dtype, boxes1, boxes2):
    op = getattr(ops, name)
    a, b = as_boxes(boxes1, dtype), as_boxes(boxes2, dtype)
    torch.testing.assert_close(op(a.cuda(), b.cuda()).cpu(), op(a, b), atol=0, rtol=0)


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("name", PAIRWISE_IDS)
def test_cuda_large_grid(name):
    # More rows than one grid covers (the grid-stride loop) and a column count not a multiple of 128.
    op = getattr(ops, name)
    a, b = random_boxes(40_000), random_boxes(300)
    torch.testing.assert_close(op(a.cuda(), b.cuda()).cpu(), op(a, b), atol=0, rtol=0)


@pytest.mark.parametrize("op", [ops.box_iou, ops.generalized_box_iou, reference.box_iou], ids=PAIRWISE_IDS + ["ref"])
@given(boxes1=box_lists(special=True), boxes2=box_lists(special=True))
def test_symmetric(op, boxes1, boxes2):
    # op(a, b) == op(b, a).T exactly: NMS relies on it (CPU and CUDA test the pair in either order).
    a, b = as_boxes(boxes1), as_boxes(boxes2)
    torch.testing.assert_close(op(a, b), op(b, a).T, atol=0, rtol=0)
