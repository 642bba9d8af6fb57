"""roi_align: kernels (csrc/*/roi_align.*) against minimtl.ops.reference.roi_align."""

import importlib
import math
from functools import partial

import pytest
import torch
from conftest import DEVICES, requires_cuda
from helpers import check_op, run_python
from hypothesis import given
from hypothesis import strategies as st

from minimtl import ops
from minimtl.ops import _checks, reference

F64 = dict(atol=1e-12, rtol=1e-12)
F32 = dict(atol=1e-5, rtol=1e-5)


def random_rois(k, n, size, generator=None, dtype=torch.float32, device="cpu"):
    """k RoIs (batch index, x1, y1, x2, y2) on n images of size x size pixels, sides in [1, size/2]."""
    xy = torch.rand(k, 2, generator=generator, dtype=torch.float64) * size
    wh = torch.rand(k, 2, generator=generator, dtype=torch.float64) * (size / 2 - 1) + 1
    index = torch.randint(0, n, (k, 1), generator=generator).double()
    return torch.cat([index, xy, xy + wh], dim=1).to(dtype=dtype, device=device)  # (k, 5)


# --- a case to check by hand -------------------------------------------------------------------

ARANGE = torch.arange(25.0).reshape(1, 1, 5, 5)  # pixel (y, x) holds 5y + x


def test_hand_example():
    # Bilinear interpolation of a linear map is exact: the map at any point (y, x) is 5y + x.
    # aligned=True, box (0, 0, 5, 5): shifted by -0.5 it spans [-0.5, 4.5]. One bin, one sample at
    # its centre, (2, 2): 12.
    out = ops.roi_align(ARANGE, torch.tensor([[0, 0, 0, 5, 5.0]]), 1, sampling_ratio=1, aligned=True)
    assert out.tolist() == [[[[12.0]]]]
    # 2 x 2 bins of 2.5 pixels, one sample each, at -0.5 + 1.25 = 0.75 and 0.75 + 2.5 = 3.25:
    # 5 * 0.75 + 0.75 = 4.5, 5 * 0.75 + 3.25 = 7, 5 * 3.25 + 0.75 = 17, 5 * 3.25 + 3.25 = 19.5.
    out = ops.roi_align(ARANGE, torch.tensor([[0, 0, 0, 5, 5.0]]), 2, sampling_ratio=1, aligned=True)
    assert out[0, 0].tolist() == [[4.5, 7.0], [17.0, 19.5]]
    # aligned=False, box (1, 1, 3, 3), 2 x 2 bins of 1 pixel, 2 x 2 samples per bin at 1.25, 1.75 |
    # 2.25, 2.75: each bin is the map at the mean of its samples, (1.5, 1.5) -> 9, (1.5, 2.5) -> 10,
    # (2.5, 1.5) -> 14, (2.5, 2.5) -> 15.
    out = ops.roi_align(ARANGE, torch.tensor([[0, 1, 1, 3, 3.0]]), 2, sampling_ratio=2, aligned=False)
    assert out[0, 0].tolist() == [[9.0, 10.0], [14.0, 15.0]]
    # sampling_ratio=-1 (adaptive): ceil(2 / 2) = 1 sample per bin, at the bin centres 1.5 and 2.5.
    out = ops.roi_align(ARANGE, torch.tensor([[0, 1, 1, 3, 3.0]]), 2, sampling_ratio=-1, aligned=False)
    assert out[0, 0].tolist() == [[9.0, 10.0], [14.0, 15.0]]


def test_hand_example_edges():
    # aligned=False stretches a box to at least 1 x 1: box (2, -1, 2, -1) samples the point
    # (-0.5, 2.5). y in [-1, 0) reads the first row: 5 * 0 + 2.5.
    out = ops.roi_align(ARANGE, torch.tensor([[0, 2, -1, 2, -1.0]]), 1, sampling_ratio=1)
    assert out.item() == 2.5
    # At or past the last pixel centre (y >= 4), both neighbours are the last row: (4.5, 1.5) -> 21.5.
    out = ops.roi_align(ARANGE, torch.tensor([[0, 1, 4, 1, 4.0]]), 1, sampling_ratio=1)
    assert out.item() == 21.5
    # A sample beyond [-1, H] contributes 0: (5.5, 1.5) is off the map.
    out = ops.roi_align(ARANGE, torch.tensor([[0, 1, 5, 1, 5.0]]), 1, sampling_ratio=1)
    assert out.item() == 0.0
    # aligned=True, y from 4 to 7 shifted to [3.5, 6.5], 2 bins of 1.5, samples at y = 4.25 (last row)
    # and 5.75 (off the map); x = 1.5 - 0.5 = 1: 5 * 4 + 1 = 21, then 0.
    out = ops.roi_align(ARANGE, torch.tensor([[0, 1.5, 4, 1.5, 7.0]]), (2, 1), sampling_ratio=1, aligned=True)
    assert out[0, 0, :, 0].tolist() == [21.0, 0.0]
    # y = 5 exactly (= H) still counts, and reads the last row.
    out = ops.roi_align(ARANGE, torch.tensor([[0, 1.5, 5.5, 1.5, 5.5]]), 1, sampling_ratio=1, aligned=True)
    assert out.item() == 21.0


