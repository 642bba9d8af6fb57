"""The CUDA kernels, run on the CPU (tests/cuda_emulation/): the kernel files csrc/cuda/box_iou.cu,
nms.cu and roi_align.cu, host code and kernels, compiled for the CPU, every thread of every launch
run by the CPU (NMS's threads as OS threads that meet at __syncthreads). So the CUDA kernels'
indexing (32- and 64-bit), their guards against bad input, the NMS bitmask and the deterministic
backward's fixed-point sums are tested on machines without a GPU, against the CPU kernels; so are
the emulation's own trace and thread order (tests/cuda_emulation/cuda_on_cpu.h), which chapter 13
uses to show which thread does what. Not tested here: the GPU's races and speed
(scripts/gpu_check.sh runs the real kernels there, also under compute-sanitizer)."""

import contextlib
import math
import os

import pytest
import torch
from cuda_emulation import emulation
from hypothesis import given
from strategies import as_boxes, box_lists
from test_nms import nms_inputs, tensors
from test_roi_align import F32, F64, case_tensors, huge_float64_gradient_case, random_rois, roi_align_cases

from minimtl import ops
from minimtl.bench.ops import random_boxes, unique_scores


@pytest.fixture(scope="module")
def emulated():
    """torch.ops.minimtl_emulated (a minute to build the first time; then a cache hit).

    tests/cuda_emulation/emulation.py builds it under build/cuda_emulation, in a folder of its own per
    torch version, Python version and flags (torch's shared extension cache would serve a build made
    against another torch), under a lock of its own (a build killed half-way leaves torch's lock behind).
    """
    extra = os.environ.get("MINIMTL_EMULATION_CFLAGS", "").split()  # scripts/sanitize.sh adds -fsanitize
    return emulation.load(tuple(extra))


# Each RoIAlign test runs with the kernels' 32-bit indices, then with their 64-bit ones.
INDEX_BITS = pytest.mark.parametrize("index_bits", [32, 64], ids=["int32-index", "int64-index"])


@contextlib.contextmanager
def index_type(emulated, bits):
    emulated.set_int32_index_limit(1 << 30 if bits == 32 else 0)
    try:
        yield
    finally:
        emulated.set_int32_index_limit(1 << 30)


def deterministic(fn, *args):
    torch.use_deterministic_algorithms(True)
    try:
        return fn(*args)
    finally:
        torch.use_deterministic_algorithms(False)


# --- IoU / GIoU --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("name", ["box_iou", "generalized_box_iou"])
@given(boxes1=box_lists(max_size=40, special=True), boxes2=box_lists(max_size=40, special=True))
def test_pairwise_matches_cpu(emulated, name, dtype, boxes1, boxes2):
    a, b = as_boxes(boxes1, dtype), as_boxes(boxes2, dtype)
    torch.testing.assert_close(getattr(emulated, name)(a, b), getattr(ops, name)(a, b), atol=0, rtol=0)


@pytest.mark.parametrize("name", ["box_iou", "generalized_box_iou"])
def test_pairwise_grid_stride(emulated, name):
    # more rows than one grid covers (8192 blocks of 4 rows) and columns not a multiple of 128
    g = torch.Generator().manual_seed(3)
    a = torch.rand(33_000, 2, generator=g) * 100
    a = torch.cat([a, a + torch.rand(33_000, 2, generator=g) * 20], dim=1)
    b = a[torch.randperm(33_000, generator=g)[:130]]
    torch.testing.assert_close(getattr(emulated, name)(a, b), getattr(ops, name)(a, b), atol=0, rtol=0)


# --- NMS ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@given(inputs=nms_inputs(special=True, max_size=40))
def test_nms_matches_cpu(emulated, dtype, inputs):
    args = tensors(inputs, dtype)
    assert torch.equal(emulated.nms(*args), ops.nms(*args))


@given(inputs=nms_inputs(special=True, max_size=40, classes=True))
def test_batched_nms_matches_cpu(emulated, inputs):
    args = tensors(inputs)
    assert torch.equal(emulated.batched_nms(*args), ops.batched_nms(*args))


