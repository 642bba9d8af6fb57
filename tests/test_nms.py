"""nms and batched_nms: kernels (csrc/*/nms.*) against minimtl.ops.reference."""

import importlib
import math

import pytest
import torch
from conftest import DEVICES, requires_cuda
from helpers import check_op, run_python
from hypothesis import given
from hypothesis import strategies as st
from strategies import as_boxes, box_lists

from minimtl import ops
from minimtl.bench.ops import random_boxes, unique_scores
from minimtl.ops import reference

# Scores from a small set give ties; NaN and infinities test the ranking rule.
SCORES = st.one_of(st.sampled_from([0.0, 0.25, 0.5, 1.0]), st.floats(-10, 10, width=32))
SPECIAL_SCORES = st.one_of(SCORES, st.sampled_from([math.nan, math.inf, -math.inf]))
THRESHOLDS = st.one_of(st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]), st.floats(-0.5, 1.5))


@st.composite
def nms_inputs(draw, special=False, max_size=24, classes=False):
    boxes = draw(box_lists(max_size=max_size, special=special))
    n = len(boxes)
    scores = draw(st.lists(SPECIAL_SCORES if special else SCORES, min_size=n, max_size=n))
    out = {"boxes": boxes, "scores": scores, "iou_threshold": draw(THRESHOLDS)}
    if classes:
        out["idxs"] = draw(st.lists(st.integers(-2, 3), min_size=n, max_size=n))
    return out


def tensors(inputs, dtype=torch.float32, device="cpu"):
    boxes = as_boxes(inputs["boxes"], dtype, device)
    scores = torch.tensor(inputs["scores"], dtype=dtype, device=device).reshape(-1)
    if "idxs" in inputs:
        idxs = torch.tensor(inputs["idxs"], dtype=torch.long, device=device).reshape(-1)
        return boxes, scores, idxs, inputs["iou_threshold"]
    return boxes, scores, inputs["iou_threshold"]


# --- cases to check by hand --------------------------------------------------------------------

HAND_BOXES = torch.tensor(
    [
        [0.0, 0.0, 10.0, 10.0],  # 0
        [1.0, 1.0, 11.0, 11.0],  # 1: IoU with 0 = 81 / 119 = 0.68
        [20.0, 20.0, 30.0, 30.0],  # 2: far from all
        [0.0, 0.0, 10.0, 5.0],  # 3: top half of 0: IoU with 0 = 50 / 100 = 0.5 exactly
    ]
)
HAND_SCORES = torch.tensor([0.9, 0.8, 0.7, 0.95])


def test_hand_example():
    # Rank: 3 (0.95), 0 (0.9), 1 (0.8), 2 (0.7).
    # At 0.5: IoU(3, 0) = 0.5 is not > 0.5, so 0 stays; 0 removes 1 (0.68); 2 overlaps nothing.
    assert ops.nms(HAND_BOXES, HAND_SCORES, 0.5).tolist() == [3, 0, 2]
    # At 0.49: 3 removes 0. Box 1 overlaps 3 only by 36 / 114 = 0.32, and 0, which would have
    # removed it, was itself removed: greedy NMS keeps 1.
    assert ops.nms(HAND_BOXES, HAND_SCORES, 0.49).tolist() == [3, 1, 2]
    # At 0.7 nothing overlaps that much.
    assert ops.nms(HAND_BOXES, HAND_SCORES, 0.7).tolist() == [3, 0, 1, 2]


def test_hand_example_batched():
    # Box 0 in another class than 3 and 1: 3 cannot remove it, and it cannot remove 1.
    idxs = torch.tensor([1, 0, 0, 0])
    assert ops.batched_nms(HAND_BOXES, HAND_SCORES, idxs, 0.49).tolist() == [3, 0, 1, 2]
    assert ops.batched_nms(HAND_BOXES, HAND_SCORES, torch.zeros(4, dtype=torch.long), 0.49).tolist() == [3, 1, 2]


def test_ties_keep_index_order():
    boxes = torch.tensor([[0.0, 0, 1, 1], [5, 5, 6, 6], [0, 0, 1, 1], [10, 10, 11, 11]])
    scores = torch.tensor([0.5, 0.5, 0.5, 0.5])
    assert ops.nms(boxes, scores, 0.5).tolist() == [0, 1, 3]  # 2 is 0's twin, later in index order