# --- against the reference ---------------------------------------------------------------------

COORD = st.one_of(st.integers(-6, 14).map(float), st.floats(-8, 16, allow_nan=False, width=32))


@st.composite
def roi_align_cases(draw, special=False):
    n, c = draw(st.integers(1, 2)), draw(st.integers(0, 3))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    k = draw(st.integers(0, 5))
    coord = st.one_of(COORD, st.sampled_from([math.nan, math.inf, -math.inf, 300.0, -300.0])) if special else COORD
    rois = [[float(draw(st.integers(0, n - 1)))] + [draw(coord) for _ in range(4)] for _ in range(k)]
    return {
        "shape": (n, c, h, w),
        "rois": rois,
        "output_size": (draw(st.integers(1, 4)), draw(st.integers(1, 4))),
        "spatial_scale": draw(st.sampled_from([1.0, 0.5, 0.25, 2.0, 1 / 8])),
        "sampling_ratio": draw(st.sampled_from([-1, 0, 1, 2, 3])),
        "aligned": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
    }


def case_tensors(case, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(case["seed"])
    x = torch.randn(case["shape"], generator=g, dtype=dtype).to(device)
    rois = torch.tensor(case["rois"], dtype=dtype, device=device).reshape(-1, 5)
    args = (case["output_size"], case["spatial_scale"], case["sampling_ratio"], case["aligned"])
    return x, rois, args


@pytest.mark.parametrize("dtype, tol", [(torch.float64, F64), (torch.float32, F32)], ids=["float64", "float32"])
@given(case=roi_align_cases())
def test_matches_reference(dtype, tol, case):
    x, rois, args = case_tensors(case, dtype)
    check_op(ops.roi_align, reference.roi_align, x, rois, *args, **tol)


@given(case=roi_align_cases())
def test_gradient_matches_reference(case):
    x, rois, args = case_tensors(case)
    # The boxes get no gradient from the op (as in torchvision): compare the input's only.
    ours, ref = (lambda x: ops.roi_align(x, rois, *args)), (lambda x: reference.roi_align(x, rois, *args))
    check_op(ours, ref, x, grad=True, **F64)


@given(case=roi_align_cases(special=True))
def test_special_boxes_match_reference(case):
    # NaN, infinite and far-away coordinates (the reference handles all but the infinite sizes,
    # whose adaptive grids it would try to allocate: those are in the crash test below).
    x, rois, args = case_tensors(case)
    if args[2] <= 0 and not torch.isfinite(rois[:, 3:] - rois[:, 1:3]).all():
        rois = torch.where(rois.isinf(), rois.sign() * 300.0, rois)  # NaN stays
    out = check_op(ops.roi_align, reference.roi_align, x, rois, *args, **F64)
    assert out.isfinite().all()


def test_huge_box_visits_only_samples_on_the_map():
    # A 2000-pixel box on a 10 x 10 map with adaptive sampling: 1000 samples per bin side, more
    # than kFewSamples, so the kernels only visit the ones that can land on the map. The result
    # must be the reference's, which visits all of them.
    x = torch.randn(1, 3, 10, 10, dtype=torch.float64)
    rois = torch.tensor([[0, -995.0, -990, 1005, 1010], [0, 4.0, -1500, 6, 2500]], dtype=torch.float64)
    for aligned in (False, True):
        args = (2, 1.0, -1, aligned)
        check_op(ops.roi_align, reference.roi_align, x, rois, *args, **F64)


# --- against torchvision, an independent implementation ----------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("output_size, sampling_ratio", [(7, 2), (14, -1), ((3, 5), 0)])
@pytest.mark.parametrize("aligned", [False, True])
def test_matches_torchvision(device, output_size, sampling_ratio, aligned):
    tv_ops = importlib.import_module("torchvision.ops")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 30, 40, generator=g).to(device)
    rois = random_rois(50, 2, 300, generator=g, device=device)
    args = (output_size, 1 / 8, sampling_ratio, aligned)
    torch.testing.assert_close(ops.roi_align(x, rois, *args), tv_ops.roi_align(x, rois, *args))
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    grad = torch.randn_like(ops.roi_align(x, rois, *args))
    ops.roi_align(xa, rois, *args).backward(grad)
    tv_ops.roi_align(xb, rois, *args).backward(grad)
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-5, rtol=1e-5)