@pytest.mark.parametrize("n", [63, 64, 65, 700])
def test_nms_across_blocks_of_64(emulated, n):
    # several column blocks, a partial last one, the diagonal blocks, many suppressions
    g = torch.Generator().manual_seed(n)
    boxes, scores = random_boxes(n, size=80, max_side=30, generator=g), unique_scores(n, generator=g)
    idxs = torch.randint(0, 3, (n,), generator=g)
    for threshold in (0.1, 0.3):
        kept = emulated.nms(boxes, scores, threshold)
        assert len(kept) < n and torch.equal(kept, ops.nms(boxes, scores, threshold))
        assert torch.equal(
            emulated.batched_nms(boxes, scores, idxs, threshold), ops.batched_nms(boxes, scores, idxs, threshold)
        )


def test_nms_leaves_its_inputs_unchanged(emulated):
    boxes, scores = random_boxes(100, size=100), torch.rand(100)
    scores[::7], boxes[::11, 0] = math.nan, math.nan
    before = boxes.clone(), scores.clone()
    emulated.nms(boxes, scores, 0.5)
    torch.testing.assert_close((boxes, scores), before, rtol=0, atol=0, equal_nan=True)


def test_nms_too_many_boxes_is_an_error(emulated):
    n = 389_057  # one more than the `removed` bits in the gather kernel's 48 KiB of shared memory hold
    with pytest.raises(RuntimeError, match="nms: the CUDA kernel handles at most 389056 boxes, got 389057"):
        emulated.nms(torch.zeros(n, 4), torch.zeros(n), 0.5)


# --- RoIAlign forward --------------------------------------------------------------------------


@INDEX_BITS
@pytest.mark.parametrize("dtype, tol", [(torch.float64, F64), (torch.float32, F32)], ids=["float64", "float32"])
@given(case=roi_align_cases(special=True))
def test_roi_align_matches_cpu(emulated, index_bits, dtype, tol, case):
    x, rois, args = case_tensors(case, dtype)
    output_size, spatial_scale, sampling_ratio, aligned = args
    expected = ops.roi_align(x, rois, *args)
    with index_type(emulated, index_bits):
        out = emulated.roi_align(x, rois, spatial_scale, *output_size, sampling_ratio, aligned)
    torch.testing.assert_close(out, expected, **tol)


def test_roi_align_half_precision_and_channels_last(emulated):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 5, 12, 12, generator=g).contiguous(memory_format=torch.channels_last)
    rois = random_rois(30, 2, 12, generator=g)
    for dtype, tol in [(torch.float16, 1e-3), (torch.bfloat16, 1e-2), (torch.float32, 1e-5)]:
        out = emulated.roi_align(x.to(dtype), rois, 1.0, 3, 4, -1, True)
        assert out.dtype == dtype
        torch.testing.assert_close(out, ops.roi_align(x.to(dtype), rois, (3, 4), 1.0, -1, True), atol=tol, rtol=tol)


@pytest.mark.parametrize("index", [-1.0, 2.0, 0.5, math.nan, math.inf, 1e30])
def test_roi_align_bad_batch_index_gives_zeros_without_waiting(emulated, index):
    # The CUDA op never reports a bad index (naming it would make the host wait for the GPU on every
    # call; minimtl.ops.roi_align checks a Tensor[K, 5] before): the RoI reads nothing and gives zeros.
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 8, 8, generator=g)
    rois = torch.tensor([[0, 1, 1, 4, 4], [index, 1, 1, 4, 4], [1, 2, 2, 6, 6]])
    waits = emulated.host_waits()
    out = emulated.roi_align(x, rois, 1.0, 2, 2, 2, True)
    assert emulated.host_waits() == waits, "the forward copied to the host or synchronised"
    assert (out[1] == 0).all()
    torch.testing.assert_close(out[[0, 2]], ops.roi_align(x, rois[[0, 2]], 2, 1.0, 2, True), atol=1e-6, rtol=1e-6)
    assert emulated.roi_align(x[:, :0], rois, 1.0, 2, 2, 2, True).shape == (3, 0, 2, 2)  # no kernel, no error


