"""Worked solutions to the exercises of chapter 8, the Mask R-CNN mask head (notebooks/08_mask_rcnn.ipynb).

`exercise_K` is the answer to exercise K in the form `exercises.ch08.exercise_K` takes; the reasoning
is in its docstring and comments. `MISTAKES[K]` is a plausible wrong answer, which the check rejects.
Try the exercise before you read on.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from minimtl import ops
from minimtl.modeling.mask_head import MaskHead, project_masks_on_boxes

# --- 1. A per-pixel softmax -------------------------------------------------------------------------------


def exercise_1(logits: Tensor, classes: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy over the C maps (class 0: the background) at each pixel, against the soft label that
    puts y on the RoI's class and 1 - y on the background; the mean over the F * M * M pixels.

    With C = 2 this is MaskHead's loss: softmax(z_0, z_1)[1] = sigmoid(z_1 - z_0). With more classes the
    maps compete for every pixel: the loss of a person's RoI raises the person map and lowers the horse
    map at the pixels inside the person, so a RoI that frames a person *and* part of a horse teaches
    the horse map to switch off where the horse is; two overlapping objects of different classes pull
    the same pixels each towards its own class. The per-class sigmoid leaves every other map alone
    (section 8.2's gradient check): that is the decoupling Mask R-CNN's table 2b measures.
    """
    if len(logits) == 0:  # no foreground RoI: a zero that keeps the graph, as MaskHead.losses does
        return logits.sum() * 0
    log_p = F.log_softmax(logits, dim=1)  # (F, C, M, M)
    log_p_class = log_p[torch.arange(len(classes)), classes]  # (F, M, M): the RoI's class
    log_p_background = log_p[:, 0]
    return -(targets * log_p_class + (1 - targets) * log_p_background).mean()


def _no_background_term(logits, classes, targets):
    """Wrong: only the object's term; a pixel outside the object (y = 0) then teaches nothing."""
    log_p = F.log_softmax(logits, dim=1)
    return -(targets * log_p[torch.arange(len(classes)), classes]).mean() if len(logits) else logits.sum() * 0


# --- 2. A class-agnostic mask head --------------------------------------------------------------------------


class AgnosticMaskHead(MaskHead):
    """One 28 x 28 map for every class: the predictor has one output, and nothing is indexed by class.

    What changes: `losses` takes map 0 instead of the ground-truth class's map, and `predict` takes map 0
    instead of the predicted class's. (The targets and the pooling do not change.) Mask R-CNN reports
    nearly the same mask AP (29.7 against 30.3, its section 4.2): inside a box the classifier has
    already said what the object is, and "which pixels belong to the main object of this box" is much
    the same question for every class; the box head, not the mask head, decides the class.
    """

    def losses(self, features, proposals, matched, labels, targets, image_sizes) -> dict[str, Tensor]:
        positives = [torch.where(label > 0)[0] for label in labels]
        boxes = [p[i] for p, i in zip(proposals, positives, strict=True)]
        logits = self.logits(features, boxes, image_sizes)[:, 0]  # (F, M, M): the one map
        size = logits.shape[-1]
        mask_targets = torch.cat(
            [
                project_masks_on_boxes(t["masks"], b, m[i], size)
                for t, b, m, i in zip(targets, boxes, matched, positives, strict=True)
            ]
        )
        if mask_targets.numel() == 0:
            return {"loss_mask": logits.sum() * 0}
        return {"loss_mask": F.binary_cross_entropy_with_logits(logits, mask_targets)}

    def predict(self, features, detections, image_sizes) -> None:
        boxes = [d["boxes"] for d in detections]
        probs = self.logits(features, boxes, image_sizes).sigmoid()  # (D, 1, M, M)
        for d, p in zip(detections, probs.split([len(b) for b in boxes]), strict=True):
            d["masks"] = p


exercise_2 = AgnosticMaskHead


class _ForgetsTheSigmoid(AgnosticMaskHead):
    """Wrong: predict stores logits; the pasted masks must be probabilities (thresholded at 0.5)."""

    def predict(self, features, detections, image_sizes) -> None:
        boxes = [d["boxes"] for d in detections]
        logits = self.logits(features, boxes, image_sizes)
        for d, p in zip(detections, logits.split([len(b) for b in boxes]), strict=True):
            d["masks"] = p


# --- 3. Aligned targets -------------------------------------------------------------------------------------