# --- layouts, forms, dtypes --------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_layouts_give_the_same_result(device):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 11, 13, generator=g).to(device)
    rois = random_rois(9, 2, 12, generator=g, device=device)
    expected = ops.roi_align(x, rois, 3, 1.0, 2, True)
    grad = torch.randn_like(expected)
    variants = {
        "channels_last": x.contiguous(memory_format=torch.channels_last),
        "strided": torch.randn(2, 12, 11, 26, device=device)[:, ::2, :, ::2].copy_(x),
        "transposed": x.transpose(2, 3).contiguous().transpose(2, 3),
    }
    for name, variant in variants.items():
        assert variant.stride() != x.stride(), name
        torch.testing.assert_close(ops.roi_align(variant, rois, 3, 1.0, 2, True), expected, atol=0, rtol=0)
        v = variant.detach().clone(memory_format=torch.preserve_format).requires_grad_()
        ops.roi_align(v, rois, 3, 1.0, 2, True).backward(grad)
        x0 = x.clone().requires_grad_()
        ops.roi_align(x0, rois, 3, 1.0, 2, True).backward(grad)
        torch.testing.assert_close(v.grad, x0.grad, atol=1e-6, rtol=1e-6)
    # The gradient comes back in the input's layout.
    cl = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    ops.roi_align(cl, rois, 3, 1.0, 2, True).backward(grad)
    assert cl.grad.is_contiguous(memory_format=torch.channels_last)
    x0 = x.clone().requires_grad_()
    ops.roi_align(x0, rois, 3, 1.0, 2, True).backward(grad)
    assert x0.grad.is_contiguous()


