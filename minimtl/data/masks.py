"""COCO's mask formats, decoded by minimtl itself: polygons and run-length encodings (RLE).

* RLE: a mask read column by column (Fortran order) as alternating runs of 0s and 1s, starting with
  0s: [3, 2, 4] is 0 0 0 1 1 0 0 0 0. "Uncompressed" RLE keeps the runs as a list of numbers;
  "compressed" RLE (COCO's string form) stores each run as the difference to the run two before,
  in 5-bit groups, each written as a character: 6 bits per character, the 0x20 bit meaning "more
  groups follow", the 0x10 bit of the last group the sign; ASCII 48 is added to keep it printable.
* Polygons: lists of x, y vertices in pixel coordinates. They are rasterised the way the cocoapi
  does (so that a polygon gives the very same pixels as in pycocotools): the outline is traced on
  a 5x upsampled grid, the points where it crosses a column's pixel centre are collected, and each
  column is filled between consecutive crossings. A pixel is inside when its centre is.

Writing: encode_rle(mask) gives COCO's compressed form {"size": [H, W], "counts": str}, the very string
pycocotools.mask.encode writes. check_segmentation validates a segmentation without rasterising it
(cheap enough to run on every annotation of a file before training starts).

Shapes: a mask is (H, W), bool. Several polygons (or RLEs) of one object are merged by union.
"""

import numbers

import numpy as np


def rle_counts_from_string(s: str | bytes) -> list[int]:
    """The runs of a compressed RLE string."""
    s = s.decode("ascii") if isinstance(s, bytes) else s
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            if p >= len(s):
                raise ValueError("RLE string ends in the middle of a number")
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)  # negative: extend the sign
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_counts_to_string(counts: list[int]) -> str:
    """A compressed RLE string from runs (the inverse of rle_counts_from_string)."""
    out = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr((c | (0x20 if more else 0)) + 48))
    return "".join(out)


def rle_decode(counts: list[int], height: int, width: int) -> np.ndarray:
    """An (H, W) bool mask from RLE runs (column-major, starting with 0s)."""
    counts = _check_runs(np.asarray(counts, dtype=np.int64), height, width)
    values = np.arange(len(counts)) % 2 == 1  # 0s, 1s, 0s, ...
    return np.repeat(values, counts).reshape(width, height).T


def _check_runs(counts: np.ndarray, height: int, width: int) -> np.ndarray:
    """RLE runs (int64) that can make an (H, W) mask: none negative, summing to H * W."""
    if (counts < 0).any():
        raise ValueError(f"RLE runs must not be negative, got {int(counts.min())}")
    if counts.sum() != height * width:
        raise ValueError(f"RLE runs sum to {int(counts.sum())}, not height * width = {height * width}")
    return counts


def rle_encode(mask: np.ndarray) -> list[int]:
    """The RLE runs of an (H, W) mask, column-major, starting with (possibly zero) 0s."""
    flat = np.asarray(mask, dtype=bool).T.reshape(-1)
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat.size and flat[0] else runs


