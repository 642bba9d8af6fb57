"""Input checks for the fake kernels, which torch.compile runs instead of the C++ ones.

They say what csrc/checks.h says in C++: the operator, the argument, what was expected, what came.
"""

import math

import torch
from torch import Tensor


def check_boxes(op: str, name: str, boxes: Tensor) -> None:
    torch._check(
        boxes.dim() == 2 and boxes.shape[1] == 4,
        lambda: f"{op}: {name} must be a Tensor[N, 4] of (x1, y1, x2, y2) boxes, got shape {tuple(boxes.shape)}",
    )
    torch._check(
        boxes.dtype.is_floating_point,
        lambda: f"{op}: {name} must be floating point (float16, bfloat16, float32 or float64), got {boxes.dtype}",
    )


def check_scores(op: str, scores: Tensor, n) -> None:
    torch._check(
        scores.dim() == 1 and scores.shape[0] == n,
        lambda: f"{op}: scores must be a Tensor[N] with one score per box (N = {n}), got shape {tuple(scores.shape)}",
    )
    torch._check(
        scores.dtype.is_floating_point,
        lambda: f"{op}: scores must be floating point (float16, bfloat16, float32 or float64), got {scores.dtype}",
    )


def check_idxs(op: str, idxs: Tensor, n) -> None:
    torch._check(
        idxs.dim() == 1 and idxs.shape[0] == n,
        lambda: f"{op}: idxs must be a Tensor[N] with one class index per box (N = {n}), got shape {tuple(idxs.shape)}",
    )
    torch._check(
        not idxs.dtype.is_floating_point and not idxs.dtype.is_complex and idxs.dtype != torch.bool,
        lambda: f"{op}: idxs must be an integer tensor (e.g. int64), got {idxs.dtype}",
    )


def check_threshold(op: str, iou_threshold: float) -> None:
    torch._check(not math.isnan(iou_threshold), lambda: f"{op}: iou_threshold must be a number, got NaN")


def check_same_device(op: str, name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    torch._check(
        a.device == b.device,
        lambda: f"{op}: {name_a} and {name_b} must be on the same device, got {a.device} and {b.device}",
    )


def check_same_dtype(op: str, name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    torch._check(
        a.dtype == b.dtype,
        lambda: f"{op}: {name_a} and {name_b} must have the same dtype, got {a.dtype} and {b.dtype}",
    )


def check_pairwise_inputs(op: str, boxes1: Tensor, boxes2: Tensor) -> None:
    check_boxes(op, "boxes1", boxes1)
    check_boxes(op, "boxes2", boxes2)
    check_same_device(op, "boxes1", boxes1, "boxes2", boxes2)
    check_same_dtype(op, "boxes1", boxes1, "boxes2", boxes2)


def check_nms_inputs(op: str, boxes: Tensor, scores: Tensor, idxs: Tensor | None, iou_threshold: float) -> None:
    check_boxes(op, "boxes", boxes)
    check_scores(op, scores, boxes.shape[0])
    check_same_device(op, "boxes", boxes, "scores", scores)
    if idxs is not None:
        check_idxs(op, idxs, boxes.shape[0])
        check_same_device(op, "boxes", boxes, "idxs", idxs)
    check_threshold(op, iou_threshold)


def check_rois(op: str, rois: Tensor) -> None:
    torch._check(
        rois.dim() == 2 and rois.shape[1] == 5,
        lambda: f"{op}: rois must be a Tensor[K, 5] of (batch_index, x1, y1, x2, y2), got shape {tuple(rois.shape)}",
    )
    torch._check(rois.dtype.is_floating_point, lambda: f"{op}: rois must be floating point, got {rois.dtype}")


def check_output_size(op: str, pooled_height, pooled_width) -> None:
    torch._check(
        pooled_height > 0 and pooled_width > 0,
        lambda: f"{op}: output_size must be positive, got ({pooled_height}, {pooled_width})",
    )


def check_batch_indices(op: str, rois: Tensor, batch_size: int) -> None:
    """rois[:, 0] holds integer batch indices in [0, batch_size), or an error names the first bad row.

    One reduction on the RoIs' device and one wait for its answer (csrc/checks.h does the same in
    C++ for the CPU kernel).
    """
    index = rois[:, 0]
    bad = (index < 0) | (index >= batch_size) | (index != index.floor())  # NaN != NaN
    if len(index) and bad.any():
        k = int(bad.nonzero()[0, 0])
        value = float(index[k])
        raise RuntimeError(
            f"{op}: rois[:, 0] must hold integer batch indices in [0, {batch_size}), got {value:g} in row {k}"
        )


def check_roi_align_inputs(op: str, input: Tensor, rois: Tensor, pooled_height, pooled_width) -> None:
    # The batch indices (rois[:, 0]) are data: check_batch_indices, outside the fake kernel.
    torch._check(input.dim() == 4, lambda: f"{op}: input must be a Tensor[N, C, H, W], got shape {tuple(input.shape)}")
    torch._check(
        input.dtype.is_floating_point,
        lambda: f"{op}: input must be floating point (float16, bfloat16, float32 or float64), got {input.dtype}",
    )
    check_rois(op, rois)
    check_same_device(op, "input", input, "rois", rois)
    check_output_size(op, pooled_height, pooled_width)


def check_roi_align_backward_inputs(
    op: str, grad: Tensor, rois: Tensor, pooled_height, pooled_width, batch_size, channels, height, width
) -> None:
    check_rois(op, rois)
    check_same_device(op, "grad", grad, "rois", rois)
    check_output_size(op, pooled_height, pooled_width)
    torch._check(
        batch_size >= 0 and channels >= 0 and height >= 0 and width >= 0,
        lambda: f"{op}: the input's size must not be negative, got ({batch_size}, {channels}, {height}, {width})",
    )
    expected = (rois.shape[0], channels, pooled_height, pooled_width)
    torch._check(
        grad.dim() == 4 and tuple(grad.shape) == expected,
        lambda: f"{op}: grad must be a Tensor[K, C, ph, pw] = {list(expected)}, got shape {tuple(grad.shape)}",
    )
    torch._check(grad.dtype.is_floating_point, lambda: f"{op}: grad must be floating point, got {grad.dtype}")