def test_list_of_boxes_and_module():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, 10, 10, generator=g)
    per_image = [random_rois(k, 1, 40, generator=g)[:, 1:] for k in (2, 0, 3)]
    rois = ops.boxes_to_rois(per_image)
    assert rois.shape == (5, 5) and rois[:, 0].tolist() == [0, 0, 2, 2, 2]
    torch.testing.assert_close(ops.roi_align(x, per_image, 2, 0.25), ops.roi_align(x, rois, 2, 0.25), atol=0, rtol=0)
    module = ops.RoIAlign((2, 3), spatial_scale=0.25, sampling_ratio=2, aligned=True)
    torch.testing.assert_close(module(x, per_image), ops.roi_align(x, rois, (2, 3), 0.25, 2, True), atol=0, rtol=0)
    assert "output_size=(2, 3)" in repr(module)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_computes_in_float32(dtype, device):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 8, 12, 12, generator=g).to(device=device, dtype=dtype)
    rois = random_rois(10, 2, 48, generator=g, device=device)
    out = ops.roi_align(x, rois, 3, 0.25, 2, True)
    assert out.dtype == dtype
    # Computed in float32 from the same (half) values, then rounded once.
    torch.testing.assert_close(out, ops.roi_align(x.float(), rois, 3, 0.25, 2, True).to(dtype), atol=0, rtol=0)
    expected = reference.roi_align(x.float(), rois, 3, 0.25, 2, True)
    torch.testing.assert_close(out.float(), expected, atol=1e-2, rtol=1e-2)
    # The gradient is accumulated in float32 and rounded once.
    grad = torch.randn(out.shape, generator=g).to(device=device, dtype=dtype)
    xh = x.clone().requires_grad_()
    ops.roi_align(xh, rois, 3, 0.25, 2, True).backward(grad)
    xf = x.float().requires_grad_()
    ops.roi_align(xf, rois, 3, 0.25, 2, True).backward(grad.float())
    assert xh.grad.dtype == dtype
    if device == "cpu":  # the CPU sums in a fixed order: exactly the float32 gradient, rounded
        torch.testing.assert_close(xh.grad, xf.grad.to(dtype), atol=0, rtol=0)
    else:
        torch.testing.assert_close(xh.grad.float(), xf.grad, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_inputs(device):
    x = torch.randn(2, 3, 8, 8, device=device)
    assert ops.roi_align(x, torch.zeros(0, 5, device=device), 2).shape == (0, 3, 2, 2)
    for empty_list in ([], [torch.zeros(0, 4, device=device)]):  # no images, or an image without boxes
        out = ops.roi_align(x.double(), empty_list, 2)
        assert out.shape == (0, 3, 2, 2) and out.device == x.device and out.dtype == torch.float64
        assert reference.roi_align(x.double(), empty_list, 2).shape == (0, 3, 2, 2)
    assert ops.roi_align(x[:, :0], random_rois(4, 2, 8, device=device), 2).shape == (4, 0, 2, 2)
    empty_map = torch.randn(2, 3, 0, 8, device=device)
    out = ops.roi_align(empty_map, random_rois(4, 2, 8, device=device), 2)
    assert out.shape == (4, 3, 2, 2) and (out == 0).all()
    xg = x.clone().requires_grad_()
    ops.roi_align(xg, torch.zeros(0, 5, device=device), 2).sum().backward()
    assert (xg.grad == 0).all()


def test_cpu_backward_is_deterministic():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 64, 20, 20, generator=g)
    rois = random_rois(200, 2, 160, generator=g)  # many overlapping RoIs: many sums into one pixel
    grad = torch.randn(200, 64, 7, 7, generator=g)
    grads = []
    for _ in range(3):
        xg = x.clone().requires_grad_()
        ops.roi_align(xg, rois, 7, 1 / 8, 2, True).backward(grad)
        grads.append(xg.grad)
    assert all(torch.equal(grads[0], other) for other in grads[1:])


# --- gradients and the custom-op machinery -----------------------------------------------------


def test_gradcheck():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 2, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    rois = random_rois(4, 2, 24, generator=g, dtype=torch.float64)
    for sampling_ratio, aligned in [(2, True), (-1, False)]:
        pooled = partial(ops.roi_align, boxes=rois, output_size=(2, 3), spatial_scale=0.25,
                         sampling_ratio=sampling_ratio, aligned=aligned)  # fmt: skip
        assert torch.autograd.gradcheck(pooled, (x,))


def test_double_backward_is_refused():
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 1.0, 1, 4, 4]], dtype=torch.float64)
    # square(): the first gradient then depends on x, so a second derivative has something to do.
    (grad,) = torch.autograd.grad(ops.roi_align(x, rois, 2).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="roi_align: double backward .* is not supported"):
        grad.sum().backward()


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 9, 9, generator=g).to(device)
    rois = random_rois(5, 2, 9, generator=g, device=device)
    forward = torch.ops.minimtl.roi_align.default
    for args in [
        (x, rois, 1.0, 2, 3, 2, True),
        (x.double().requires_grad_(), rois.double(), 0.5, 3, 2, -1, False),
        (x.contiguous(memory_format=torch.channels_last).requires_grad_(), rois, 1.0, 2, 2, 0, True),
        (x, rois[:0], 1.0, 2, 2, 2, True),
    ]:
        torch.library.opcheck(forward, args)
    backward = torch.ops.minimtl._roi_align_backward.default
    torch.library.opcheck(backward, (torch.randn(5, 3, 2, 3, device=device), rois, 1.0, 2, 3, 2, 3, 9, 9, 2, True))


def test_torch_compile_with_backward():
    torch._dynamo.reset()

    def pooled_sum(x, rois):
        return ops.roi_align(x, rois, 3, 0.5, 2, True).square().sum()

    compiled = torch.compile(pooled_sum, backend="aot_eager", fullgraph=True)
    g = torch.Generator().manual_seed(7)
    for k in (6, 9):
        x = torch.randn(2, 4, 10, 10, generator=g, requires_grad=True)
        rois = random_rois(k, 2, 20, generator=g)
        (grad,) = torch.autograd.grad(compiled(x, rois), x)
        (expected,) = torch.autograd.grad(pooled_sum(x, rois), x)
        torch.testing.assert_close(grad, expected)


