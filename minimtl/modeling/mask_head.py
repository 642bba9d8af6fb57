"""The Mask R-CNN mask head (He et al., "Mask R-CNN", ICCV 2017, section 3 and figure 4).

Each positive proposal (training) or detection (inference) is pooled to 14 x 14 x C, passed through
four 3x3 convs with ReLU, upsampled 2x by a transposed conv, and turned into one 28 x 28 mask
logit map per class. Only the map of the box's class counts, so classes do not compete for
pixels (section 3: "decouples mask and class prediction").

Training target: the ground-truth mask, cropped to the proposal and resized to 28 x 28 (RoIAlign
of the full-resolution mask with the proposal as the RoI), against which

    L_mask = mean over pixels of BCE(logit of the ground-truth class, target)

Inference: sigmoid of the predicted class's map, which paste_masks_in_image warps back into the
image: resized to the box, placed at its position, zero elsewhere.

Shapes: F positives (or D detections), C classes, M = 28; GT masks (G, H, W).
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minimtl import ops
from minimtl.modeling.poolers import MultiScaleRoIAlign
from minimtl.modeling.precision import full_precision


class MaskConvs(nn.Module):
    """(F, C, 14, 14) -> (F, layers[-1], 14, 14): 3x3 conv + ReLU, len(layers) times."""

    def __init__(self, in_channels: int, layers=(256, 256, 256, 256)):
        super().__init__()
        self.convs = nn.ModuleList()
        for channels in layers:
            self.convs.append(nn.Conv2d(in_channels, channels, 3, padding=1))
            in_channels = channels
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = F.relu(conv(x))
        return x


class MaskPredictor(nn.Module):
    """(F, D, 14, 14) -> (F, num_classes, 28, 28) logits: 2x2 transposed conv + ReLU, 1x1 conv."""

    def __init__(self, in_channels: int, dim_reduced: int, num_classes: int):
        super().__init__()
        self.deconv = nn.ConvTranspose2d(in_channels, dim_reduced, 2, 2)
        self.logits = nn.Conv2d(dim_reduced, num_classes, 1)
        for layer in (self.deconv, self.logits):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(F.relu(self.deconv(x)))


class MaskHead(nn.Module):
    def __init__(self, pooler: MultiScaleRoIAlign, convs: MaskConvs, predictor: MaskPredictor):
        super().__init__()
        self.pooler, self.convs, self.predictor = pooler, convs, predictor

    def logits(self, features: list[Tensor], boxes: list[Tensor], image_sizes) -> Tensor:
        return full_precision(self.predictor(self.convs(self.pooler(features, boxes, image_sizes))))  # (F, C, M, M)

    def losses(self, features, proposals, matched, labels, targets, image_sizes) -> dict[str, Tensor]:
        """BCE of the positive proposals' masks, on the ground-truth class's map."""
        positives = [torch.where(label > 0)[0] for label in labels]
        boxes = [p[i] for p, i in zip(proposals, positives, strict=True)]
        logits = self.logits(features, boxes, image_sizes)  # (F, C, M, M)
        size = logits.shape[-1]
        mask_targets = torch.cat(
            [
                project_masks_on_boxes(t["masks"], b, m[i], size)
                for t, b, m, i in zip(targets, boxes, matched, positives, strict=True)
            ]
        )  # (F, M, M)
        classes = torch.cat([label[i] for label, i in zip(labels, positives, strict=True)])  # (F,)
        if mask_targets.numel() == 0:  # no positive proposal: a zero loss that still reaches the weights
            return {"loss_mask": logits.sum() * 0}
        logits = logits[torch.arange(len(classes), device=classes.device), classes]  # (F, M, M)
        return {"loss_mask": F.binary_cross_entropy_with_logits(logits, mask_targets)}

    def predict(self, features, detections: list[dict[str, Tensor]], image_sizes) -> None:
        """Adds "masks" (D, 1, M, M), probabilities of each detection's class, to each image's detections."""
        boxes = [d["boxes"] for d in detections]
        logits = self.logits(features, boxes, image_sizes)  # (D, C, M, M)
        classes = torch.cat([d["labels"] for d in detections])
        probs = logits.sigmoid()[torch.arange(len(classes), device=logits.device), classes][:, None]  # (D, 1, M, M)
        for d, p in zip(detections, probs.split([len(b) for b in boxes]), strict=True):
            d["masks"] = p


def project_masks_on_boxes(gt_masks: Tensor, boxes: Tensor, matched: Tensor, size: int) -> Tensor:
    """The ground-truth mask of each box, cropped to the box and resampled to size x size.

    gt_masks (G, H, W), boxes (F, 4) in the same pixels, matched (F,) -> (F, size, size) in [0, 1].
    """
    rois = torch.cat([matched.to(boxes)[:, None], boxes], dim=1)  # (F, 5): the mask index as batch index
    return ops.roi_align(gt_masks[:, None].to(rois), rois, (size, size), 1.0, check_indices=False)[:, 0]  # matched < G


def paste_masks_in_image(masks: Tensor, boxes: Tensor, image_size: tuple[int, int], padding: int = 1) -> Tensor:
    """Warp each M x M mask into its box: (D, 1, M, M), (D, 4) -> (D, 1, H, W), zero outside the box.

    The mask is padded by one pixel (and the box grown to match) so that its border resamples
    against zeros, then resized to the box's integer size with bilinear interpolation.
    """
    m = masks.shape[-1]
    scale = float(m + 2 * padding) / m
    masks = F.pad(masks, (padding,) * 4)  # (D, 1, M + 2, M + 2)
    boxes = _expand_boxes(boxes, scale).to(torch.int64)
    height, width = image_size
    pasted = [_paste_one(mask[0], box, height, width) for mask, box in zip(masks, boxes, strict=True)]
    return torch.stack(pasted)[:, None] if pasted else masks.new_empty((0, 1, height, width))


def _expand_boxes(boxes: Tensor, scale: float) -> Tensor:
    """Scale boxes (D, 4) about their centres."""
    half_w, half_h = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale, (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    cx, cy = (boxes[:, 2] + boxes[:, 0]) * 0.5, (boxes[:, 3] + boxes[:, 1]) * 0.5
    return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=1)


def _paste_one(mask: Tensor, box: Tensor, height: int, width: int) -> Tensor:
    x0, y0, x1, y1 = (int(v) for v in box)
    w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)  # the box's pixels, both ends included
    mask = F.interpolate(mask[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    out = torch.zeros((height, width), dtype=mask.dtype, device=mask.device)
    top, bottom, left, right = max(y0, 0), min(y1 + 1, height), max(x0, 0), min(x1 + 1, width)
    if bottom > top and right > left:
        out[top:bottom, left:right] = mask[top - y0 : bottom - y0, left - x0 : right - x0]
    return out