# --- against the reference ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@given(inputs=nms_inputs())
def test_nms_matches_reference(dtype, inputs):
    check_op(ops.nms, reference.nms, *tensors(inputs, dtype))


@given(inputs=nms_inputs(special=True))
def test_nms_special_values_match_reference(inputs):
    check_op(ops.nms, reference.nms, *tensors(inputs))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@given(inputs=nms_inputs(classes=True))
def test_batched_nms_matches_reference(dtype, inputs):
    check_op(ops.batched_nms, reference.batched_nms, *tensors(inputs, dtype))


@given(inputs=nms_inputs(special=True, classes=True))
def test_batched_nms_is_nms_per_class(inputs):
    boxes, scores, idxs, threshold = tensors(inputs)
    kept = ops.batched_nms(boxes, scores, idxs, threshold)
    for c in idxs.unique():
        members = torch.nonzero(idxs == c).flatten()
        expected = members[ops.nms(boxes[members], scores[members], threshold)]
        assert kept[idxs[kept] == c].tolist() == expected.tolist()
    # all classes together, in nms's rank order
    assert kept.tolist() == [i for i in reference.order_by_score(scores).tolist() if i in set(kept.tolist())]


@given(inputs=nms_inputs(special=True))
def test_kept_boxes_do_not_overlap(inputs):
    boxes, scores, threshold = tensors(inputs)
    kept = ops.nms(boxes, scores, threshold)
    iou = ops.box_iou(boxes[kept], boxes[kept])
    iou.fill_diagonal_(-math.inf)
    assert not (iou > threshold).any()
    assert len(set(kept.tolist())) == len(kept)


def test_larger_dense_input_matches_reference():
    # Many overlapping boxes, several 64-box tiles on the GPU, a few thousand pairs per kept box.
    g = torch.Generator().manual_seed(3)
    boxes = random_boxes(700, size=150, max_side=60, generator=g)
    scores = torch.rand(700, generator=g)
    check_op(ops.nms, reference.nms, boxes, scores, 0.5)
    idxs = torch.randint(0, 5, (700,), generator=g)
    check_op(ops.batched_nms, reference.batched_nms, boxes, scores, idxs, 0.5)


# --- shapes, layouts, dtypes, thresholds --------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_empty_and_single(device):
    for n in (0, 1):
        boxes, scores = random_boxes(n, device=device), torch.rand(n, device=device)
        for kept in (
            ops.nms(boxes, scores, 0.5),
            ops.batched_nms(boxes, scores, torch.zeros(n, dtype=torch.long, device=device), 0.5),
        ):
            assert kept.dtype == torch.long and kept.device.type == device and kept.tolist() == list(range(n))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_inputs_are_left_unchanged(device, dtype):
    # NaN scores are ranked last on a copy: the caller's scores keep their NaN
    boxes, scores = random_boxes(200, dtype, device, size=100), torch.rand(200, device=device).to(dtype)
    scores[::7], boxes[::11, 0] = math.nan, math.nan
    idxs = torch.randint(0, 3, (200,), device=device)
    before = [t.clone() for t in (boxes, scores, idxs)]
    ops.nms(boxes, scores, 0.5)
    ops.batched_nms(boxes, scores, idxs, 0.5)
    for after, original in zip((boxes, scores, idxs), before, strict=True):
        torch.testing.assert_close(after, original, rtol=0, atol=0, equal_nan=True)