def test_torch_compile_inductor():
    torch._dynamo.reset()
    module = ops.RoIAlign(2, 0.5, 2, True)
    compiled = torch.compile(lambda x, r: module(x * 2, r).relu())
    x, rois = torch.randn(2, 3, 8, 8), random_rois(5, 2, 16)
    torch.testing.assert_close(compiled(x, rois), module(x * 2, rois).relu())


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index, shown", [(-1.0, "-1"), (2.0, "2"), (0.5, "0.5"), (math.nan, "nan"), (math.inf, "inf")])
def test_invalid_batch_index_is_a_clear_error(device, index, shown):
    x = torch.randn(2, 3, 8, 8, device=device)
    rois = torch.tensor([[0, 1, 1, 4, 4], [index, 1, 1, 4, 4]], device=device)
    message = rf"roi_align: rois\[:, 0\] must hold integer batch indices in \[0, 2\), got {shown} in row 1"
    with pytest.raises(RuntimeError, match=message):
        ops.roi_align(x, rois, 2)


@pytest.mark.parametrize("index", [-1.0, 2.0, 0.5, math.nan, math.inf, 1e30])
def test_python_check_says_what_the_cpu_kernel_says(index):
    # On CUDA the batch indices are checked in Python (minimtl/ops/_checks.py), on the CPU by the
    # kernel (csrc/checks.h): one message, whichever device.
    x, rois = torch.randn(2, 3, 8, 8), torch.tensor([[0, 1, 1, 4, 4], [1, 1, 1, 4, 4], [index, 1, 1, 4, 4]])
    with pytest.raises(RuntimeError) as from_python:
        _checks.check_batch_indices("roi_align", rois, 2)
    with pytest.raises(RuntimeError) as from_kernel:
        ops.roi_align(x, rois, 2, check_indices=False)  # the CPU kernel checks anyway: the RoIs are on the host
    assert str(from_python.value) == str(from_kernel.value).split("\n")[0]
    _checks.check_batch_indices("roi_align", rois[:2], 2)  # valid: quiet
    _checks.check_batch_indices("roi_align", rois[:0], 2)
    # Tensors without data (meta, as torch.compile's shape passes use) have no indices to check.
    meta = ops.roi_align(x.to("meta"), rois.to("meta"), 2)
    assert meta.shape == (3, 3, 2, 2) and meta.device.type == "meta"


@requires_cuda
@pytest.mark.cuda
def test_cuda_bad_index_gives_zeros_when_unchecked():
    # The CUDA kernel never reads outside the input, checked or not: a bad row gives zeros.
    x = torch.randn(2, 3, 8, 8, device="cuda")
    rois = torch.tensor([[0, 1, 1, 4, 4], [7, 1, 1, 4, 4], [math.nan, 1, 1, 4, 4]], device="cuda")
    out = ops.roi_align(x, rois, 2, check_indices=False)
    assert (out[1:] == 0).all()
    torch.testing.assert_close(out[:1], ops.roi_align(x, rois[:1], 2))


@requires_cuda
@pytest.mark.cuda
def test_cuda_forward_and_backward_never_synchronise():
    # Boxes per image (indices valid by construction) or unchecked RoIs: no device-to-host copy and
    # no synchronisation in the forward or the (float atomics) backward.
    x = torch.randn(2, 8, 32, 32, device="cuda", requires_grad=True)
    boxes = [
        torch.tensor([[1.0, 1, 20, 20], [4, 4, 30, 12]], device="cuda"),
        torch.tensor([[0.0, 0, 8, 8]], device="cuda"),
    ]
    rois = ops.boxes_to_rois(boxes)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = ops.roi_align(x, boxes, 7, 0.5, 2, True) + ops.roi_align(x, rois, 7, 0.5, 2, True, check_indices=False)
        out.sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert x.grad is not None and x.grad.abs().sum() > 0


@requires_cuda
@pytest.mark.cuda
def test_cuda_graph_captures_roi_align():
    # Illegal while a CUDA graph is captured: a synchronisation. The forward has none.
    x = torch.randn(2, 8, 32, 32, device="cuda")
    rois = ops.boxes_to_rois(
        [torch.tensor([[1.0, 1, 20, 20]], device="cuda"), torch.tensor([[0.0, 0, 8, 8]], device="cuda")]
    )
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        ops.roi_align(x, rois, 7, 0.5, 2, True)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ops.roi_align(x, rois, 7, 0.5, 2, True)  # a Tensor[K, 5]: its check is skipped while capturing
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, ops.roi_align(x, rois, 7, 0.5, 2, True))


