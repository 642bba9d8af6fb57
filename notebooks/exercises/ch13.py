"""Checks for the exercises of chapter 13, "The kernels on a GPU" (notebooks/13_cuda_kernels.ipynb).

Each `exercise_K(answer)` returns quietly when the answer is right and raises an AssertionError that says what is
wrong otherwise. The expected values are worked out here from the kernels' own rules (csrc/cuda/*.cu), quoted in
each check; none needs a GPU or the emulation.
"""

import math

import torch


def _call(fn, *args):
    """fn(*args), with any error turned into an AssertionError that names the call."""
    try:
        return fn(*args)
    except AssertionError:
        raise
    except Exception as error:  # a learner's function may fail in any way: report it as a wrong answer
        raise AssertionError(f"calling your function with {args} raised {type(error).__name__}: {error}") from error


# --- 1. the grid-stride loop of pairwise_kernel -------------------------------------------------------------------


def _owner(n, m, i, j):
    # csrc/cuda/box_iou.cu: blocks of 128 x 4 threads, a grid of ceil(m / 128) x min(ceil(n / 4), 8192);
    # j = 128 bx + tx; rows i = 4 by + ty, then + gridDim.y * 4 per step of the loop.
    grid_y = min(math.ceil(n / 4), 8192)
    rows_per_sweep = 4 * grid_y
    first = i % rows_per_sweep
    return (j // 128, first // 4), (j % 128, first % 4), i // rows_per_sweep


def exercise_1(owner):
    assert callable(owner), "answer with a function owner(n, m, i, j) -> ((bx, by), (tx, ty), step)"
    cases = [(10, 300, 0, 0), (10, 300, 5, 130), (10, 300, 9, 299), (32_768, 5, 32_767, 4), (32_769, 1, 32_768, 0)]
    cases += [(50_000, 1_000, 40_000, 300), (100_000, 129, 99_999, 128), (70_000, 200, 65_536, 199)]
    for n, m, i, j in cases:
        got = _call(owner, n, m, i, j)
        expected = _owner(n, m, i, j)
        try:
            (bx, by), (tx, ty), step = got
            got = ((int(bx), int(by)), (int(tx), int(ty)), int(step))
        except (TypeError, ValueError) as error:
            raise AssertionError(f"owner{(n, m, i, j)} returned {got!r}, not ((bx, by), (tx, ty), step)") from error
        assert got == expected, (
            f"owner{(n, m, i, j)} = {got}, but out[{i}, {j}] is computed by block {expected[0]}, thread {expected[1]}"
            f", in step {expected[2]} of its loop (gridDim.y is capped at 8192: rows beyond 8192 * 4 wrap around)"
        )


# --- 2. sectors per warp access ----------------------------------------------------------------------------------


def _sectors(byte_addresses):
    return len({a // 32 for a in byte_addresses})


_SECTORS = {
    "out_float32": _sectors(4 * lane for lane in range(32)),  # out[i, j .. j + 31], 4 bytes each
    "out_float64": _sectors(8 * lane for lane in range(32)),
    "boxes2_x1": _sectors(16 * lane for lane in range(32)),  # boxes2[4 * j + 0]: 16 bytes per box
    "boxes1_x1": _sectors(0 for lane in range(32)),  # boxes1[4 * i + 0]: the same i for the whole warp
    "roi_align_out_channel_fastest": _sectors(4 * 49 * lane for lane in range(32)),  # (k, l, p, q): 49 outputs apart
}


def exercise_2(answer):
    assert isinstance(answer, dict), f"answer with a dict of the keys {sorted(_SECTORS)}, got {type(answer).__name__}"
    assert set(answer) == set(_SECTORS), f"the keys must be {sorted(_SECTORS)}, got {sorted(answer)}"
    for key, expected in _SECTORS.items():
        assert answer[key] == expected, (
            f"{key}: {answer[key]} is not right. Count the 32-byte sectors (not 128-byte lines) that the 32 lanes'"
            " addresses fall into; a sector serves every lane whose address lies in it"
        )


# --- 3. the NMS mask kernel's work -------------------------------------------------------------------------------


def _mask_counts(n):
    # csrc/cuda/nms.cu: a grid of T x T blocks (T = ceil(n / 64)); block (x, y) returns at once when x < y; thread t
    # of a working block writes word (64 y + t, x) when 64 y + t < n.
    tiles = math.ceil(n / 64)
    words = sum(min(64, n - 64 * y) * (tiles - y) for y in range(tiles))
    return tiles * tiles, tiles * (tiles + 1) // 2, words


def exercise_3(mask_counts):
    assert callable(mask_counts), "answer with a function mask_counts(n) -> (blocks, working_blocks, words_written)"
    for n in (1, 4, 63, 64, 65, 150, 300, 1000, 20_000):
        got = _call(mask_counts, n)
        expected = _mask_counts(n)
        try:
            got = tuple(int(v) for v in got)
        except TypeError as error:
            raise AssertionError(f"mask_counts({n}) returned {got!r}, not three numbers") from error
        assert got == expected, (
            f"mask_counts({n}) = {got}, expected {expected}: blocks below the diagonal return before writing, and "
            "the last row tile has fewer than 64 rows"
        )


# --- 4. the fixed-point scale --------------------------------------------------------------------------------------


def _scale_exponent(bound):
    # csrc/cuda/roi_align.cu, roi_align_backward_deterministic: frexp(B) gives B < 2^e; S = 62 - e.
    return 62 - math.frexp(bound)[1]


def exercise_4(scale_exponent):
    assert callable(scale_exponent), "answer with a function scale_exponent(bound) -> S"
    for bound in (1.0, 0.75, 256.0, 300.0, 1e-3, 2.0**40, 2.0**40 - 1, 590.409, 3e20):
        got = _call(scale_exponent, bound)
        expected = _scale_exponent(bound)
        assert got == expected, (
            f"scale_exponent({bound!r}) = {got!r}, expected {expected}: S must make B * 2^S < 2^62 (strictly), with "
            "the largest such integer S of the form 62 - e, B < 2^e"
        )
        assert bound * 2.0**got < 2.0**62


# --- 5. occupancy --------------------------------------------------------------------------------------------------


def _blocks_per_sm(threads, registers, shared):
    limits = [2048 // threads, 32, 65536 // (registers * threads)]
    if shared:
        limits.append(228 * 1024 // shared)
    return min(limits)


def exercise_5(blocks_per_sm):
    assert callable(blocks_per_sm), "answer with a function blocks_per_sm(threads, registers, shared_bytes) -> int"
    cases = [(256, 32, 0), (512, 40, 0), (64, 32, 1792), (256, 32, 48 * 1024), (128, 255, 0), (1024, 32, 100_000)]
    cases += [(64, 16, 0), (256, 64, 60_000), (32, 32, 16 * 1024)]
    for threads, registers, shared in cases:
        got = _call(blocks_per_sm, threads, registers, shared)
        expected = _blocks_per_sm(threads, registers, shared)
        assert got == expected, (
            f"blocks_per_sm({threads}, {registers}, {shared}) = {got!r}, expected {expected}: a block fits only if "
            "its threads, its registers and its shared memory all fit, and an SM holds at most 32 blocks"
        )


# --- 6. order matters, for floats only ----------------------------------------------------------------------------


def _float32_sum(values):
    total = torch.zeros((), dtype=torch.float32)
    for v in values:
        total = total + v
    return total


def exercise_6(answer):
    assert isinstance(answer, dict) and {"values", "order_a", "order_b"} <= set(answer), (
        'answer with a dict {"values": [...], "order_a": [...], "order_b": [...]}'
    )
    values = torch.tensor([float(v) for v in answer["values"]], dtype=torch.float32)
    n = len(values)
    assert 2 <= n <= 16, f"give between 2 and 16 values, got {n}"
    assert values.isfinite().all(), "the values must be finite in float32"
    for name in ("order_a", "order_b"):
        order = [int(k) for k in answer[name]]
        assert sorted(order) == list(range(n)), f"{name} must list each index 0..{n - 1} once, got {answer[name]}"
    a = _float32_sum(values[answer["order_a"]])
    b = _float32_sum(values[answer["order_b"]])
    assert not torch.equal(a, b), (
        f"both orders give the float32 sum {a.item()!r}: pick values whose partial sums must round, e.g. a large "
        "one and small ones that vanish next to it"
    )
    bound = values.double().abs().sum().item()
    if bound > 0:  # the fixed point's sums: equal whatever the order (integer addition is associative)
        s = _scale_exponent(bound)
        fixed = [round(v * 2.0**s) for v in values.double().tolist()]
        assert sum(fixed[k] for k in answer["order_a"]) == sum(fixed[k] for k in answer["order_b"])
