"""Region Proposal Network (Ren et al., "Faster R-CNN", NeurIPS 2015, section 3.1; FPN section 4.1).

A small head slides over every pyramid level: a 3x3 conv, then per anchor one objectness logit
("is there an object?") and four deltas that refine the anchor (box_coder.py). The best-scoring
refined anchors become the proposals the second stage looks at:

    per level, the pre_nms_top_n highest logits -> decode -> clip to the image -> drop tiny boxes
    -> NMS at 0.7 within each level (batched_nms by level) -> the post_nms_top_n best overall.

Training (section 3.1.2): anchors with IoU >= 0.7 with a ground-truth box (or the best anchor of
each box) are positive, < 0.3 negative; 256 are sampled per image, half positive at most.

    L = BCE(objectness, label) over sampled anchors
      + smooth_l1(deltas, target deltas; beta = 1/9) over the positives / sampled count

This is the published loss: Mask R-CNN keeps this RPN with cross-entropy and smooth L1 (He et al.,
ICCV 2017, section 3). Focal and the IoU family are options, each replacing one term only:

  objectness_loss "focal" (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017: section 3,
  eq. 5; normalisation and initialisation, section 4.1), RetinaNet's design without sampling:
      L_obj = sum of FL(p_t) over every anchor with label >= 0  /  max(1, number of positive anchors)
      FL(p_t) = -α_t (1 - p_t)^γ log(p_t)        (focal.py; focal_alpha 0.25, focal_gamma 2; γ = 0, α < 0: BCE)
  and the objectness bias starts at -log((1 - π) / π), π = focal_prior = 0.01: every anchor starts at
  probability π, so that the ~100k easy negatives do not swamp the first steps. The box term keeps
  the sampled anchors.

  box_loss "giou" | "diou" | "ciou" (box.py: Rezatofighi et al., CVPR 2019; Zheng et al., AAAI 2020):
      1 - GIoU / DIoU / CIoU of the decoded boxes against their matched ground-truth boxes,
      summed over the positives / sampled count, as smooth L1.
  1 - IoU is at most 2 and has smaller gradients than smooth L1 on deltas, so IoU-family losses are
  usually scaled up: box_loss_weight (default 1) multiplies the box term, whichever loss it is.

Shapes: N images, A anchors per cell, level l of Hl x Wl cells; R = sum_l Hl*Wl*A anchors per image;
G ground-truth boxes; proposals per image (P, 4).
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minimtl import ops
from minimtl.losses import ciou_loss, diou_loss, giou_loss, sigmoid_focal_loss
from minimtl.modeling.anchors import AnchorGenerator
from minimtl.modeling.box_coder import BoxCoder
from minimtl.modeling.matcher import Matcher
from minimtl.modeling.precision import full_precision_dtype
from minimtl.modeling.sampler import BalancedPositiveNegativeSampler

# The IoU-family box losses, on decoded boxes (minimtl/losses/box.py); "smooth_l1" works on the deltas.
IOU_LOSSES = {"giou": giou_loss, "diou": diou_loss, "ciou": ciou_loss}
BOX_LOSSES = ("smooth_l1", *IOU_LOSSES)


def prior_bias(prior: float) -> float:
    """The bias b with sigmoid(b) = prior: -log((1 - prior) / prior) (RetinaNet section 4.1)."""
    return -math.log((1 - prior) / prior)


def quoted_options(options) -> str:
    """('a', 'b', 'c') -> "'a', 'b' or 'c'", for error messages."""
    quoted = [repr(o) for o in options]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]


class RPNHead(nn.Module):
    """forward(features) -> (objectness (N, A, Hl, Wl), deltas (N, A*4, Hl, Wl)) per level; shared weights."""

    def __init__(self, in_channels: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.objectness = nn.Conv2d(in_channels, num_anchors, 1)
        self.deltas = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for layer in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        objectness, deltas = [], []
        for feature in features:
            t = F.relu(self.conv(feature))
            objectness.append(self.objectness(t))  # (N, A, Hl, Wl)
            deltas.append(self.deltas(t))  # (N, A*4, Hl, Wl)
        return objectness, deltas


def flatten_anchor_outputs(x: Tensor, values_per_anchor: int) -> Tensor:
    """(N, A*V, H, W) -> (N, H*W*A, V): cell by cell, then anchor by anchor, as the anchors are ordered."""
    n, _, h, w = x.shape
    x = x.view(n, -1, values_per_anchor, h, w)  # (N, A, V, H, W)
    return x.permute(0, 3, 4, 1, 2).reshape(n, -1, values_per_anchor)  # (N, H*W*A, V)


class RegionProposalNetwork(nn.Module):
    def __init__(
        self,
        anchor_generator: AnchorGenerator,
        head: RPNHead,
        fg_iou_thresh: float = 0.7,
        bg_iou_thresh: float = 0.3,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        pre_nms_top_n: tuple[int, int] = (2000, 1000),  # (training, testing)
        post_nms_top_n: tuple[int, int] = (2000, 1000),
        nms_thresh: float = 0.7,
        score_thresh: float = 0.0,
        box_loss: str = "smooth_l1",
        box_loss_weight: float = 1.0,
        objectness_loss: str = "bce",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        focal_prior: float = 0.01,
    ):
        super().__init__()
        if box_loss not in BOX_LOSSES:
            raise ValueError(f"rpn: box_loss must be {quoted_options(BOX_LOSSES)}, got {box_loss!r}")
        if not 0 <= box_loss_weight < math.inf:
            raise ValueError(f"rpn: box_loss_weight must be a finite number >= 0, got {box_loss_weight}")
        if objectness_loss not in ("bce", "focal"):
            raise ValueError(f"rpn: objectness_loss must be 'bce' or 'focal', got {objectness_loss!r}")
        if not 0 < focal_prior < 1:
            raise ValueError(f"rpn: focal_prior must be in (0, 1), got {focal_prior}")
        self.anchor_generator = anchor_generator
        self.head = head
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.pre_nms_top_n, self.post_nms_top_n = pre_nms_top_n, post_nms_top_n
        self.nms_thresh, self.score_thresh = nms_thresh, score_thresh
        self.min_size = 1e-3
        self.box_loss, self.box_loss_weight = box_loss, box_loss_weight
        self.objectness_loss, self.focal_alpha, self.focal_gamma = objectness_loss, focal_alpha, focal_gamma
        if objectness_loss == "focal":  # every anchor starts at probability focal_prior; weights as before
            nn.init.constant_(head.objectness.bias, prior_bias(focal_prior))

    def forward(
        self,
        batch_size: tuple[int, int],
        image_sizes: list[tuple[int, int]],
        features: list[Tensor],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """batch_size: the padded batch's (H, W); image_sizes: each image's own (h, w) inside it.

        Returns the proposals of each image, (P_i, 4), and the losses (training only).
        """
        objectness, deltas = self.head(features)
        shapes = [tuple(o.shape[-2:]) for o in objectness]
        dtype = full_precision_dtype(features[0].dtype)  # of the geometry: never 16-bit (precision.py)
        anchors = torch.cat(self.anchor_generator(batch_size, shapes, dtype, features[0].device))  # (R, 4)
        anchors_per_level = [o.shape[1] * o.shape[2] * o.shape[3] for o in objectness]
        objectness = torch.cat([flatten_anchor_outputs(o, 1) for o in objectness], dim=1)[..., 0].to(dtype)  # (N, R)
        deltas = torch.cat([flatten_anchor_outputs(d, 4) for d in deltas], dim=1).to(dtype)  # (N, R, 4)
        num_images = objectness.shape[0]

        proposals = self.box_coder.decode(deltas.detach().reshape(-1, 4), anchors.repeat(num_images, 1))
        proposals = proposals.view(num_images, -1, 4)  # (N, R, 4)
        boxes = self.filter_proposals(proposals, objectness.detach(), image_sizes, anchors_per_level)

        losses = {}
        if self.training:
            if targets is None:
                raise ValueError("rpn: targets are needed in training mode")
            losses = self.losses(anchors, objectness, deltas, targets)
        return boxes, losses

    def filter_proposals(self, proposals, objectness, image_sizes, anchors_per_level) -> list[Tensor]:
        """The proposals of each image: top-k per level, clip, remove small, NMS per level, top-k."""
        pre_nms_top_n = self.pre_nms_top_n[0 if self.training else 1]
        post_nms_top_n = self.post_nms_top_n[0 if self.training else 1]
        device = proposals.device
        levels = torch.cat(
            [torch.full((n,), i, dtype=torch.int64, device=device) for i, n in enumerate(anchors_per_level)]
        )
        top, offset = [], 0
        for logits in objectness.split(anchors_per_level, dim=1):  # (N, R_l)
            top.append(logits.topk(min(pre_nms_top_n, logits.shape[1]), dim=1).indices + offset)
            offset += logits.shape[1]
        top = torch.cat(top, dim=1)  # (N, T)
        rows = torch.arange(proposals.shape[0], device=device)[:, None]
        scores = torch.sigmoid(objectness[rows, top])  # (N, T)
        proposals, levels = proposals[rows, top], levels[top]  # (N, T, 4), (N, T)

        out = []
        for boxes, score, level, size in zip(proposals, scores, levels, image_sizes, strict=True):
            boxes = ops.clip_boxes_to_image(boxes, size)
            keep = ops.remove_small_boxes(boxes, self.min_size)
            boxes, score, level = boxes[keep], score[keep], level[keep]
            keep = torch.where(score >= self.score_thresh)[0]
            boxes, score, level = boxes[keep], score[keep], level[keep]
            keep = ops.batched_nms(boxes, score, level, self.nms_thresh)[:post_nms_top_n]
            out.append(boxes[keep])  # (P, 4)
        return out

    def losses(self, anchors: Tensor, objectness: Tensor, deltas: Tensor, targets) -> dict[str, Tensor]:
        sampled_pos, sampled_neg, labels, target_boxes = [], [], [], []
        for target in targets:
            gt_boxes = target["boxes"]  # (G, 4)
            matches = self.matcher(ops.box_iou(gt_boxes, anchors))  # (R,)
            label = (matches >= 0).to(objectness.dtype)  # 1 foreground
            label[matches == Matcher.BETWEEN_THRESHOLDS] = -1.0  # ignored
            pos, neg = self.sampler(label)
            sampled_pos.append(pos)
            sampled_neg.append(neg)
            labels.append(label)
            matched = gt_boxes[matches.clamp(min=0)] if len(gt_boxes) else torch.zeros_like(anchors)
            target_boxes.append(matched)  # (R, 4)
        pos = torch.where(torch.cat(sampled_pos))[0]  # over N * R
        sampled = torch.cat([pos, torch.where(torch.cat(sampled_neg))[0]])
        labels = torch.cat(labels)
        all_anchors = anchors.repeat(len(targets), 1)  # (N * R, 4)
        target_boxes = torch.cat(target_boxes)
        deltas = deltas.reshape(-1, 4)
        if self.box_loss in IOU_LOSSES:
            predicted = self.box_coder.decode(deltas[pos], all_anchors[pos])
            box_loss = IOU_LOSSES[self.box_loss](predicted, target_boxes[pos], reduction="sum")
        else:
            target_deltas = self.box_coder.encode(target_boxes[pos], all_anchors[pos])
            box_loss = F.smooth_l1_loss(deltas[pos], target_deltas, beta=1 / 9, reduction="sum")
        box_loss = self.box_loss_weight * box_loss / max(sampled.numel(), 1)
        if self.objectness_loss == "focal":
            objectness_loss = self.focal_objectness_loss(objectness.flatten(), labels)
        else:
            objectness_loss = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], labels[sampled])
        return {"loss_objectness": objectness_loss, "loss_rpn_box_reg": box_loss}

    def focal_objectness_loss(self, objectness: Tensor, labels: Tensor) -> Tensor:
        """RetinaNet's: over every anchor not ignored, no sampling; / max(1, positives). (N * R,), (N * R,)"""
        valid = labels >= 0  # 1 foreground, 0 background; -1 (between the thresholds) ignored
        loss = sigmoid_focal_loss(objectness[valid], labels[valid], self.focal_alpha, self.focal_gamma, reduction="sum")
        return loss / (labels > 0).sum().clamp(min=1)
