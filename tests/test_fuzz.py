"""A fuzz pass over every kernel: whatever the input, a defined result or a clear error - never a
crash, a hang, an out-of-bounds access or (for IoU) a NaN.

Random shapes (empty included), NaN, +-inf, huge and tiny coordinates, inverted boxes, batch
indices out of range or fractional, non-contiguous views. MINIMTL_FUZZ_EXAMPLES sets the number
of examples per test (default 60); scripts/sanitize.sh runs this file with thousands, under
AddressSanitizer and UndefinedBehaviorSanitizer, where a bad memory access stops the run.
"""

import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import SPECIAL

from minimtl import ops

EXAMPLES = int(os.environ.get("MINIMTL_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
VALUES = st.one_of(st.floats(-1e4, 1e4, allow_nan=False, width=32), SPECIAL, st.integers(-3, 40).map(float))


@st.composite
def tensors(draw, rows: int, columns: int, values=VALUES, dtype=None):
    """A (rows, columns) tensor of `values`, maybe float64, maybe a non-contiguous view."""
    dtype = dtype or draw(st.sampled_from([torch.float32, torch.float64]))
    data = [[draw(values) for _ in range(columns)] for _ in range(rows)]
    t = torch.tensor(data, dtype=dtype).reshape(rows, columns)
    if draw(st.booleans()):  # the same values, strided: every other row of a twice-as-tall tensor
        tall = torch.zeros(2 * rows, columns, dtype=dtype)
        tall[::2] = t
        t = tall[::2]
    return t


@FUZZ
@given(st.data(), st.integers(0, 12), st.integers(0, 12))
def test_iou_and_giou(data, n, m):
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    a, b = data.draw(tensors(n, 4, dtype=dtype)), data.draw(tensors(m, 4, dtype=dtype))
    iou, giou = ops.box_iou(a, b), ops.generalized_box_iou(a, b)
    assert iou.shape == giou.shape == (n, m)
    assert not iou.isnan().any() and ((iou >= 0) & (iou <= 1)).all()
    assert not giou.isnan().any() and ((giou >= -1) & (giou <= 1)).all()


@FUZZ
@given(st.data(), st.integers(0, 40), st.floats(-0.5, 1.5) | st.sampled_from([math.nan, math.inf]))
def test_nms_and_batched_nms(data, n, threshold):
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    boxes = data.draw(tensors(n, 4, dtype=dtype))
    scores = data.draw(tensors(1, n, dtype=dtype))[0] if n else torch.zeros(0, dtype=dtype)
    idxs = torch.tensor(data.draw(st.lists(st.integers(-2, 3), min_size=n, max_size=n)), dtype=torch.int64)
    if math.isnan(threshold):  # the one argument that is refused
        for call in (
            lambda: ops.nms(boxes, scores, threshold),
            lambda: ops.batched_nms(boxes, scores, idxs, threshold),
        ):
            with pytest.raises(RuntimeError, match="iou_threshold must be a number, got NaN"):
                call()
        return
    for keep in (ops.nms(boxes, scores, threshold), ops.batched_nms(boxes, scores, idxs, threshold)):
        assert keep.dtype == torch.int64 and keep.dim() == 1
        assert len(set(keep.tolist())) == len(keep) and ((keep >= 0) & (keep < n)).all()


@FUZZ
@given(
    st.data(),
    st.integers(1, 3),  # N
    st.integers(0, 5),  # C
    st.integers(0, 9),  # H
    st.integers(0, 9),  # W
    st.integers(0, 8),  # K
    st.integers(1, 4),  # output size
    st.sampled_from([-1, 0, 1, 2, 3]),
    st.booleans(),
    st.sampled_from([1.0, 0.5, 0.125, 1e-30, 1e30]),
)
def test_roi_align_forward_and_backward(data, n, c, h, w, k, size, sampling_ratio, aligned, scale):
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    x = torch.randn(n, c, h, w, dtype=dtype)
    if data.draw(st.booleans()):
        x = x.contiguous(memory_format=torch.channels_last)
    boxes = data.draw(tensors(k, 4, dtype=dtype))
    # mostly valid batch indices, sometimes a bad one: fractional, negative, N, NaN
    choices = [0.0, float(n - 1)] * 6 + [0.5, -1.0, float(n), math.nan]
    index = data.draw(st.lists(st.sampled_from(choices), min_size=k, max_size=k))
    rois = torch.cat([torch.tensor(index, dtype=dtype).reshape(k, 1), boxes], dim=1)
    valid = all(i == int(i) and 0 <= i < n for i in index if not math.isnan(i)) and not any(map(math.isnan, index))
    x.requires_grad_(True)
    try:
        out = ops.roi_align(x, rois, size, scale, sampling_ratio, aligned)
    except RuntimeError as error:
        assert not valid and "batch ind" in str(error)
        return
    assert valid and out.shape == (k, c, size, size)
    out.sum().backward()
    assert x.grad.shape == x.shape
