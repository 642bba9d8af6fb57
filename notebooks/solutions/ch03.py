"""Worked solutions to the exercises of chapter 3, RoIAlign (notebooks/03_roi_align.ipynb).

Each `exercise_K` is the answer in the form `exercises.ch03.exercise_K` takes; the reasoning is in the
comments and docstrings. `MISTAKES` holds a plausible wrong answer per exercise, which the check rejects.
Try the exercise before you read on.
"""

import math

import torch

from minimtl.ops import reference


# --- Exercise 1 ----------------------------------------------------------------------------------
def c_round(v):
    """C's round(): halves away from zero (section 3.2)."""
    return math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)


def roi_pool_bins(box, output_size, spatial_scale, height, width):
    """Section 3.2's teaching toy: RoIPool's bins as half-open pixel ranges, [(r0, r1)] * ph, [(c0, c1)] * pw."""
    ph, pw = output_size
    x1, y1, x2, y2 = (c_round(v * spatial_scale) for v in box)
    roi_w, roi_h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)

    def edges(start, size, bins, limit):
        def clip(v):
            return min(max(v, 0), limit)

        return [
            (clip(start + math.floor(p * size / bins)), clip(start + math.ceil((p + 1) * size / bins)))
            for p in range(bins)
        ]

    return edges(y1, roi_h, ph, height), edges(x1, roi_w, pw, width)