def test_non_contiguous():
    boxes = random_boxes(400, size=100).repeat(1, 2)[::2, 4:]  # (200, 4)
    scores = torch.rand(400)[::2]
    idxs = torch.randint(0, 3, (400,))[::2]
    assert not boxes.is_contiguous() and not scores.is_contiguous() and not idxs.is_contiguous()
    check_op(ops.nms, reference.nms, boxes, scores, 0.4)
    check_op(ops.batched_nms, reference.batched_nms, boxes, scores, idxs, 0.4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_computes_in_float32(dtype, device):
    boxes, scores = random_boxes(300, dtype, device, size=200), torch.rand(300, device=device).to(dtype)
    kept = check_op(ops.nms, reference.nms, boxes, scores, 0.5)
    assert torch.equal(kept, reference.nms(boxes.float(), scores.float(), 0.5))


def test_boxes_and_scores_may_differ_in_dtype():
    boxes, scores = random_boxes(300, torch.float64, size=200), torch.rand(300, dtype=torch.float16)
    assert torch.equal(ops.nms(boxes, scores, 0.5), reference.nms(boxes, scores.double(), 0.5))


def test_threshold_one_keeps_all_and_tensor_threshold_works():
    boxes, scores = random_boxes(100, size=50), unique_scores(100)
    assert sorted(ops.nms(boxes, scores, 1.0).tolist()) == list(range(100))
    assert torch.equal(ops.nms(boxes, scores, torch.tensor(0.3)), ops.nms(boxes, scores, 0.3))


@pytest.mark.parametrize("device", DEVICES)
def test_idxs_any_integer_dtype(device):
    boxes, scores = random_boxes(100, device=device, size=50), unique_scores(100, device)
    idxs = torch.randint(0, 4, (100,), device=device)
    expected = ops.batched_nms(boxes, scores, idxs, 0.5)
    for dtype in (torch.int32, torch.int16, torch.uint8):
        assert torch.equal(ops.batched_nms(boxes, scores, idxs.to(dtype), 0.5), expected)


# --- the custom-op machinery ---------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    boxes, scores = random_boxes(50, device=device, size=100), torch.rand(50, device=device)
    idxs = torch.randint(0, 3, (50,), device=device)
    for args in [(boxes, scores, 0.5), (boxes[:0], scores[:0], 0.5), (boxes.double(), scores, 0.3)]:
        torch.library.opcheck(torch.ops.minimtl.nms.default, args)
    for args in [(boxes, scores, idxs, 0.5), (boxes[:0], scores[:0], idxs[:0], 0.5)]:
        torch.library.opcheck(torch.ops.minimtl.batched_nms.default, args)


def test_torch_compile_data_dependent_output():
    torch._dynamo.reset()

    def detect(boxes, scores, idxs):
        keep = ops.batched_nms(boxes, scores, idxs, 0.5)
        return boxes[keep], scores[keep]

    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        compiled = torch.compile(detect, backend="aot_eager", fullgraph=True)
        for n in (60, 80):
            boxes, scores, idxs = random_boxes(n, size=100), torch.rand(n), torch.randint(0, 3, (n,))
            for got, expected in zip(compiled(boxes, scores, idxs), detect(boxes, scores, idxs), strict=True):
                torch.testing.assert_close(got, expected)


def test_torch_compile_inductor():
    torch._dynamo.reset()
    compiled = torch.compile(lambda b, s: ops.nms(b, s * 2, 0.5))
    boxes, scores = random_boxes(100, size=100), torch.rand(100)
    assert torch.equal(compiled(boxes, scores), ops.nms(boxes, scores, 0.5))


# --- bad input ---------------------------------------------------------------------------------


def test_bad_input_clear_errors():
    boxes, scores = torch.zeros(3, 4), torch.zeros(3)
    cases = [
        (lambda: ops.nms(torch.zeros(3, 5), scores, 0.5), r"nms: boxes must be a Tensor\[N, 4\].*got shape \[3, 5\]"),
        (lambda: ops.nms(boxes, torch.zeros(4), 0.5), r"nms: scores must be a Tensor\[N\].*N = 3\), got shape \[4\]"),
        (lambda: ops.nms(boxes, torch.zeros(3, 1), 0.5), r"nms: scores must be a Tensor\[N\].*got shape \[3, 1\]"),
        (lambda: ops.nms(boxes.long(), scores, 0.5), r"nms: boxes must be floating point.*got Long"),
        (lambda: ops.nms(boxes, scores.long(), 0.5), r"nms: scores must be floating point.*got Long"),
        (lambda: ops.nms(boxes, scores, math.nan), r"nms: iou_threshold must be a number, got NaN"),
        (lambda: ops.batched_nms(boxes, scores, torch.zeros(3), 0.5), r"batched_nms: idxs must be an integer.*Float"),
        (
            lambda: ops.batched_nms(boxes, scores, torch.zeros(2, dtype=torch.long), 0.5),
            r"batched_nms: idxs must be a Tensor\[N\].*got shape \[2\]",
        ),
    ]
    for call, message in cases:
        with pytest.raises(RuntimeError, match=message):
            call()


@requires_cuda
@pytest.mark.cuda
def test_mixed_devices_clear_error():
    with pytest.raises(RuntimeError, match="nms: boxes and scores must be on the same device"):
        ops.nms(torch.zeros(2, 4, device="cuda"), torch.zeros(2), 0.5)
    with pytest.raises(RuntimeError, match="batched_nms: boxes and idxs must be on the same device"):
        ops.batched_nms(
            torch.zeros(2, 4, device="cuda"), torch.zeros(2, device="cuda"), torch.zeros(2, dtype=torch.long), 0.5
        )


def test_non_finite_input_never_crashes():
    result = run_python(
        """
        import math, torch
        from minimtl import ops
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        torch.manual_seed(0)
        specials = torch.tensor([math.nan, math.inf, -math.inf, 3e38, -3e38])
        for device in devices:
            for n in (1, 63, 64, 65, 4000):
                boxes = torch.rand(n, 4) * 100
                boxes[:, 2:] += boxes[:, :2]
                scores = torch.rand(n)
                for t in (boxes, scores):
                    mask = torch.rand(t.shape) < 0.2
                    t[mask] = specials[torch.randint(0, len(specials), (int(mask.sum()),))]
                idxs = torch.randint(0, 3, (n,))
                b, s, i = boxes.to(device), scores.to(device), idxs.to(device)
                for keep in (ops.nms(b, s, 0.5), ops.batched_nms(b, s, i, 0.5), ops.nms(b, s, -1.0)):
                    assert keep.dtype == torch.long and ((keep >= 0) & (keep < n)).all()
                    assert len(keep.unique()) == len(keep)
        print("ok")
        """
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


# --- independent oracle: torchvision -----------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_matches_torchvision(device):
    tv_ops = importlib.import_module("torchvision.ops")
    g = torch.Generator().manual_seed(4)
    for n, size in [(500, 200), (3000, 1000)]:
        boxes, scores = random_boxes(n, device=device, size=size, generator=g), unique_scores(n, device, generator=g)
        idxs = torch.randint(0, 7, (n,), generator=g).to(device)
        for threshold in (0.3, 0.5, 0.7):
            assert torch.equal(ops.nms(boxes, scores, threshold), tv_ops.nms(boxes, scores, threshold))
            assert torch.equal(
                ops.batched_nms(boxes, scores, idxs, threshold), tv_ops.batched_nms(boxes, scores, idxs, threshold)
            )


# --- CUDA against CPU --------------------------------------------------------------------------


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@given(inputs=nms_inputs(special=True, max_size=150, classes=True))
def test_cuda_matches_cpu(dtype, inputs):
    boxes, scores, idxs, threshold = tensors(inputs, dtype)
    assert torch.equal(ops.nms(boxes.cuda(), scores.cuda(), threshold).cpu(), ops.nms(boxes, scores, threshold))
    assert torch.equal(
        ops.batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), threshold).cpu(),
        ops.batched_nms(boxes, scores, idxs, threshold),
    )


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("n", [63, 64, 65, 1000, 20_000])
def test_cuda_matches_cpu_large(n):
    g = torch.Generator().manual_seed(n)
    boxes, scores = random_boxes(n, size=50 * math.sqrt(n), generator=g), torch.rand(n, generator=g)
    idxs = torch.randint(0, 10, (n,), generator=g)
    assert torch.equal(ops.nms(boxes.cuda(), scores.cuda(), 0.5).cpu(), ops.nms(boxes, scores, 0.5))
    assert torch.equal(
        ops.batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.5).cpu(), ops.batched_nms(boxes, scores, idxs, 0.5)
    )


@requires_cuda
@pytest.mark.cuda
def test_cuda_too_many_boxes_clear_error():
    with pytest.raises(RuntimeError, match="nms: the CUDA kernel handles at most 389056 boxes, got 400000"):
        ops.nms(torch.zeros(400_000, 4, device="cuda"), torch.zeros(400_000, device="cuda"), 0.5)