def test_bad_input_clear_errors():
    x, rois = torch.randn(2, 3, 8, 8), torch.tensor([[0, 1, 1, 4, 4.0]])
    cases = [
        (lambda: ops.roi_align(x[0], rois, 2), r"input must be a Tensor\[N, C, H, W\], got shape \[3, 8, 8\]"),
        (lambda: ops.roi_align(x.long(), rois, 2), r"input must be floating point.*got Long"),
        (lambda: ops.roi_align(x, rois[:, :4], 2), r"boxes must be a Tensor\[K, 5\].*got a tensor of shape \(1, 4\)"),
        (lambda: ops.roi_align(x, rois.long(), 2), r"rois must be floating point, got Long"),
        (lambda: ops.roi_align(x, rois, 0), r"output_size must be positive, got \(0, 0\)"),
        (lambda: ops.roi_align(x, rois, (2, 3, 4)), r"output_size must be an int or a pair of ints"),
        (lambda: ops.roi_align(x, [rois[:, 1:]] * 3, 2), r"boxes is a list of 3 tensors .* input has 2 images"),
        (lambda: ops.roi_align(x, [rois], 2), r"boxes\[0\] must be a Tensor\[L, 4\].*got shape \(1, 5\)"),
        (lambda: ops.roi_align(x, "boxes", 2), r"boxes must be a Tensor\[K, 5\] or a list of Tensor\[L, 4\].*got str"),
    ]
    for call, message in cases:
        with pytest.raises((RuntimeError, TypeError), match="roi_align: " + message):
            call()


@requires_cuda
@pytest.mark.cuda
def test_mixed_devices_clear_error():
    with pytest.raises(RuntimeError, match="roi_align: input and rois must be on the same device"):
        ops.roi_align(torch.randn(1, 2, 4, 4, device="cuda"), torch.tensor([[0, 1, 1, 2, 2.0]]), 2)


def test_bad_boxes_never_crash():
    # NaN/inf boxes, boxes far off the map, zero-size and inverted boxes, an infinite box with
    # adaptive sampling (which must not hang), C = 0, invalid batch indices: in a subprocess, on
    # every device.
    result = run_python(
        """
        import math, torch
        from minimtl import ops
        torch.manual_seed(0)
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        specials = torch.tensor([math.nan, math.inf, -math.inf, 1e30, -1e30, 1e6, -1e6, 0.0])
        for device in devices:
            x = torch.randn(2, 16, 25, 25, device=device, requires_grad=True)
            rois = torch.rand(3000, 5) * 200
            rois[:, 3:] += rois[:, 1:3]
            rois[:, 0] = torch.randint(0, 2, (3000,))
            mask = torch.rand(3000, 4) < 0.3
            coords = rois[:, 1:]
            coords[mask] = specials[torch.randint(0, len(specials), (int(mask.sum()),))]
            rois = rois.to(device)
            for sampling_ratio in (-1, 0, 2):
                for aligned in (False, True):
                    out = ops.roi_align(x, rois, 7, 1 / 8, sampling_ratio, aligned)
                    assert out.isfinite().all(), (sampling_ratio, aligned)
                    out.sum().backward()
                    assert x.grad.isfinite().all()
            nan_rows = rois[:, 1:].isnan().any(dim=1)
            assert (ops.roi_align(x, rois[nan_rows], 7, 1 / 8, -1, True) == 0).all()
            assert ops.roi_align(x[:, :0], rois, 7, 1 / 8).shape == (3000, 0, 7, 7)
            for index in (-1.0, 2.0, 0.5, math.nan, math.inf, 1e30):  # an error, never a read outside
                bad = rois.clone()
                bad[1234, 0] = index
                try:
                    ops.roi_align(x, bad, 7, 1 / 8)
                    raise AssertionError(f"batch index {index} was accepted")
                except RuntimeError as error:
                    assert "row 1234" in str(error), error
        print("ok")
        """,
        timeout=300,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


# --- CUDA against CPU --------------------------------------------------------------------------


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype, tol", [(torch.float64, F64), (torch.float32, F32)], ids=["float64", "float32"])
@given(case=roi_align_cases(special=True))
def test_cuda_matches_cpu(dtype, tol, case):
    x, rois, args = case_tensors(case, dtype)
    xc, xg = x.clone().requires_grad_(), x.cuda().requires_grad_()
    out_cpu, out_cuda = ops.roi_align(xc, rois, *args), ops.roi_align(xg, rois.cuda(), *args)
    torch.testing.assert_close(out_cuda.cpu(), out_cpu, **tol)
    grad = torch.randn_like(out_cpu)
    out_cpu.backward(grad)
    out_cuda.backward(grad.cuda())
    torch.testing.assert_close(xg.grad.cpu(), xc.grad, **tol)


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_cuda_backward_is_deterministic_in_deterministic_mode(dtype):
    # Many overlapping RoIs: many threads add to the same pixels. In deterministic mode the CUDA
    # backward accumulates in fixed point: the same bits on every run, close to the CPU's sum.
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 16, 24, 24, generator=g).to(dtype)
    rois = random_rois(300, 2, 24, generator=g)
    grad = torch.randn(300, 16, 7, 7, generator=g).to(dtype)
    grad[0, 0, 0, 0] = 1e4  # a large value next to small ones: the fixed point must keep both
    torch.use_deterministic_algorithms(True)
    try:
        grads = []
        for _ in range(3):
            xg = x.cuda().requires_grad_()
            ops.roi_align(xg, rois.cuda(), 7, 1.0, 2, True).backward(grad.cuda())
            grads.append(xg.grad.cpu())
    finally:
        torch.use_deterministic_algorithms(False)
    assert all(torch.equal(grads[0], other) for other in grads[1:])
    xc = x.double().requires_grad_()
    ops.roi_align(xc, rois.double(), 7, 1.0, 2, True).backward(grad.double())
    tol = {torch.float64: 1e-10, torch.float32: 1e-3, torch.float16: 5e-2}[dtype]
    torch.testing.assert_close(grads[0].double(), xc.grad, atol=tol, rtol=tol)