@INDEX_BITS
def test_roi_align_forward_and_float_backward_never_wait(emulated, index_bits):
    # No copy to the host and no stream synchronisation: the CPU keeps queueing work while the GPU
    # runs, and the ops can be captured in a CUDA graph. (The deterministic backward waits once, for
    # its bound B; see roi_align_backward_deterministic.)
    g = torch.Generator().manual_seed(6)
    x, rois = torch.randn(2, 4, 16, 16, generator=g), random_rois(40, 2, 16, generator=g)
    waits = emulated.host_waits()
    with index_type(emulated, index_bits):
        out = emulated.roi_align(x, rois, 0.5, 3, 3, -1, False)
        emulated._roi_align_backward(torch.ones_like(out), rois, 0.5, 3, 3, 2, 4, 16, 16, -1, False)
    assert emulated.host_waits() == waits


def test_roi_align_backward_of_a_batch_without_images_launches_nothing(emulated):
    # N = 0: every RoI's index is bad and the gradient is empty. A launch of zero blocks would be
    # cudaErrorInvalidConfiguration on a GPU (and is refused by the emulation): the op returns first.
    rois = torch.tensor([[0, 1, 1, 4, 4.0]])
    for run in (emulated._roi_align_backward, lambda *a: deterministic(emulated._roi_align_backward, *a)):
        grad_input = run(torch.ones(1, 3, 2, 2), rois, 1.0, 2, 2, 0, 3, 8, 8, 2, True)
        assert grad_input.shape == (0, 3, 8, 8)


@pytest.mark.parametrize(
    "grid, block, refused",
    [
        ((0, 1, 1), (256, 1, 1), "cudaErrorInvalidConfiguration"),  # no blocks
        ((1, 1, 1), (0, 1, 1), "cudaErrorInvalidConfiguration"),  # no threads
        ((1, 1, 1), (1025, 1, 1), "cudaErrorInvalidConfiguration"),  # over 1024 threads a block
        ((1, 1, 1), (64, 32, 1), "cudaErrorInvalidConfiguration"),  # 2048 threads, each axis allowed
        ((1, 65536, 1), (32, 1, 1), "cudaErrorInvalidConfiguration"),  # grid.y over 65535
        ((2**31, 1, 1), (32, 1, 1), "cudaErrorInvalidConfiguration"),  # grid.x over 2^31 - 1
        ((2**32, 1, 1), (32, 1, 1), "does not fit an unsigned int"),  # a real dim3 would truncate it to 0
        ((1, 1, 2), (32, 1, 1), "x and y axes only"),
    ],
)
def test_emulation_refuses_the_launches_a_gpu_refuses(emulated, grid, block, refused):
    with pytest.raises(RuntimeError, match=refused):
        emulated.launch_empty_kernel(list(grid), list(block))


def test_emulation_runs_the_launches_a_gpu_accepts(emulated):
    for grid, block in [((1, 1, 1), (1, 1, 1)), ((3, 2, 1), (1024, 1, 1)), ((2, 1, 1), (32, 32, 1))]:
        emulated.launch_empty_kernel(list(grid), list(block))


@INDEX_BITS
def test_roi_align_hostile_boxes(emulated, index_bits):
    # NaN/inf/huge coordinates with every sampling mode: finite output, equal to the CPU's.
    g = torch.Generator().manual_seed(0)
    specials = torch.tensor([math.nan, math.inf, -math.inf, 1e30, -1e30, 1e6, -1e6, 0.0])
    x = torch.randn(2, 4, 25, 25, generator=g)
    rois = torch.rand(400, 5, generator=g) * 200
    rois[:, 3:] += rois[:, 1:3]
    rois[:, 0] = torch.randint(0, 2, (400,), generator=g)
    mask = torch.rand(400, 4, generator=g) < 0.3
    rois[:, 1:][mask] = specials[torch.randint(0, len(specials), (int(mask.sum()),), generator=g)]
    for sampling_ratio in (-1, 0, 2):
        for aligned in (False, True):
            with index_type(emulated, index_bits):
                out = emulated.roi_align(x, rois, 1 / 8, 7, 7, sampling_ratio, aligned)
            assert out.isfinite().all()
            torch.testing.assert_close(out, ops.roi_align(x, rois, 7, 1 / 8, sampling_ratio, aligned), **F32)


