"""The second stage: the Fast R-CNN box head (Girshick, ICCV 2015; FPN section 4.2), and the hook
for the Mask R-CNN mask head (mask_head.py).

Each proposal is pooled to a 7 x 7 x C feature (poolers.py), flattened, passed through two
1024-wide fully connected layers, and classified into C classes (0 = background) with one set of
box deltas per class (weights 10, 10, 5, 5; box_coder.py).

Training: the ground-truth boxes join the proposals; a proposal is foreground (label of its best
ground-truth box) at IoU >= 0.5, else background; 512 are sampled per image, 25 % foreground at most.

    L = cross_entropy(class logits, labels)
      + smooth_l1(deltas of the true class, target deltas; beta = 1/9) over foreground / sampled count

Inference: softmax scores; every (proposal, class != 0) pair is a candidate box; keep those with
score > 0.05 and a side >= 0.01 px, NMS at 0.5 within each class, the 100 best per image.

This is the published head: Mask R-CNN's L_cls and L_box are Fast R-CNN's cross-entropy and smooth L1
(He et al., ICCV 2017, section 3; Fast R-CNN section 2.3). Focal and the IoU family are options, each
replacing one term only:

  classifier_loss "focal" (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017: section 3,
  eq. 5; section 4, the one-sigmoid-per-class subnet; section 4.1), one-vs-all over the foreground:
      y = one-hot of the label over classes 1..C-1 (all zeros for background), p = sigmoid(logits[:, 1:])
      L_cls = sum of FL(p_t) over the sampled RoIs and classes 1..C-1  /  max(1, foreground RoIs)
      FL(p_t) = -α_t (1 - p_t)^γ log(p_t)        (focal.py; focal_alpha 0.25, focal_gamma 2)
  The predictor keeps C outputs (checkpoints keep their shapes); logit 0 (background) is unused.
  The foreground biases start at -log((1 - π) / π), π = focal_prior = 0.01 (section 4.1,
  "Initialization"): every RoI starts at probability π for every class. Inference scores with
  sigmoid(logits[:, 1:]) instead of the softmax: each class's score is its own, they need not sum to 1.

  box_loss "giou" | "diou" | "ciou" (minimtl/losses/box.py: Rezatofighi et al., CVPR 2019; Zheng et al.,
  AAAI 2020): 1 - GIoU / DIoU / CIoU of the true class's decoded box against the matched ground-truth
  box, summed over foreground / sampled count, as smooth L1.
  box_loss_weight (default 1) multiplies the box term, whichever loss it is; the IoU family is usually
  scaled up (mmdetection's Faster R-CNN configurations: 10 for GIoU, 12 for CIoU, the RPN left at L1).

Shapes: N images, P proposals per image (K over the batch), C classes including background.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minimtl import ops
from minimtl.losses import sigmoid_focal_loss
from minimtl.modeling.box_coder import BoxCoder
from minimtl.modeling.mask_head import MaskHead
from minimtl.modeling.matcher import Matcher
from minimtl.modeling.poolers import MultiScaleRoIAlign
from minimtl.modeling.precision import full_precision
from minimtl.modeling.rpn import BOX_LOSSES, IOU_LOSSES, prior_bias, quoted_options
from minimtl.modeling.sampler import BalancedPositiveNegativeSampler


class TwoMLPHead(nn.Module):
    """(K, C, 7, 7) -> (K, representation_size): flatten, fc6, ReLU, fc7, ReLU."""

    def __init__(self, in_features: int, representation_size: int = 1024):
        super().__init__()
        self.fc6 = nn.Linear(in_features, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.fc7(F.relu(self.fc6(x.flatten(1)))))


class FastRCNNPredictor(nn.Module):
    """(K, D) -> class logits (K, C), class-specific deltas (K, 4 * C)."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes)
        self.bbox_pred = nn.Linear(in_features, num_classes * 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


class RoIHeads(nn.Module):
    def __init__(
        self,
        box_pooler: MultiScaleRoIAlign,
        box_head: nn.Module,
        box_predictor: nn.Module,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.5,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        box_loss: str = "smooth_l1",
        mask_head: MaskHead | None = None,
        classifier_loss: str = "ce",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        focal_prior: float = 0.01,
        box_loss_weight: float = 1.0,
    ):
        super().__init__()
        if box_loss not in BOX_LOSSES:
            raise ValueError(f"roi_heads: box_loss must be {quoted_options(BOX_LOSSES)}, got {box_loss!r}")
        if not 0 <= box_loss_weight < math.inf:
            raise ValueError(f"roi_heads: box_loss_weight must be a finite number >= 0, got {box_loss_weight}")
        if classifier_loss not in ("ce", "focal"):
            raise ValueError(f"roi_heads: classifier_loss must be 'ce' or 'focal', got {classifier_loss!r}")
        if not 0 < focal_prior < 1:
            raise ValueError(f"roi_heads: focal_prior must be in (0, 1), got {focal_prior}")
        self.box_pooler, self.box_head, self.box_predictor = box_pooler, box_head, box_predictor
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.box_coder = BoxCoder(bbox_reg_weights)
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img
        self.box_loss, self.box_loss_weight = box_loss, box_loss_weight
        self.classifier_loss, self.focal_alpha, self.focal_gamma = classifier_loss, focal_alpha, focal_gamma
        if classifier_loss == "focal":  # every RoI starts at probability focal_prior per class; weights as before
            if not isinstance(getattr(box_predictor, "cls_score", None), nn.Linear):
                raise ValueError("roi_heads: classifier_loss 'focal' initialises box_predictor.cls_score, an nn.Linear")
            nn.init.constant_(box_predictor.cls_score.bias[1:], prior_bias(focal_prior))  # [0]: background, unused
        self.mask_head = mask_head

    def forward(
        self,
        features: list[Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("roi_heads: targets are needed in training mode")
            proposals, matched, labels = self.sample_proposals(proposals, targets)
        box_features = self.box_head(self.box_pooler(features, proposals, image_sizes))  # (K, D)
        class_logits, deltas = map(full_precision, self.box_predictor(box_features))  # (K, C), (K, 4C)

        if self.training:
            losses = self.losses(class_logits, deltas, proposals, matched, labels, targets)
            if self.mask_head is not None:
                losses.update(self.mask_head.losses(features, proposals, matched, labels, targets, image_sizes))
            return [], losses

        detections = self.detect(class_logits, deltas, proposals, image_sizes)
        if self.mask_head is not None:
            self.mask_head.predict(features, detections, image_sizes)
        return detections, {}

    def sample_proposals(self, proposals: list[Tensor], targets: list[dict[str, Tensor]]):
        """Add the ground truth to the proposals, label them, sample. Per image: (S, 4), (S,), (S,)."""
        sampled, matched_gt, labels = [], [], []
        for boxes, target in zip(proposals, targets, strict=True):
            gt_boxes, gt_labels = target["boxes"].to(boxes.dtype), target["labels"]
            boxes = torch.cat([boxes, gt_boxes])  # (P + G, 4)
            matches = self.matcher(ops.box_iou(gt_boxes, boxes))  # (P + G,)
            label = gt_labels[matches.clamp(min=0)] if len(gt_boxes) else torch.zeros_like(matches)
            label = label.to(torch.int64)
            label[matches == Matcher.BELOW_LOW_THRESHOLD] = 0  # background
            label[matches == Matcher.BETWEEN_THRESHOLDS] = -1  # ignored (never sampled)
            pos, neg = self.sampler(label)
            keep = torch.where(pos | neg)[0]
            sampled.append(boxes[keep])
            matched_gt.append(matches.clamp(min=0)[keep])  # index of the matched ground truth
            labels.append(label[keep])
        return sampled, matched_gt, labels

    def losses(self, class_logits, deltas, proposals, matched, labels, targets) -> dict[str, Tensor]:
        labels_all = torch.cat(labels)  # (K,)
        pos = torch.where(labels_all > 0)[0]
        classification_loss = self.classification_loss(class_logits, labels_all, len(pos))
        pos_deltas = deltas.reshape(len(labels_all), -1, 4)[pos, labels_all[pos]]  # (F, 4), the true class's
        gt = torch.cat(
            [
                t["boxes"][m] if len(t["boxes"]) else torch.zeros_like(p)
                for t, m, p in zip(targets, matched, proposals, strict=True)
            ]
        )
        references = torch.cat(proposals)
        if self.box_loss in IOU_LOSSES:
            predicted = self.box_coder.decode(pos_deltas, references[pos])  # (F, 4)
            box_loss = IOU_LOSSES[self.box_loss](predicted, gt[pos], reduction="sum")
        else:
            target_deltas = self.box_coder.encode(gt[pos], references[pos])
            box_loss = F.smooth_l1_loss(pos_deltas, target_deltas, beta=1 / 9, reduction="sum")
        box_loss = self.box_loss_weight * box_loss / max(labels_all.numel(), 1)
        return {"loss_classifier": classification_loss, "loss_box_reg": box_loss}

    def classification_loss(self, class_logits: Tensor, labels: Tensor, num_foreground: int) -> Tensor:
        """Cross-entropy (mean over the sampled RoIs), or the one-vs-all focal loss / max(1, foreground)."""
        if self.classifier_loss == "ce":
            return F.cross_entropy(class_logits, labels)
        one_hot = F.one_hot(labels, class_logits.shape[-1])[:, 1:].to(class_logits.dtype)  # (K, C-1); background 0s
        loss = sigmoid_focal_loss(class_logits[:, 1:], one_hot, self.focal_alpha, self.focal_gamma, reduction="sum")
        return loss / max(num_foreground, 1)

    def detect(self, class_logits, deltas, proposals, image_sizes) -> list[dict[str, Tensor]]:
        """Per image: the detections' boxes (D, 4), scores (D,) and labels (D,)."""
        num_classes = class_logits.shape[-1]
        boxes_all = self.box_coder.decode(deltas, torch.cat(proposals)).reshape(len(deltas), -1, 4)  # (K, C, 4)
        # (K, C); with focal each class is its own sigmoid (column 0, unused, is dropped below with the background)
        scores_all = torch.sigmoid(class_logits) if self.classifier_loss == "focal" else F.softmax(class_logits, -1)
        out = []
        counts = [len(p) for p in proposals]
        for boxes, scores, size in zip(boxes_all.split(counts), scores_all.split(counts), image_sizes, strict=True):
            boxes = ops.clip_boxes_to_image(boxes, size)
            labels = torch.arange(num_classes, device=boxes.device).view(1, -1).expand_as(scores)
            # every (proposal, class) pair except the background class is a candidate
            boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
            keep = torch.where(scores > self.score_thresh)[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = ops.remove_small_boxes(boxes, min_size=1e-2)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = ops.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            out.append({"boxes": boxes[keep], "labels": labels[keep], "scores": scores[keep]})
        return out