def project_masks_aligned(gt_masks: Tensor, boxes: Tensor, matched: Tensor, size: int) -> Tensor:
    """project_masks_on_boxes with RoIAlign's aligned=True: the samples are taken half a pixel up and to the
    left of where aligned=False takes them, centred on the box, so both edges of the object blur alike."""
    rois = torch.cat([matched.to(boxes)[:, None], boxes], dim=1)  # (F, 5)
    return ops.roi_align(gt_masks[:, None].to(rois), rois, (size, size), 1.0, -1, True)[:, 0]


# The rectangle's round trip (section 8.4) with these targets, pasted by minimtl's paste_masks_in_image:
#
#   target = project_masks_aligned(rectangle[None], box, torch.tensor([0]), 28)[:, None]
#   back = paste_masks_in_image(target, box, (128, 128))[0, 0] > 0.5      # IoU 0.9375, against 0.9456
#
# Lower, not higher: the paste follows torchvision's conventions (section 8.4), which were made for the
# aligned=False frame; with aligned targets the thresholded mask grows a row at the top as well (rows 14 to
# 45 instead of 14 to 44). Trained with them, a perfect head's rectangle would not get better either: the
# round trip is its ceiling. Aligned targets pay off with a paste in the same, centred frame (exercise 4).
exercise_3 = {"project": project_masks_aligned, "round_trip_iou": 0.9375}


# --- 4. Pasting at pixel centres -------------------------------------------------------------------------


def exercise_4(masks: Tensor, boxes: Tensor, image_size) -> Tensor:
    """Detectron2's paste: every pixel reads the map at its centre, in the box's continuous coordinates.

    Pixel x has its centre at x + 1/2; in the box it lies at u = (x + 1/2 - x1) / (x2 - x1), 0 at the left
    edge and 1 at the right. grid_sample with align_corners=False puts -1 and 1 at the map's outer edges,
    so g = 2u - 1; outside the map it reads zeros (and blends with them across the edge). Nothing is
    rounded: no half-pixel shift, no extra column. The round trip of section 8.4 for the rectangle is 0.9975
    (against 0.9456 with minimtl's paste) with the aligned=False targets, and exactly 1.0 with aligned=True
    ones, which use the same continuous frame.
    """
    height, width = image_size
    out = []
    for mask, (x1, y1, x2, y2) in zip(masks, boxes.tolist(), strict=True):
        gx = (torch.arange(width) + 0.5 - x1) / (x2 - x1) * 2 - 1  # (W,)
        gy = (torch.arange(height) + 0.5 - y1) / (y2 - y1) * 2 - 1  # (H,)
        grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)  # (H, W, 2), (x, y) per pixel
        out.append(F.grid_sample(mask[None].float(), grid[None], align_corners=False)[0])  # (1, H, W)
    return torch.stack(out) if out else masks.new_zeros((0, 1, height, width))


def _align_corners(masks, boxes, image_size):
    """Wrong: align_corners=True puts -1 and 1 on the centres of the corner cells, stretching the map by a cell."""
    height, width = image_size
    out = []
    for mask, (x1, y1, x2, y2) in zip(masks, boxes.tolist(), strict=True):
        gx = (torch.arange(width) + 0.5 - x1) / (x2 - x1) * 2 - 1
        gy = (torch.arange(height) + 0.5 - y1) / (y2 - y1) * 2 - 1
        grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)
        out.append(F.grid_sample(mask[None].float(), grid[None], align_corners=True)[0])
    return torch.stack(out) if out else masks.new_zeros((0, 1, height, width))


# --- 5. The resolution of a 28 x 28 mask -------------------------------------------------------------------
#
# The head predicts 28 x 28 cells (14 x 14 pooled, doubled by the transposed convolution) whatever the box's
# size: on a 300-pixel object each cell spans 300 / 28 = 10.7 pixels, and a border that the map can only
# place to the nearest cell boundary may be half a cell, 5.4 pixels, from the true one (bilinear pasting
# smooths it, but cannot put back detail finer than a cell). A 30-pixel object gets a cell per pixel.
# PointRend (Kirillov et al., CVPR 2020) treats the mask as a rendering problem: it starts from a coarse
# mask, upsamples it 2x at a time, and at each step re-predicts only the N most uncertain points (those
# near 0.5, on the border) with a small MLP on fine-level features at those points. The cost grows with
# the border's length, not with the area, and it reaches 224 x 224 at a fraction of a dense head's cost.
exercise_5 = {"cell_px": 300 / 28, "max_error_px": 300 / 28 / 2, "pointrend": "adaptive_points"}


# --- 6. A batched paste ---------------------------------------------------------------------------------------