def huge_float64_gradient_case():
    """200 RoIs on one 16 x 16 map, 2 channels, 2 x 2 bins, and a float64 gradient whose sum |grad|
    overflows (the fixed point's scale then comes from numel * max |grad|); each pixel's own total
    stays finite. -> rois (200, 5), grad (200, 2, 2, 2)"""
    g = torch.Generator().manual_seed(6)
    rois = random_rois(200, 1, 16, generator=g).double()
    grad = torch.randn(200, 2, 2, 2, generator=g, dtype=torch.float64) * 1e306
    assert not torch.isfinite(grad.abs().sum())
    return rois, grad


@requires_cuda
@pytest.mark.cuda
def test_cuda_deterministic_backward_of_huge_float64_gradients():
    rois, grad = huge_float64_gradient_case()
    x = torch.randn(1, 2, 16, 16, dtype=torch.float64)
    xc = x.clone().requires_grad_()
    ops.roi_align(xc, rois, 2, 1.0, 2, True).backward(grad)
    torch.use_deterministic_algorithms(True)
    try:
        xg = x.cuda().requires_grad_()
        ops.roi_align(xg, rois.cuda(), 2, 1.0, 2, True).backward(grad.cuda())
    finally:
        torch.use_deterministic_algorithms(False)
    assert xc.grad.isfinite().all()
    torch.testing.assert_close(xg.grad.cpu(), xc.grad, rtol=1e-6, atol=1e295)


@requires_cuda
@pytest.mark.cuda
def test_cuda_deterministic_backward_propagates_nan_and_inf():
    x = torch.zeros(1, 1, 8, 8, device="cuda", requires_grad=True)
    rois = torch.tensor([[0, 0, 0, 3, 3.0], [0, 4, 4, 7, 7.0], [0, 4, 4, 7, 7.0]], device="cuda")
    grad = torch.zeros(3, 1, 1, 1, device="cuda")
    grad[0], grad[1], grad[2] = math.nan, math.inf, 1.0
    torch.use_deterministic_algorithms(True)
    try:
        ops.roi_align(x, rois, 1, 1.0, 2, True).backward(grad)
    finally:
        torch.use_deterministic_algorithms(False)
    assert x.grad[0, 0, :3, :3].isnan().any() and (x.grad[0, 0, 4:7, 4:7] == math.inf).any()
    assert torch.isfinite(x.grad[0, 0, :, 7]).all()  # untouched pixels stay 0
