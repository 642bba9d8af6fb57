"""Checks for the exercises of chapter 3, RoIAlign (notebooks/03_roi_align.ipynb).

Each `exercise_K(answer)` returns quietly when the answer is right and raises an AssertionError that
says what is wrong otherwise. Values are compared with what minimtl computes (`ops.roi_align`, the
reference's `samples_per_bin`) or with the formulas of the kernels in csrc/; functions are run on hand
cases, edge cases and seeded random inputs. Worked solutions: notebooks/solutions/ch03.py.
"""

import math

import torch

from exercises.common import close_elementwise as _close
from exercises.common import record as _record
from exercises.common import run as _call
from minimtl import ops
from minimtl.ops import reference

# --- exercise 1: RoIPool's backward ------------------------------------------------------------------


def _c_round(v: float) -> int:
    return math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)


def _roi_pool_bins(box, output_size, spatial_scale, height, width):
    """RoIPool's bins as half-open pixel ranges (section 3.2's roi_pool_bins): rows [(r0, r1)], cols [(c0, c1)]."""
    ph, pw = output_size
    x1, y1, x2, y2 = (_c_round(v * spatial_scale) for v in box)
    roi_w, roi_h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)

    def edges(start, size, bins, limit):
        def clip(v):
            return min(max(v, 0), limit)

        return [
            (clip(start + math.floor(p * size / bins)), clip(start + math.ceil((p + 1) * size / bins)))
            for p in range(bins)
        ]

    return edges(y1, roi_h, ph, height), edges(x1, roi_w, pw, width)