def _grow(boxes: Tensor, scale: float) -> Tensor:
    """Boxes (D, 4) scaled about their centres, as paste_masks_in_image grows them to fit the padded map."""
    half_w, half_h = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale, (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    cx, cy = (boxes[:, 2] + boxes[:, 0]) * 0.5, (boxes[:, 3] + boxes[:, 1]) * 0.5
    return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=1)


def exercise_6(masks: Tensor, boxes: Tensor, image_size, padding: int = 1) -> Tensor:
    """paste_masks_in_image without the Python loop: one grid_sample for every detection.

    The loop pads each map by `padding` cells of zeros (M' = M + 2 padding), grows the box by M'/M about its
    centre, truncates it to integers x0..x1 (both ends count: w = x1 - x0 + 1 pixels), resizes the map to
    h x w with F.interpolate (bilinear, align_corners=False) and writes it at (y0, x0). Output pixel j of
    that resize reads the source at s = (j + 1/2) M'/w - 1/2, clamped at the borders. grid_sample with
    align_corners=False reads at s for g = 2 (s + 1/2) / M' - 1 = 2 (j + 1/2) / w - 1, and its "border"
    padding clamps as interpolate does. So image pixel x (j = x - x0) gets g = 2 (x - x0 + 1/2) / w - 1,
    for every pixel of the image at once; the pixels outside x0..x1 are set to zero afterwards.
    """
    height, width = image_size
    d, m = len(masks), masks.shape[-1]
    if d == 0:
        return masks.new_zeros((0, 1, height, width))
    padded = F.pad(masks, (padding,) * 4)  # (D, 1, M', M')
    x0, y0, x1, y1 = _grow(boxes, (m + 2 * padding) / m).to(torch.int64).unbind(dim=1)  # (D,) each, truncated
    w, h = (x1 - x0 + 1).clamp(min=1), (y1 - y0 + 1).clamp(min=1)
    xs, ys = torch.arange(width), torch.arange(height)
    gx = 2 * (xs[None] - x0[:, None] + 0.5) / w[:, None] - 1  # (D, W)
    gy = 2 * (ys[None] - y0[:, None] + 0.5) / h[:, None] - 1  # (D, H)
    grid = torch.stack([gx[:, None, :].expand(-1, height, -1), gy[:, :, None].expand(-1, -1, width)], dim=-1)
    pasted = F.grid_sample(padded, grid.to(masks.dtype), align_corners=False, padding_mode="border")  # (D, 1, H, W)
    inside_x = (xs[None] >= x0[:, None]) & (xs[None] <= x1[:, None])  # (D, W): the loop writes x0..x1
    inside_y = (ys[None] >= y0[:, None]) & (ys[None] <= y1[:, None])  # (D, H)
    inside = inside_y[:, None, :, None] & inside_x[:, None, None, :]  # (D, 1, H, W)
    return torch.where(inside, pasted, torch.zeros((), dtype=pasted.dtype))


def _zero_padding(masks, boxes, image_size, padding=1):
    """Wrong: grid_sample's default zero padding blends the edge cells with zeros; interpolate clamps instead."""
    height, width = image_size
    if len(masks) == 0:
        return masks.new_zeros((0, 1, height, width))
    m = masks.shape[-1]
    padded = F.pad(masks, (padding,) * 4)
    x0, y0, x1, y1 = _grow(boxes, (m + 2 * padding) / m).to(torch.int64).unbind(dim=1)
    w, h = (x1 - x0 + 1).clamp(min=1), (y1 - y0 + 1).clamp(min=1)
    xs, ys = torch.arange(width), torch.arange(height)
    gx = 2 * (xs[None] - x0[:, None] + 0.5) / w[:, None] - 1
    gy = 2 * (ys[None] - y0[:, None] + 0.5) / h[:, None] - 1
    grid = torch.stack([gx[:, None, :].expand(-1, height, -1), gy[:, :, None].expand(-1, -1, width)], dim=-1)
    pasted = F.grid_sample(padded, grid.to(masks.dtype), align_corners=False)
    inside_x = (xs[None] >= x0[:, None]) & (xs[None] <= x1[:, None])
    inside_y = (ys[None] >= y0[:, None]) & (ys[None] <= y1[:, None])
    return torch.where(inside_y[:, None, :, None] & inside_x[:, None, None, :], pasted, 0.0)


MISTAKES = {
    1: _no_background_term,
    2: _ForgetsTheSigmoid,
    3: {"project": project_masks_on_boxes, "round_trip_iou": 0.9456},
    4: _align_corners,
    5: {"cell_px": 300 / 14, "max_error_px": 300 / 14 / 2, "pointrend": "adaptive_points"},
    6: _zero_padding,
}