def roi_pool_with_argmax(feature, box, output_size, spatial_scale=1.0):
    """RoIPool of one box, (C, H, W) -> values (C, ph, pw) and the flat index y * W + x of each maximum.

    The maximum of a bin is its *first* maximum in row-major order: torchvision's kernels scan the bin
    row by row and replace the running maximum only when a value is strictly greater. An empty bin has
    value 0 and argmax -1.
    """
    channels, height, width = feature.shape
    rows, cols = roi_pool_bins(box, output_size, spatial_scale, height, width)
    values = feature.new_zeros(channels, len(rows), len(cols))
    argmax = torch.full((channels, len(rows), len(cols)), -1, dtype=torch.long)
    for p, (r0, r1) in enumerate(rows):
        for q, (c0, c1) in enumerate(cols):
            if r1 > r0 and c1 > c0:
                flat = feature[:, r0:r1, c0:c1].reshape(channels, -1)
                best = flat.argmax(dim=1)  # (C,): torch.argmax returns the first maximum
                values[:, p, q] = flat.gather(1, best[:, None])[:, 0]
                argmax[:, p, q] = (r0 + best // (c1 - c0)) * width + c0 + best % (c1 - c0)
    return values, argmax


def roi_pool_backward(feature, box, output_size, grad, spatial_scale=1.0):
    """d loss / d feature, (C, H, W): each output's gradient goes entirely to its argmax pixel.

    The forward picks one input per output, so the output is that input, and the gradient is 1 there
    and 0 elsewhere. On a tie the maximum is not differentiable; the kernels' convention (the first
    maximum) gives the whole gradient to one pixel, while the autograd of `amax` splits it evenly among
    the tied pixels: the two agree except on ties. Overlapping bins (RoIPool's can share a row or a
    column) add their gradients.

    The staircase of section 3.2 as a function of the box's position is piecewise constant: its
    derivative is 0 almost everywhere and undefined at the jumps. RoIPool gives no gradient with
    respect to the box (torchvision's roi_pool does not even try), which is one more reason RoIAlign,
    piecewise linear in the box, replaced it.
    """
    _, argmax = roi_pool_with_argmax(feature, box, output_size, spatial_scale)
    out = torch.zeros_like(feature).flatten(1)  # (C, H * W)
    found = argmax >= 0  # empty bins send nothing
    channel = torch.arange(feature.shape[0])[:, None, None].expand_as(argmax)
    out.index_put_((channel[found], argmax[found]), grad[found].to(out.dtype), accumulate=True)
    return out.view_as(feature)


exercise_1 = roi_pool_backward

# --- Exercise 2 ----------------------------------------------------------------------------------
# The box x in [100, 103] on a stride-16 map is [6.25, 6.4375]: 0.1875 map pixels wide. One sample per
# bin sits at the bin's centre, x1_hat + (q + 1/2) * width / 7, in interpolation coordinates (pixel i's
# value at i):
# * aligned=False, stretched: x1_hat = 6.25, width max(0.1875, 1) = 1: 6.32 ... 7.18. The samples cover
#   a whole pixel, half a pixel to the right of the box: the feature mostly describes pixel 6 and 7's
#   neighbourhood, not the box.
# * aligned=False, not stretched: 6.26 ... 6.42. Inside the box's extent in map positions, but read at
#   interpolation coordinates, i.e. half a pixel to the right of where the box is.
# * aligned=True: x1_hat = 5.75, width 0.1875: 5.76 ... 5.93 = the box's map positions [6.25, 6.4375]
#   minus the half pixel: exactly the box. This one describes the box best.
# aligned=True can drop the stretch because it is the exact continuous model: a box of any positive
# size, however small, has its samples inside it, and a tiny box simply reads a nearly constant
# interpolated value. The stretch was a remnant of RoIPool's integer "+ 1" (a box from pixel x1 to x2
# inclusive covers x2 - x1 + 1 pixels), which made sense for rounded, inclusive pixel ranges only.
X1, X2, BINS = 100 / 16, 103 / 16, 7
exercise_2 = {
    "stretched": [X1 + (q + 0.5) * max(X2 - X1, 1.0) / BINS for q in range(BINS)],
    "not_stretched": [X1 + (q + 0.5) * (X2 - X1) / BINS for q in range(BINS)],
    "aligned": [X1 - 0.5 + (q + 0.5) * (X2 - X1) / BINS for q in range(BINS)],
    "best": "aligned",
}


# --- Exercise 3 ----------------------------------------------------------------------------------
def sample_range(start, bin_size, p, grid, size, few=64):
    """csrc/roi_align_math.h's sample_range in Python (floats are doubles, as in the C++): the samples
    [first, last) of bin p that can land in [-1, size], widened by one on each side against rounding."""
    if grid <= few:
        return 0, grid
    step, base = bin_size / grid, start + p * bin_size
    if not (0 < step < math.inf and -math.inf < base < math.inf):
        return 0, 0
    lo = max(math.ceil((-1.0 - base) / step - 0.5) - 1.0, 0.0)
    hi = min(math.floor((size - base) / step - 0.5) + 2.0, float(grid))
    return int(lo), int(hi) if hi > lo else int(lo)


# The box (0, 0, 10^6, 100) at stride 16, aligned=True: x from -0.5 to 62,499.5 (62,500 map pixels), y
# from -0.5 to 5.75 (6.25). 7 bins each: ceil(62,500 / 7) = ceil(8,928.57) = 8,929 samples per bin along
# x, ceil(0.89) = 1 along y: 8,929 per bin, and 49 x 8,929 = 437,521 for the RoI, per channel. (On a
# bigger box the adaptive grid is capped at 2^30 per side: 2^60 samples per bin, which would never
# finish.) With sample_range, only bin column q = 0 has samples near the 50 x 50 map: x = -0.5 +
# (j + 1/2) * 0.99995 lands in [-1, 50] for j = 0 .. 50 (51 samples), the range widened by one is
# [0, 52), 52 visited per bin row; the y grid (1 sample) is visited whole: 7 x 52 = 364 samples. The
# reference computes all 437,521 (x 4 gathers), one RoI at a time: time it on boxes 10^3, 10^4, 10^5
# pixels wide and it grows linearly, while ops.roi_align stays flat.
def _huge_box_counts():
    bins, size, scale = 7, 50, 1 / 16
    x1, y1, x2, y2 = (v * scale - 0.5 for v in (0.0, 0.0, 1e6, 100.0))
    gw = reference.samples_per_bin(torch.tensor(x2 - x1, dtype=torch.float64), bins, -1)
    gh = reference.samples_per_bin(torch.tensor(y2 - y1, dtype=torch.float64), bins, -1)
    visited = 0
    for p in range(bins):
        first_y, last_y = sample_range(y1, (y2 - y1) / bins, p, gh, size)
        for q in range(bins):
            first_x, last_x = sample_range(x1, (x2 - x1) / bins, q, gw, size)
            visited += (last_y - first_y) * (last_x - first_x)
    return {"per_bin": gh * gw, "without_range": bins * bins * gh * gw, "visited": visited}


exercise_3 = _huge_box_counts()

# --- Exercise 4 ----------------------------------------------------------------------------------
# The benchmark: K = 512 RoIs on N = 2 images of C = 256 channels, 100 x 100, 7 x 7 bins, 2 x 2 samples.
# atomicAdd backward: every output hands its gradient to 4 samples x 4 taps:
#     512 x 256 x 49 x 16 = 102,760,448 atomicAdds (fewer where samples fall off the map).
# (a) Gather: one thread per map element (n, c, y, x), 2 x 256 x 100 x 100 = 5,120,000 threads, each
#     looping over the 256 RoIs of its image in a fixed order and adding the taps that land on it:
#     1,310,720,000 (element, RoI) pairs, 13x the scatter's work, mostly to find that a RoI does not
#     touch the pixel (a spatial index, RoIs bucketed by the map tiles they cover, cuts that). No extra
#     memory, no atomics, and each thread adds in a fixed order: deterministic in float.
# (b) Sort: write every contribution with its target index, (int64, float32) = 12 bytes, 102,760,448
#     of them: 1,233,125,376 bytes (1.2 GB, against a 20 MB gradient), then a radix sort of 10^8 keys
#     and a segmented sum: several passes over 1.2 GB, and the sort must be stable for the sums to be
#     deterministic. atomicAdd needs no extra memory and one pass.
# Fixed point: S = 62 - e with B < 2^e. For B = 10^6 < 2^20, S = 42: every contribution is rounded to a
# multiple of 2^-42 ≈ 2.3e-13. The sum is exact to that absolute step, whatever the pixel's own size. A
# float sum is exact *relative* to the pixel's own magnitude. So the fixed-point sum loses where one huge
# gradient elsewhere makes B large and a pixel only receives tiny contributions: with one output
# gradient of 10^6 and the others about 10^-12, those pixels come out as 0 or 2^-42 multiples, while a
# float32 sum keeps them to 7 digits.
_, _EXPONENT = math.frexp(1e6)
exercise_4 = {
    "atomic_adds": 512 * 256 * 7 * 7 * 2 * 2 * 4,
    "gather_pairs": 2 * 256 * 100 * 100 * (512 // 2),
    "sort_bytes": 512 * 256 * 7 * 7 * 2 * 2 * 4 * (8 + 4),
    "fixed_point_step": math.ldexp(1.0, -(62 - _EXPONENT)),
}


# --- Exercise 5 ----------------------------------------------------------------------------------
def nearest_interpolate(feature, ys, xs):
    """The map at the nearest pixel of each point (ys[i], xs[j]). (C, H, W), (P,), (Q,) -> (C, P, Q).

    The edge rules are bilinear_interpolate's: a point beyond [-1, size] (or NaN) reads 0, a point in
    [-1, 0) reads the first pixel, a point past the last pixel reads the last. The nearest pixel of c
    is floor(c + 1/2) (halves round up; torch.round would round them to even).
    """
    _, h, w = feature.shape

    def nearest(coords, size):
        inside = (coords >= -1) & (coords <= size)
        c = torch.where(inside, coords, 0).clamp(min=0)
        return torch.floor(c + 0.5).clamp(max=size - 1).long(), inside

    rows, inside_y = nearest(ys, h)
    cols, inside_x = nearest(xs, w)
    values = feature[:, rows[:, None], cols[None, :]]  # (C, P, Q)
    return torch.where(inside_y[:, None] & inside_x[None, :], values, 0)


def bin_average_errors(interpolate, sampling_ratios=(1, 2, 4, 8, 16, 32, 64), boxes=20, seed=0):
    """Mean |RoIAlign bin - exact average of f over the bin| for f(x, y) = sin(x/3) cos(y/5) on a 32 x 32 map,
    4 x 4 bins, aligned=True, with `interpolate` reading the map. Returns {sampling_ratio: error}.

    Measured with bilinear_interpolate, the error is 0.009 at g = 1, 0.002 at g = 2, then settles at
    0.004 from g = 4 on; with nearest_interpolate it falls slowly, 0.044, 0.029, 0.017, 0.010, 0.006, and
    levels off at about 0.005 from g = 32. Neither reaches 0: as g grows, each tends to the exact average
    of *its own* surface built from the pixels (piecewise bilinear, or piecewise constant), and both
    surfaces differ from f by an interpolation error (the pixels sample f only at integer points).
    Bilinear gets there with a couple of samples because its surface is continuous (the midpoint rule
    converges like 1/g^2 on it); nearest's surface jumps at every pixel boundary, and a grid of samples
    places each jump only to within a sample spacing: an error roughly like 1/g. (At g = 2 bilinear
    is briefly below its floor: errors of opposite sign cancel by luck.)
    """
    g = torch.Generator().manual_seed(seed)
    size, bins = 32, 4
    pixels = torch.arange(size, dtype=torch.float64)
    yy, xx = torch.meshgrid(pixels, pixels, indexing="ij")
    feature = (torch.sin(xx / 3) * torch.cos(yy / 5))[None]  # (1, H, W): pixel (y, x) holds f(x, y)

    def exact(a, b, c, d):  # the average of f over [a, b] x [c, d], in closed form
        return (3 * (math.cos(a / 3) - math.cos(b / 3)) / (b - a)) * (5 * (math.sin(d / 5) - math.sin(c / 5)) / (d - c))

    errors = {ratio: 0.0 for ratio in sampling_ratios}
    for _ in range(boxes):
        x1, x2 = sorted((torch.rand(2, generator=g) * 20 + 3).tolist())
        y1, y2 = sorted((torch.rand(2, generator=g) * 20 + 3).tolist())
        x1, y1, x2, y2 = x1 - 0.5, y1 - 0.5, x2 + 4 - 0.5, y2 + 4 - 0.5  # at least 4 pixels; aligned=True
        bw, bh = (x2 - x1) / bins, (y2 - y1) / bins
        truth = torch.tensor(
            [[exact(x1 + q * bw, x1 + (q + 1) * bw, y1 + p * bh, y1 + (p + 1) * bh) for q in range(bins)]
             for p in range(bins)],
            dtype=torch.float64,
        )  # fmt: skip
        for ratio in sampling_ratios:
            steps = (torch.arange(ratio, dtype=torch.float64) + 0.5) / ratio
            ys = (y1 + (torch.arange(bins)[:, None] + steps[None, :]) * bh).flatten()  # (bins * ratio,)
            xs = (x1 + (torch.arange(bins)[:, None] + steps[None, :]) * bw).flatten()
            values = interpolate(feature, ys, xs)[0].reshape(bins, ratio, bins, ratio).mean(dim=(1, 3))
            errors[ratio] += (values - truth).abs().mean().item() / boxes
    return errors


exercise_5 = {"nearest_interpolate": nearest_interpolate, "explanation": "B"}


# --- Exercise 6 ----------------------------------------------------------------------------------
def thread_to_output(index, rois, channels, ph, pw):
    """Thread `index` owns output (k, c, p, q), with the channel fastest.

    On an NHWC map the C values of one pixel are contiguous, and all channels of one (k, p, q) use the
    same samples, taps and weights. So a warp of 32 threads on channels c .. c + 31 of the same bin
    reads 32 consecutive values per tap: coalesced, one or two 128-byte transactions, and the geometry
    could even be computed once per warp. The writes into the NCHW output are then strided: out[k, c,
    p, q] and out[k, c + 1, p, q] are ph * pw = 49 elements (196 bytes in float32) apart, so a warp's
    32 writes touch 32 different cache lines. Each output is written once, against 4 taps x 4 samples
    read, so this costs less than uncoalesced reads would; or stage a block's outputs in shared memory
    and write them out in NCHW order, or return an NHWC output.
    """
    c = index % channels
    rest = index // channels
    q, rest = rest % pw, rest // pw
    p, k = rest % ph, rest // ph
    return k, c, p, q


exercise_6 = {"thread_to_output": thread_to_output, "write_stride": 7 * 7}


# --- Mistakes the checks must reject ---------------------------------------------------------------
def _amax_backward(feature, box, output_size, grad, spatial_scale=1.0):
    """autograd through the toy's amax: splits a tie's gradient evenly instead of giving it to one pixel."""
    x = feature.detach().clone().requires_grad_()
    rows, cols = roi_pool_bins(box, output_size, spatial_scale, x.shape[1], x.shape[2])
    out = []
    for r0, r1 in rows:
        for c0, c1 in cols:
            out.append(x[:, r0:r1, c0:c1].amax(dim=(1, 2)) if r1 > r0 and c1 > c0 else x.new_zeros(x.shape[0]))
    (torch.stack(out, dim=1) * grad.flatten(1)).sum().backward()
    return x.grad


def _rounded_to_even(feature, ys, xs):
    """torch.round: 0.5 -> 0 and 2.5 -> 2, where floor(c + 0.5) gives 1 and 3."""
    _, h, w = feature.shape

    def nearest(coords, size):
        inside = (coords >= -1) & (coords <= size)
        return torch.where(inside, coords, 0).clamp(min=0).round().clamp(max=size - 1).long(), inside

    rows, inside_y = nearest(ys, h)
    cols, inside_x = nearest(xs, w)
    return torch.where(inside_y[:, None] & inside_x[None, :], feature[:, rows[:, None], cols[None, :]], 0)


def _nchw_order(index, rois, channels, ph, pw):
    """The forward kernel's order (q fastest): good for NCHW, uncoalesced reads from an NHWC map."""
    q = index % pw
    p = index // pw % ph
    c = index // (pw * ph) % channels
    return index // (pw * ph * channels), c, p, q


MISTAKES = {
    1: _amax_backward,
    2: {**exercise_2, "aligned": exercise_2["not_stretched"], "best": "stretched"},  # forgot the half pixel
    3: {**exercise_3, "visited": 7 * 51},  # only the samples that land on the map, not the widened range
    4: {**exercise_4, "fixed_point_step": 1e6 * 2.0**-62},  # the chapter's approximation B * 2^-62
    5: {"nearest_interpolate": _rounded_to_even, "explanation": "A"},
    6: {"thread_to_output": _nchw_order, "write_stride": 1},
}