def _roi_pool_backward(feature, box, output_size, grad, spatial_scale=1.0):
    """Each output's gradient to the first maximum (row-major) of its bin, as torchvision's kernels. -> (C, H, W)"""
    channels, height, width = feature.shape
    rows, cols = _roi_pool_bins(box, output_size, spatial_scale, height, width)
    out = torch.zeros_like(feature)
    for p, (r0, r1) in enumerate(rows):
        for q, (c0, c1) in enumerate(cols):
            if r1 <= r0 or c1 <= c0:
                continue  # an empty bin: output 0, no gradient
            flat = feature[:, r0:r1, c0:c1].reshape(channels, -1).argmax(dim=1)  # (C,): the first maximum
            index = (torch.arange(channels), r0 + flat // (c1 - c0), c0 + flat % (c1 - c0))
            out.index_put_(index, grad[:, p, q], accumulate=True)
    return out


def exercise_1(roi_pool_backward) -> None:
    """roi_pool_backward(feature (C, H, W), box (x1, y1, x2, y2), output_size (ph, pw), grad (C, ph, pw),
    spatial_scale) -> the gradient with respect to the feature, (C, H, W)."""
    g = torch.Generator().manual_seed(1)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    cases = [  # (name, map (C, H, W), box, (ph, pw), spatial_scale)
        ("a constant map (every pixel of a bin ties)", torch.ones(2, 6, 7, dtype=torch.float64),
         (0.6, 1.2, 5.3, 4.4), (2, 3), 1.0),
        ("a map of 0s, 1s and 2s (many ties)", torch.randint(0, 3, (3, 9, 11), generator=g).double(),
         (1.0, 0.5, 9.7, 8.2), (3, 3), 1.0),
        ("a random map, the box partly off it", randn(2, 12, 12), (-3.0, 4.2, 20.5, 26.0), (3, 3), 0.5),
        ("a random map, 2 x 4 bins", randn(2, 12, 12), (2.2, 3.1, 9.5, 8.4), (2, 4), 1.0),
        ("a box smaller than a bin per output", randn(1, 5, 5), (1.2, 1.4, 1.6, 2.1), (3, 2), 1.0),
    ]  # fmt: skip
    for name, feature, box, output_size, scale in cases:
        grad = torch.randn(feature.shape[0], *output_size, generator=g, dtype=torch.float64)
        got = _call(1, "roi_pool_backward", roi_pool_backward, feature, box, output_size, grad, scale)
        expected = _roi_pool_backward(feature, box, output_size, grad, scale)
        what = f"the gradient on {name} (each output's goes to the first maximum of its bin, row by row)"
        _close(1, what, got, expected, atol=1e-12)


# --- exercise 2: why stretch? ----------------------------------------------------------------------

BOX_X = (100.0, 103.0)  # a 3-pixel box, x1 and x2 in image pixels
STRIDE = 16


def _sample_xs(aligned: bool) -> list[float]:
    """The sample x of each of 7 bins (sampling_ratio 1) from ops.roi_align on the map F[y, x] = x."""
    x_map = torch.arange(16, dtype=torch.float64).repeat(12, 1)[None, None]  # (1, 1, 12, 16): pixel (y, x) holds x
    roi = torch.tensor([[0.0, BOX_X[0], BOX_X[0], BOX_X[1], BOX_X[1]]], dtype=torch.float64)
    out = ops.roi_align(x_map, roi, 7, 1 / STRIDE, 1, aligned)  # linear interpolation of x is exact
    return out[0, 0, 0].tolist()


def exercise_2(answer) -> None:
    """answer: {"stretched", "not_stretched", "aligned": the 7 sample x of each; "best": one of those three names}."""
    names = ("stretched", "not_stretched", "aligned")
    answer = _record(2, answer, {*names, "best"})
    x1, x2 = BOX_X[0] / STRIDE, BOX_X[1] / STRIDE
    expected = {
        "stretched": _sample_xs(aligned=False),
        "not_stretched": [x1 + (q + 0.5) * (x2 - x1) / 7 for q in range(7)],
        "aligned": _sample_xs(aligned=True),
    }
    for name in names:
        got = answer[name]
        got = got.tolist() if torch.is_tensor(got) else list(got)
        assert len(got) == 7 and all(abs(a - b) < 1e-6 for a, b in zip(got, expected[name], strict=True)), (
            f"exercise 2: the samples {name} sit at x = {[round(v, 4) for v in expected[name]]} (interpolation "
            f"coordinates: pixel i's value at i), got {got}"
        )
    assert answer["best"] in names, f"exercise 2: best should be one of {names}, got {answer['best']!r}"
    assert answer["best"] == "aligned", (
        f"exercise 2: the box covers map positions [{x1}, {x2}], i.e. interpolation coordinates "
        f"[{x1 - 0.5}, {x2 - 0.5}]: which samples fall there? Not the {answer['best']} ones"
    )


# --- exercise 3: the cost of a huge box --------------------------------------------------------------

FEW_SAMPLES = 64  # kFewSamples in csrc/roi_align_math.h


def _sample_range(start: float, bin_size: float, p: int, grid: int, size: int) -> tuple[int, int]:
    """csrc/roi_align_math.h's sample_range, in Python floats (doubles): [first, last) of the visited samples."""
    if grid <= FEW_SAMPLES:
        return 0, grid
    step, base = bin_size / grid, start + p * bin_size
    if not (0 < step < math.inf and -math.inf < base < math.inf):
        return 0, 0
    lo = max(math.ceil((-1.0 - base) / step - 0.5) - 1.0, 0.0)
    hi = min(math.floor((size - base) / step - 0.5) + 2.0, float(grid))
    return int(lo), int(hi) if hi > lo else int(lo)


def exercise_3(answer) -> None:
    """answer: {"per_bin": samples per bin, "without_range": samples visited in all, "visited": minimtl's count}."""
    answer = _record(3, answer, {"per_bin", "without_range", "visited"})
    box, scale, bins, size = (0.0, 0.0, 1e6, 100.0), 1 / 16, 7, 50
    offset = 0.5  # aligned=True
    x1, y1, x2, y2 = (v * scale - offset for v in box)
    roi_w, roi_h = x2 - x1, y2 - y1
    gw = reference.samples_per_bin(torch.tensor(roi_w, dtype=torch.float64), bins, -1)
    gh = reference.samples_per_bin(torch.tensor(roi_h, dtype=torch.float64), bins, -1)
    per_bin = gh * gw
    assert answer["per_bin"] == per_bin, (
        f"exercise 3: the box is {roi_w:g} x {roi_h:g} map pixels, 7 bins each way: ceil({roi_w / bins:.2f}) = {gw} "
        f"samples per bin along x and ceil({roi_h / bins:.3f}) = {gh} along y, {per_bin} per bin; got "
        f"{answer['per_bin']!r}"
    )
    assert answer["without_range"] == bins * bins * per_bin, (
        f"exercise 3: all 49 bins visit all their samples: {bins * bins * per_bin}, got {answer['without_range']!r}"
    )
    visited = 0
    for p in range(bins):
        first_y, last_y = _sample_range(y1, roi_h / bins, p, gh, size)
        for q in range(bins):
            first_x, last_x = _sample_range(x1, roi_w / bins, q, gw, size)
            visited += (last_y - first_y) * (last_x - first_x)
    assert answer["visited"] == visited, (
        f"exercise 3: with sample_range minimtl visits {visited} samples in all (per bin: the range [first, last) "
        f"along x times the {gh} along y; the range is widened by one sample on each side), got {answer['visited']!r}"
    )


# --- exercise 4: other deterministic backwards ---------------------------------------------------------

# The benchmark's configuration (minimtl.bench.ops.roi_align_cases, section 3.11).
IMAGES, CHANNELS, MAP_SIZE, ROIS, OUTPUT, SAMPLING_RATIO = 2, 256, 100, 512, 7, 2


def _fixed_point_step(bound: float) -> float:
    """2^-S, with S = 62 - e and B < 2^e (std::frexp), as roi_align_backward_deterministic chooses it."""
    _, exponent = math.frexp(bound)
    return math.ldexp(1.0, -(62 - exponent))


def exercise_4(answer) -> None:
    """answer: {"atomic_adds", "gather_pairs", "sort_bytes", "fixed_point_step"} for the benchmark's configuration."""
    answer = _record(4, answer, {"atomic_adds", "gather_pairs", "sort_bytes", "fixed_point_step"})
    taps = ROIS * CHANNELS * OUTPUT * OUTPUT * SAMPLING_RATIO**2 * 4  # 4 bilinear taps per sample
    assert answer["atomic_adds"] == taps, (
        f"exercise 4: {ROIS} RoIs x {CHANNELS} channels x {OUTPUT * OUTPUT} bins x {SAMPLING_RATIO**2} samples x 4 "
        f"taps = {taps:,} atomicAdds, got {answer['atomic_adds']!r}"
    )
    pairs = IMAGES * CHANNELS * MAP_SIZE * MAP_SIZE * (ROIS // IMAGES)
    assert answer["gather_pairs"] == pairs, (
        f"exercise 4: {IMAGES * CHANNELS * MAP_SIZE**2:,} map elements, each looping over the {ROIS // IMAGES} RoIs "
        f"of its image: {pairs:,} (element, RoI) pairs, got {answer['gather_pairs']!r}"
    )
    record = torch.empty((), dtype=torch.int64).element_size() + torch.empty((), dtype=torch.float32).element_size()
    assert answer["sort_bytes"] == taps * record, (
        f"exercise 4: one (int64 index, float32 value) record of {record} bytes per contribution: "
        f"{taps * record:,} bytes, got {answer['sort_bytes']!r}"
    )
    step = _fixed_point_step(1e6)
    assert isinstance(answer["fixed_point_step"], float) and answer["fixed_point_step"] == step, (
        f"exercise 4: for B = 10^6 < 2^{math.frexp(1e6)[1]}, S = {62 - math.frexp(1e6)[1]} and the step is "
        f"2^-{62 - math.frexp(1e6)[1]} = {step:.4g} (B * 2^-62 = {1e6 * 2**-62:.4g} is only its size), got "
        f"{answer['fixed_point_step']!r}"
    )


# --- exercise 5: bilinear vs nearest --------------------------------------------------------------------


def _nearest_interpolate(feature, ys, xs):
    """The nearest pixel, with reference.bilinear_interpolate's edge rules. (C, H, W), (P,), (Q,) -> (C, P, Q)"""
    _, h, w = feature.shape

    def nearest(coords, size):
        inside = (coords >= -1) & (coords <= size)  # NaN: False
        c = torch.where(inside, coords, 0).clamp(min=0)  # [-1, 0): the first pixel
        return torch.floor(c + 0.5).clamp(max=size - 1).long(), inside  # halves round up

    rows, inside_y = nearest(ys, h)
    cols, inside_x = nearest(xs, w)
    values = feature[:, rows[:, None], cols[None, :]]  # (C, P, Q)
    return torch.where(inside_y[:, None] & inside_x[None, :], values, 0)


_EXERCISE_5 = {
    "A": "bilinear's error does not go to 0 on this map: as g grows it tends to the exact average of the bilinear "
    "surface built from the pixels, which is not f's average; and nearest's error does fall, slowly",
    "B": None,
    "C": "on this smooth map nearest's error is the larger one at every small g: at g = 1 or 2 it is several times "
    "bilinear's",
}


def exercise_5(answer) -> None:
    """answer: {"nearest_interpolate": fn(feature, ys, xs) -> (C, P, Q), "explanation": "A", "B" or "C"}."""
    answer = _record(5, answer, {"nearest_interpolate", "explanation"})
    g = torch.Generator().manual_seed(5)
    feature = torch.randn(2, 5, 6, generator=g, dtype=torch.float64)  # (C, H, W)
    edges = [-1.5, -1.0, -0.5, 0.0, 0.49, 0.5, 1.5, 2.5, 3.7, 4.0, 4.5, 5.0, 5.5, 6.0, 6.01, 7.0, math.nan]
    ys = torch.tensor(edges + (torch.rand(10, generator=g) * 8 - 1.5).tolist(), dtype=torch.float64)
    xs = torch.tensor(edges[::-1] + (torch.rand(12, generator=g) * 9 - 1.5).tolist(), dtype=torch.float64)
    got = _call(5, "nearest_interpolate", answer["nearest_interpolate"], feature, ys, xs)
    expected = _nearest_interpolate(feature, ys, xs)
    assert torch.is_tensor(got) and got.shape == expected.shape, (
        f"exercise 5: nearest_interpolate should return (C, P, Q) = {tuple(expected.shape)}, got "
        f"{tuple(got.shape) if torch.is_tensor(got) else got!r}"
    )
    wrong = (got != expected).any(dim=0).nonzero().tolist()
    assert not wrong, (
        f"exercise 5: nearest_interpolate differs at (y, x) = "
        f"{[(ys[i].item(), xs[j].item()) for i, j in wrong[:4]]}: read pixel floor(c + 0.5), clamped to the map, "
        "with bilinear_interpolate's edge rules (beyond [-1, size]: 0; [-1, 0): the first pixel)"
    )
    choice = answer["explanation"]
    assert choice in _EXERCISE_5, f"exercise 5: explanation should be one of {sorted(_EXERCISE_5)}, got {choice!r}"
    assert _EXERCISE_5[choice] is None, f"exercise 5: not {choice}: {_EXERCISE_5[choice]}"


# --- exercise 6: channels-last on CUDA -------------------------------------------------------------------


def exercise_6(answer) -> None:
    """answer: {"thread_to_output": fn(index, K, C, ph, pw) -> (k, c, p, q), "write_stride": elements}."""
    answer = _record(6, answer, {"thread_to_output", "write_stride"})
    k_rois, channels, ph, pw = 2, 70, 3, 2
    outputs = []
    for i in range(k_rois * channels * ph * pw):
        out = _call(6, f"thread_to_output({i}, ...)", answer["thread_to_output"], i, k_rois, channels, ph, pw)
        outputs.append(tuple(int(v) for v in out))
    every = {(k, c, p, q) for k in range(k_rois) for c in range(channels) for p in range(ph) for q in range(pw)}
    assert set(outputs) == every and len(outputs) == len(every), (
        "exercise 6: thread_to_output should give every output element (k, c, p, q) to exactly one thread"
    )
    for i, (k, c, p, q) in enumerate(outputs):
        first = outputs[i - i % channels]
        assert c == i % channels and (k, p, q) == (first[0], first[2], first[3]), (
            f"exercise 6: threads {i - 1} and {i} own {outputs[i - 1] if i else None} and {(k, c, p, q)}: for "
            "coalesced reads of an NHWC map, consecutive threads should own consecutive channels c of one (k, p, q), "
            "whose taps are contiguous in memory"
        )
    stride = torch.empty(1, 256, OUTPUT, OUTPUT).stride(1)  # NCHW: from channel c to c + 1 of one (k, p, q)
    assert answer["write_stride"] == stride, (
        f"exercise 6: in the NCHW output, out[k, c + 1, p, q] lies ph * pw = {stride} elements after out[k, c, p, q] "
        f"(7 x 7 bins), got {answer['write_stride']!r}"
    )