def encode_rle(mask: np.ndarray) -> dict:
    """COCO's compressed RLE of an (H, W) bool mask: {"size": [H, W], "counts": str}."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"encode_rle: mask must be an (H, W) array, got shape {mask.shape}")
    if mask.dtype != bool:
        # no silent threshold: a float mask of probabilities would need one, and 0 vs 0.5 matters
        raise ValueError(f"encode_rle: mask must be a bool array (e.g. probs > 0.5), got {mask.dtype}")
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": rle_counts_to_string(rle_encode(mask))}


def polygon_to_mask(polygon: list[float], height: int, width: int) -> np.ndarray:
    """Rasterise one polygon [x0, y0, x1, y1, ...] exactly as the cocoapi does. (H, W) bool."""
    xy = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    scale = 5.0
    # 1. vertices on a 5x finer integer grid (rounded half up, as C's (int)(v + .5) for v >= 0)
    x = np.append((scale * xy[:, 0] + 0.5).astype(np.int64), 0)
    y = np.append((scale * xy[:, 1] + 0.5).astype(np.int64), 0)
    x[-1], y[-1] = x[0], y[0]
    # 2. every grid point along every edge, stepping along the edge's longer axis
    us, vs = [], []
    for j in range(len(xy)):
        xs, xe, ys, ye = x[j], x[j + 1], y[j], y[j + 1]
        dx, dy = abs(xe - xs), abs(ys - ye)
        flip = (dx >= dy and xs > xe) or (dx < dy and ys > ye)
        if flip:
            xs, xe, ys, ye = xe, xs, ye, ys
        if dx >= dy:
            s = (ye - ys) / dx if dx else 0.0
            t = np.arange(dx + 1)
            t = dx - t if flip else t
            us.append(t + xs)
            vs.append((ys + s * t + 0.5).astype(np.int64))
        else:
            s = (xe - xs) / dy
            t = np.arange(dy + 1)
            t = dy - t if flip else t
            vs.append(t + ys)
            us.append((xs + s * t + 0.5).astype(np.int64))
    u, v = np.concatenate(us), np.concatenate(vs)
    # 3. where the outline crosses a column centre, the first pixel below the crossing
    step = np.flatnonzero(u[1:] != u[:-1]) + 1
    xd = np.where(u[step] < u[step - 1], u[step], u[step] - 1).astype(np.float64)
    xd = (xd + 0.5) / scale - 0.5
    keep = (np.floor(xd) == xd) & (xd >= 0) & (xd <= width - 1)
    yd = np.where(v[step] < v[step - 1], v[step], v[step - 1]).astype(np.float64)
    yd = np.ceil(np.clip((yd + 0.5) / scale - 0.5, 0, height))
    # 4. the crossings, in column-major pixel order, are the run boundaries
    boundaries = np.sort(np.append(xd[keep].astype(np.int64) * height + yd[keep].astype(np.int64), height * width))
    runs = np.diff(np.concatenate([[0], boundaries]))
    merged = [int(runs[0])]
    i = 1
    while i < len(runs):  # a zero-length run joins its neighbours
        if runs[i] > 0:
            merged.append(int(runs[i]))
            i += 1
        else:
            i += 1
            if i < len(runs):
                merged[-1] += int(runs[i])
                i += 1
    return rle_decode(merged, height, width)


def _is_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _is_integer(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check_polygon(polygon) -> None:
    if isinstance(polygon, np.ndarray):
        numbers_only = polygon.ndim == 1 and np.issubdtype(polygon.dtype, np.number)
    else:  # the set of types first: a whole COCO file has millions of coordinates to check
        numbers_only = isinstance(polygon, (list, tuple)) and (
            set(map(type, polygon)) <= {int, float} or all(_is_number(v) for v in polygon)
        )
    if not numbers_only:
        raise ValueError(f"a polygon must be a list of numbers [x0, y0, x1, y1, ...], got {polygon!r:.60}")
    if len(polygon) < 6 or len(polygon) % 2:
        raise ValueError(f"a polygon needs at least 3 (x, y) points, got {len(polygon)} numbers")


def _rle_counts(segmentation: dict, height: int, width: int) -> list[int]:
    """The runs of an RLE dict, after checking its size against the image's."""
    size = segmentation.get("size", [height, width])
    if not isinstance(size, (list, tuple)) or len(size) != 2:
        raise ValueError(f"an RLE's size must be [height, width], got {size!r}")
    if (size[0], size[1]) != (height, width):
        raise ValueError(f"RLE of size {size[0]} x {size[1]} for an image of {height} x {width}")
    counts = segmentation["counts"]
    if isinstance(counts, (str, bytes)):
        return rle_counts_from_string(counts)
    if isinstance(counts, np.ndarray) and counts.ndim == 1 and np.issubdtype(counts.dtype, np.integer):
        return counts.tolist()
    integers_only = isinstance(counts, (list, tuple)) and (
        set(map(type, counts)) <= {int} or all(_is_integer(c) for c in counts)
    )
    if not integers_only:
        raise ValueError(f"an RLE's counts must be a string or a list of integers, got {counts!r:.60}")
    return counts


def check_segmentation(segmentation, height: int, width: int) -> None:
    """Raise ValueError if decode_segmentation would: bad polygons, an RLE of the wrong size or sum."""
    if isinstance(segmentation, list):
        for polygon in segmentation:
            _check_polygon(polygon)
        return
    if isinstance(segmentation, dict) and "counts" in segmentation:
        _check_runs(np.asarray(_rle_counts(segmentation, height, width), dtype=np.int64), height, width)
        return
    raise ValueError(f"segmentation must be a list of polygons or an RLE dict, got {type(segmentation).__name__}")


def decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    """A COCO "segmentation" (polygons, uncompressed or compressed RLE) as an (H, W) bool mask."""
    if isinstance(segmentation, list):  # polygons of one object
        mask = np.zeros((height, width), dtype=bool)
        for polygon in segmentation:
            _check_polygon(polygon)
            mask |= polygon_to_mask(polygon, height, width)
        return mask
    if isinstance(segmentation, dict) and "counts" in segmentation:
        return rle_decode(_rle_counts(segmentation, height, width), height, width)
    raise ValueError(f"segmentation must be a list of polygons or an RLE dict, got {type(segmentation).__name__}")
