"""Readable pure-PyTorch versions of minimtl's kernels: what the notebooks teach and the tests check.

Each function here computes exactly what its kernel in csrc/ computes, the same operations in the
same order and in the same precision (float16 and bfloat16 boxes in float32, like the kernels), so
the kernels are compared with these to the last bit (IoU) or index for index (NMS).
They are written to be read, not to be fast: box_iou builds N x M temporaries for every step, and
nms fills the whole N x N IoU matrix before walking it in a Python loop.

Boxes are (x1, y1, x2, y2). Shapes: N, M boxes; K kept boxes.
"""

import torch
from torch import Tensor


def _compute_dtype(boxes: Tensor) -> torch.dtype:
    """The kernels compute in float64 for float64 boxes and in float32 for everything else."""
    return torch.float64 if boxes.dtype == torch.float64 else torch.float32


def box_area(boxes: Tensor) -> Tensor:
    """Area of each box, (N, 4) -> (N,). A box with x2 <= x1 or y2 <= y1 has area 0.

    The widths are clamped at 0, so an inverted box is empty rather than "negative times negative"
    positive. torch.clamp keeps NaN, so a box with a NaN coordinate has area NaN.
    """
    width = (boxes[:, 2] - boxes[:, 0]).clamp(min=0)
    height = (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    return width * height


def _intersection(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Area of the intersection of every pair, (N, 4), (M, 4) -> (N, M)."""
    top_left = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    bottom_right = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    wh = (bottom_right - top_left).clamp(min=0)  # (N, M, 2), 0 where the boxes do not overlap
    return wh[..., 0] * wh[..., 1]


def _safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """numerator / denominator where denominator > 0, else 0 (NaN > 0 is False, so NaN gives 0 too).

    The division only ever sees positive denominators, so no inf or NaN appears even in the branch
    that torch.where drops; that keeps the gradient finite as well.
    """
    positive = denominator > 0
    return torch.where(positive, numerator / torch.where(positive, denominator, 1), 0)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Intersection over union of every pair of boxes, (N, 4), (M, 4) -> (N, M).

    IoU(a, b) = |a ∩ b| / |a ∪ b|,  |a ∪ b| = |a| + |b| - |a ∩ b|.
    Where the union is not positive (two empty boxes) or is NaN (a NaN coordinate), IoU is 0.
    """
    dtype = boxes1.dtype
    boxes1, boxes2 = boxes1.to(_compute_dtype(boxes1)), boxes2.to(_compute_dtype(boxes2))
    area1, area2 = box_area(boxes1), box_area(boxes2)  # (N,), (M,)
    inter = _intersection(boxes1, boxes2)  # (N, M)
    union = area1[:, None] + area2[None, :] - inter  # (N, M)
    return _safe_divide(inter, union).to(dtype)


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalised IoU (Rezatofighi et al., 2019) of every pair, (N, 4), (M, 4) -> (N, M).

    GIoU(a, b) = IoU(a, b) - (|C| - |a ∪ b|) / |C|, C the smallest box enclosing a and b.
    It lies in [-1, 1] and, unlike IoU, still says how far apart two disjoint boxes are.
    Where |C| is not positive the penalty is left out. The penalty (|C| - |a ∪ b|) / |C| lies in
    [0, 1] and is clamped there: in floating point the union can overflow to inf (two finite areas
    whose sum cannot be represented) while |C| does not. Any NaN left (from inf - inf) becomes 0.
    """
    dtype = boxes1.dtype
    boxes1, boxes2 = boxes1.to(_compute_dtype(boxes1)), boxes2.to(_compute_dtype(boxes2))
    area1, area2 = box_area(boxes1), box_area(boxes2)  # (N,), (M,)
    inter = _intersection(boxes1, boxes2)  # (N, M)
    union = area1[:, None] + area2[None, :] - inter  # (N, M)
    iou = _safe_divide(inter, union)  # (N, M)

    top_left = torch.minimum(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    bottom_right = torch.maximum(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    wh = (bottom_right - top_left).clamp(min=0)  # (N, M, 2)
    enclose = wh[..., 0] * wh[..., 1]  # (N, M)

    positive = enclose > 0
    penalty = ((enclose - union) / torch.where(positive, enclose, 1)).clamp(min=0, max=1)  # (N, M); NaN stays
    giou = torch.where(positive, iou - penalty, iou)
    return torch.where(torch.isnan(giou), 0, giou).to(dtype)


def order_by_score(scores: Tensor) -> Tensor:
    """Indices of the scores in decreasing order; ties keep index order; NaN ranks as -inf."""
    key = torch.where(torch.isnan(scores), float("-inf"), scores)
    return torch.sort(key, descending=True, stable=True).indices


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression, (N, 4), (N,) -> (K,) int64 indices by decreasing score.

    Walk the boxes from the highest score down; keep a box unless a box kept before it overlaps it
    with IoU > iou_threshold.
    """
    order = order_by_score(scores)  # (N,) rank -> box index
    sorted_boxes = boxes[order].to(_compute_dtype(boxes))
    iou = box_iou(sorted_boxes, sorted_boxes).cpu()  # (N, N), rows and columns in rank order
    # The comparison happens in the compute dtype, as in the kernels (for float32 boxes, 0.7 is
    # compared as the float32 nearest to 0.7).
    threshold = torch.tensor(iou_threshold, dtype=iou.dtype)
    removed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in range(len(order)):
        if removed[i]:
            continue
        keep.append(i)
        removed[i + 1 :] |= iou[i, i + 1 :] > threshold  # i suppresses the later boxes it overlaps
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Class-aware NMS: boxes with different idxs never suppress each other.

    NMS runs on each class separately; the kept boxes of all classes are returned together, by
    decreasing score (ties keep index order), as nms orders them.
    """
    keep = []
    for c in torch.unique(idxs):
        members = torch.nonzero(idxs == c).flatten()  # (Nc,) box indices of class c
        keep.append(members[nms(boxes[members], scores[members], iou_threshold)])
    keep = torch.cat(keep) if keep else idxs.new_empty(0, dtype=torch.long)
    order = order_by_score(scores)  # rank -> box index
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device)  # box index -> rank
    return keep[torch.argsort(rank[keep])]


# --- RoIAlign ----------------------------------------------------------------------------------
#
# RoIAlign (He et al., "Mask R-CNN", ICCV 2017, section 3) turns a box on a feature map into a
# fixed ph x pw grid of features without rounding the box to pixels: each output cell ("bin") is
# the mean of a few points sampled inside it, and each point is read from the map by bilinear
# interpolation of its four neighbouring pixels. Shapes: N images, C channels, H x W map,
# K RoIs, ph x pw output; gh x gw samples per bin.


def roi_align(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoIAlign of every RoI, (N, C, H, W), (K, 5) or list[(L, 4)] -> (K, C, ph, pw).

    Computed one RoI at a time, to be read; torchvision's semantics (see minimtl.ops.roi_align).
    Differentiable with respect to `input` through autograd.
    """
    from minimtl.ops.rois import boxes_to_rois  # (the kernels' Python side imports this module)

    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    rois = boxes_to_rois(boxes, "roi_align", like=input)  # (K, 5): batch index, x1, y1, x2, y2
    n, c, h, w = input.shape
    feature = input.to(_compute_dtype(input))  # float16/bfloat16 are computed in float32
    rois = rois.to(feature.dtype)
    out = []
    for roi in rois:
        b = roi[0].item()
        if not (0 <= b < n and b == int(b)):
            raise RuntimeError(f"roi_align: rois[:, 0] must hold integer batch indices in [0, {n}), got {b}")
        if h == 0 or w == 0:  # an empty map: every sample falls outside it
            out.append(feature.new_zeros((c, ph, pw)))
            continue
        out.append(_roi_align_one(feature[int(b)], roi[1:], ph, pw, spatial_scale, sampling_ratio, aligned))
    out = torch.stack(out) if out else feature.new_zeros((0, c, ph, pw))  # (K, C, ph, pw)
    return out.to(input.dtype)


MAX_SAMPLES_PER_BIN_SIDE = 1 << 30  # caps the adaptive grid of an absurdly large (or infinite) RoI


def samples_per_bin(roi_size: Tensor, bins: int, sampling_ratio: int) -> int:
    """gh (or gw): sampling_ratio if it is positive, else ceil(roi_size / bins), about one sample per
    pixel. A RoI of size 0 or less (possible with aligned=True) or NaN has no samples."""
    if sampling_ratio > 0:
        return sampling_ratio
    n = torch.ceil(roi_size / bins).item()
    return int(min(n, MAX_SAMPLES_PER_BIN_SIDE)) if n >= 1 else 0  # NaN >= 1 is False


def _roi_align_one(feature, box, ph, pw, spatial_scale, sampling_ratio, aligned) -> Tensor:
    """One RoI: (C, H, W), (4,) -> (C, ph, pw)."""
    # 1. The RoI in feature-map coordinates. Pixel i covers [i, i + 1), so its centre is at i + 0.5,
    #    while bilinear interpolation puts pixel i's value at coordinate i. aligned=True subtracts
    #    the half pixel so that the two agree; aligned=False (the original Mask R-CNN code) does
    #    not, and stretches every RoI to at least 1 x 1.
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = box * spatial_scale - offset
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)

    # 2. The bins: a ph x pw grid over the RoI.
    bin_h, bin_w = roi_h / ph, roi_w / pw

    # 3. The samples of each bin: a regular gh x gw grid, each sample at the centre of its cell.
    #    Sample iy of bin row p sits at y1 + p * bin_h + (iy + 0.5) * bin_h / gh, and likewise in x:
    #    y depends only on (p, iy) and x only on (q, ix), so the samples of all bins form one grid.
    gh, gw = samples_per_bin(roi_h, ph, sampling_ratio), samples_per_bin(roi_w, pw, sampling_ratio)
    dtype, device = feature.dtype, feature.device
    p, iy = torch.arange(ph, device=device, dtype=dtype), torch.arange(gh, device=device, dtype=dtype)
    q, ix = torch.arange(pw, device=device, dtype=dtype), torch.arange(gw, device=device, dtype=dtype)
    ys = y1 + p[:, None] * bin_h + (iy[None, :] + 0.5) * bin_h / gh  # (ph, gh)
    xs = x1 + q[:, None] * bin_w + (ix[None, :] + 0.5) * bin_w / gw  # (pw, gw)

    # 4. Bilinear interpolation at every sample.
    values = bilinear_interpolate(feature, ys.flatten(), xs.flatten())  # (C, ph * gh, pw * gw)

    # 5. Each bin is the mean of its samples (a bin without samples is 0).
    values = values.reshape(feature.shape[0], ph, gh, pw, gw)  # (C, ph, gh, pw, gw)
    return values.sum(dim=(2, 4)) / max(gh * gw, 1)  # (C, ph, pw)


def bilinear_interpolate(feature: Tensor, ys: Tensor, xs: Tensor) -> Tensor:
    """The map at the points (ys[i], xs[j]) for every i and j, (C, H, W), (P,), (Q,) -> (C, P, Q).

    Pixel (y, x)'s value sits at the integer point (y, x). A point between pixels is the weighted
    mean of its four neighbours, each weighted by the area of the rectangle on the opposite side:

        v = (1 - ly)(1 - lx) f[y0, x0] + (1 - ly) lx f[y0, x1] + ly (1 - lx) f[y1, x0] + ly lx f[y1, x1]

    with y0 = floor(y), y1 = y0 + 1, ly = y - y0 (and the same in x). A point beyond [-1, H] x [-1, W]
    is 0; a point in [-1, 0) reads the first pixel; a point at or past the last pixel, the last one.
    """
    _, h, w = feature.shape
    y0, y1, wy0, wy1, inside_y = _neighbours(ys, h)  # (P,) each
    x0, x1, wx0, wx1, inside_x = _neighbours(xs, w)  # (Q,) each

    def at(rows, cols):  # feature[:, rows[i], cols[j]] for every i, j
        return feature[:, rows[:, None], cols[None, :]]  # (C, P, Q)

    # the four bilinear weights of every point, (P, Q)
    w1, w2 = wy0[:, None] * wx0[None, :], wy0[:, None] * wx1[None, :]
    w3, w4 = wy1[:, None] * wx0[None, :], wy1[:, None] * wx1[None, :]
    values = w1 * at(y0, x0) + w2 * at(y0, x1) + w3 * at(y1, x0) + w4 * at(y1, x1)  # (C, P, Q)
    inside = inside_y[:, None] & inside_x[None, :]  # (P, Q)
    return torch.where(inside, values, 0)


def _neighbours(coords: Tensor, size: int):
    """Along one axis: each point's pixel below and above, their weights, and whether it counts."""
    inside = (coords >= -1) & (coords <= size)  # NaN compares False: it does not count either
    c = torch.where(inside, coords, 0).clamp(min=0)  # in [-1, 0): the first pixel
    low = c.floor().long()
    last = low >= size - 1  # at or past the last pixel: both neighbours are the last pixel
    low = torch.where(last, size - 1, low)
    high = torch.where(last, size - 1, low + 1)
    frac = torch.where(last, 0, c - low)  # the distance to the pixel below
    return low, high, 1 - frac, frac, inside