# --- RoIAlign backward -------------------------------------------------------------------------


def backward_args(case, dtype):
    x, rois, (output_size, spatial_scale, sampling_ratio, aligned) = case_tensors(case, dtype)
    grad = torch.randn(len(rois), x.shape[1], *output_size, generator=torch.Generator().manual_seed(case["seed"]))
    return (grad.to(dtype), rois, spatial_scale, *output_size, *x.shape, sampling_ratio, aligned)


@INDEX_BITS
@pytest.mark.parametrize("mode", ["atomic", "deterministic"])
@given(case=roi_align_cases(special=True))
def test_roi_align_backward_matches_cpu(emulated, index_bits, mode, case):
    args = backward_args(case, torch.float64)
    expected = torch.ops.minimtl._roi_align_backward(*args)
    with index_type(emulated, index_bits):
        if mode == "atomic":
            grad_input = emulated._roi_align_backward(*args)
        else:
            grad_input = deterministic(emulated._roi_align_backward, *args)
    # The fixed point rounds each contribution to 2^-S with B * 2^S < 2^62 (B = sum |grad|).
    bound = args[0].abs().sum().item() * 2.0**-50
    torch.testing.assert_close(grad_input, expected, atol=bound if mode == "deterministic" else 1e-12, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_deterministic_backward_keeps_small_values_beside_large_ones(emulated, dtype):
    g = torch.Generator().manual_seed(5)
    rois = random_rois(300, 2, 24, generator=g)
    grad = torch.randn(300, 4, 7, 7, generator=g)
    grad[0, 0, 0, 0] = 1e4
    args = (grad.to(dtype), rois, 1.0, 7, 7, 2, 4, 24, 24, 2, True)
    grad_input = deterministic(emulated._roi_align_backward, *args)
    assert grad_input.dtype == dtype and grad_input.shape == (2, 4, 24, 24)
    expected = torch.ops.minimtl._roi_align_backward(grad.double(), rois.double(), *args[2:])
    tol = {torch.float64: 1e-10, torch.float32: 1e-3, torch.float16: 5e-2, torch.bfloat16: 5e-2}[dtype]
    torch.testing.assert_close(grad_input.double(), expected, atol=tol, rtol=tol)


def test_deterministic_backward_propagates_nan_and_inf(emulated):
    rois = torch.tensor([[0, 0, 0, 3, 3.0], [0, 4, 4, 7, 7.0], [0, 4, 4, 7, 7.0], [0, 0, 4, 3, 7.0], [0, 0, 4, 3, 7.0]])
    grad = torch.tensor([math.nan, math.inf, 1.0, math.inf, -math.inf]).reshape(5, 1, 1, 1)
    args = (grad, rois, 1.0, 1, 1, 1, 1, 8, 8, 2, True)
    grad_input = deterministic(emulated._roi_align_backward, *args)[0, 0]
    expected = torch.ops.minimtl._roi_align_backward(*args)[0, 0]  # IEEE's rules, as the CPU sums
    torch.testing.assert_close(grad_input, expected, equal_nan=True, atol=0, rtol=0)
    assert grad_input[:3, :3].isnan().any() and (grad_input[4:7, 4:7] == math.inf).any()
    assert grad_input[4:7, :3].isnan().any()  # +inf and -inf on one pixel
    assert (grad_input[:, 7] == 0).all()  # untouched pixels stay 0


def test_deterministic_backward_of_huge_float64_gradients(emulated):
    rois, grad = huge_float64_gradient_case()
    args = (grad, rois, 1.0, 2, 2, 1, 2, 16, 16, 2, True)
    expected = torch.ops.minimtl._roi_align_backward(*args)
    assert expected.isfinite().all()
    torch.testing.assert_close(deterministic(emulated._roi_align_backward, *args), expected, rtol=1e-6, atol=1e295)


def test_deterministic_backward_of_zero_gradient_is_zero(emulated):
    rois = random_rois(10, 1, 8, generator=torch.Generator().manual_seed(7))
    args = (torch.zeros(10, 2, 3, 3), rois, 1.0, 3, 3, 1, 2, 8, 8, 2, True)
    assert torch.equal(deterministic(emulated._roi_align_backward, *args), torch.zeros(1, 2, 8, 8))


def test_deterministic_backward_rounds_every_pixel_to_one_step_set_by_the_whole_gradient(emulated):
    # The fixed point's trade-off, pinned. Every contribution v is added as round(v * 2^S), where
    # S = 62 - e and B = sum |grad| < 2^e: one absolute step, 2^-S, for every pixel whatever its own
    # size. A pixel reached only by contributions far below B has a larger relative error than
    # float atomics give (about 2^-24 of its own value in float32), and one below 2^-(S+1) is lost.
    # Here B = 2^40 + 2^-30 < 2^41, so S = 21 and the step is 2^-21: RoI 0's contributions
    # (2^40 / 4 samples x 1/4 bilinear weight = 2^36) are exact; RoI 1's (2^-30 / 16 = 2^-34) round to 0.
    rois = torch.tensor([[0, 0, 0, 4, 4.0], [0, 8, 8, 12, 12]], dtype=torch.float64)
    grad = torch.tensor([2.0**40, 2.0**-30], dtype=torch.float64).reshape(2, 1, 1, 1)
    args = (grad, rois, 1.0, 1, 1, 1, 1, 16, 16, 2, True)
    exact = torch.ops.minimtl._roi_align_backward(*args)[0, 0]  # (16, 16), the CPU kernel in float64
    fixed = deterministic(emulated._roi_align_backward, *args)[0, 0]
    atomic = emulated._roi_align_backward(*args)[0, 0]
    large, small = (slice(0, 4), slice(0, 4)), (slice(8, 12), slice(8, 12))
    assert (exact[large] == 2.0**36).all() and (exact[small] == 2.0**-34).all()  # one sample's tap per pixel
    assert torch.equal(fixed[large], exact[large])  # multiples of the step: exact
    assert (fixed[small] == 0).all()  # below half a step: lost
    assert torch.equal(atomic, exact)  # float atomics keep it (in float64 here)
    step = 2.0**-21
    assert (fixed - exact).abs().max() <= step / 2  # the bound: half a step per contribution


def test_backward_skips_rois_with_bad_batch_indices(emulated):
    # The backward trusts the caller's check, but a bad row must still not reach memory: it adds nothing.
    rois = torch.tensor([[0, 1, 1, 4, 4.0], [5, 1, 1, 4, 4], [math.nan, 1, 1, 4, 4], [-1, 1, 1, 4, 4]])
    grad = torch.ones(4, 3, 2, 2)
    for run in (emulated._roi_align_backward, lambda *a: deterministic(emulated._roi_align_backward, *a)):
        grad_input = run(grad, rois, 1.0, 2, 2, 2, 3, 8, 8, 2, True)
        expected = torch.ops.minimtl._roi_align_backward(grad[:1], rois[:1], 1.0, 2, 2, 2, 3, 8, 8, 2, True)
        torch.testing.assert_close(grad_input, expected, atol=1e-6, rtol=1e-6)


# --- the trace and the thread order (cuda_on_cpu.h; chapter 13 uses them) --------------------------


def test_trace_shows_which_thread_writes_each_iou(emulated):
    g = torch.Generator().manual_seed(8)
    a, b = random_boxes(10, generator=g), random_boxes(300, generator=g)
    with emulation.tracing(watch=[("pairwise_kernel", 4, 10 * 300)]) as trace:
        out = emulated.box_iou(a, b)
    assert torch.equal(out, ops.box_iou(a, b))
    (launch,) = trace.launches
    assert launch.name == "pairwise_kernel" and launch.grid == (3, 3, 1) and launch.block == (128, 4, 1)
    assert len(trace.threads) == launch.num_threads  # idle threads (j >= 300, i >= 10) run too
    writer = trace.threads[trace.writer(0)]  # (N * M, 5): the thread that wrote each output
    i, j = torch.arange(10).repeat_interleave(300), torch.arange(300).repeat(10)
    assert torch.equal(writer[:, 1] * 128 + writer[:, 3], j) and torch.equal(writer[:, 2] * 4 + writer[:, 4], i)
    assert torch.equal(trace.values(0, torch.float32), out.flatten())


def test_trace_of_nms_takes_turns_and_sees_the_mask(emulated):
    g = torch.Generator().manual_seed(9)
    n = 150
    boxes, scores = random_boxes(n, size=150.0, max_side=80.0, generator=g), unique_scores(n, generator=g)
    watch = [("nms_mask_kernel", 4, n * 3), ("nms_gather_kernel", 2, n)]
    with emulation.tracing(watch=watch) as trace:
        kept = emulated.nms(boxes, scores, 0.3)
    assert torch.equal(kept, ops.nms(boxes, scores, 0.3))
    assert [(x.name, x.grid, x.block) for x in trace.launches] == [
        ("nms_mask_kernel", (3, 3, 1), (64, 1, 1)),
        ("nms_gather_kernel", (1, 1, 1), (256, 1, 1)),
    ]
    words = trace.writer(0).view(n, 3)  # word (i, w) is written by thread i % 64 of block (w, i // 64), w >= i // 64
    rank = torch.arange(n)[:, None]
    assert torch.equal(words >= 0, torch.arange(3)[None, :] >= rank // 64)
    writer = trace.threads[words.clamp(min=0)]
    done = words >= 0
    assert torch.equal(writer[:, :, 3][done], (rank % 64).expand(n, 3)[done])
    assert torch.equal(writer[:, :, 2][done], (rank // 64).expand(n, 3)[done])
    order = torch.sort(scores, descending=True, stable=True).indices
    iou = ops.box_iou(boxes[order], boxes[order])
    mask = trace.values(0, torch.int64).view(n, 3)
    bits = (mask[:, torch.arange(n) // 64] >> (torch.arange(n) % 64)) & 1  # (n, n): bit j of row i
    assert torch.equal(bits.bool() & done[:, torch.arange(n) // 64], (iou > 0.3).triu(1))
    assert torch.equal(order[trace.values(1, torch.bool)], kept)


def test_thread_order_changes_float_atomics_only(emulated):
    g = torch.Generator().manual_seed(10)
    rois = random_rois(30, 1, 16, generator=g)
    args = (torch.randn(30, 2, 7, 7, generator=g), rois, 1.0, 7, 7, 1, 2, 16, 16, 2, True)
    x = torch.randn(1, 2, 16, 16, generator=g)
    first = emulated._roi_align_backward(*args)
    fixed = deterministic(emulated._roi_align_backward, *args)
    with emulation.tracing() as trace:
        assert torch.equal(emulated._roi_align_backward(*args), first)  # a trace changes nothing
    assert len(trace.atomics) > 0 and (trace.atomics[:, 3] == 0).all()
    shuffled = []
    for seed in range(3):
        with emulation.thread_order(seed):
            assert torch.equal(deterministic(emulated._roi_align_backward, *args), fixed)
            assert torch.equal(emulated.roi_align(x, rois, 1.0, 7, 7, 2, True), ops.roi_align(x, rois, 7, 1.0, 2, True))
            shuffled.append(emulated._roi_align_backward(*args))
            torch.testing.assert_close(shuffled[-1], first, atol=1e-5, rtol=1e-5)
    assert any(not torch.equal(s, first) for s in shuffled)  # float sums in another order: other last bits
    assert torch.equal(emulated._roi_align_backward(*args), first)  # the default order is back
