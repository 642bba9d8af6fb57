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

Shapes: N images, P proposals per image (K over the batch), C classes including background.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minimtl import ops
from minimtl.losses import giou_loss
from minimtl.modeling.box_coder import BoxCoder
from minimtl.modeling.mask_head import MaskHead
from minimtl.modeling.matcher import Matcher
from minimtl.modeling.poolers import MultiScaleRoIAlign
from minimtl.modeling.precision import full_precision
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
    ):
        super().__init__()
        if box_loss not in ("smooth_l1", "giou"):
            raise ValueError(f"roi_heads: box_loss must be 'smooth_l1' or 'giou', got {box_loss!r}")
        self.box_pooler, self.box_head, self.box_predictor = box_pooler, box_head, box_predictor
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.box_coder = BoxCoder(bbox_reg_weights)
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img
        self.box_loss = box_loss
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
        classification_loss = F.cross_entropy(class_logits, labels_all)
        pos = torch.where(labels_all > 0)[0]
        pos_deltas = deltas.reshape(len(labels_all), -1, 4)[pos, labels_all[pos]]  # (F, 4), the true class's
        gt = torch.cat(
            [
                t["boxes"][m] if len(t["boxes"]) else torch.zeros_like(p)
                for t, m, p in zip(targets, matched, proposals, strict=True)
            ]
        )
        references = torch.cat(proposals)
        if self.box_loss == "giou":
            box_loss = giou_loss(self.box_coder.decode(pos_deltas, references[pos]), gt[pos], reduction="sum")
        else:
            target_deltas = self.box_coder.encode(gt[pos], references[pos])
            box_loss = F.smooth_l1_loss(pos_deltas, target_deltas, beta=1 / 9, reduction="sum")
        return {"loss_classifier": classification_loss, "loss_box_reg": box_loss / max(labels_all.numel(), 1)}

    def detect(self, class_logits, deltas, proposals, image_sizes) -> list[dict[str, Tensor]]:
        """Per image: the detections' boxes (D, 4), scores (D,) and labels (D,)."""
        num_classes = class_logits.shape[-1]
        boxes_all = self.box_coder.decode(deltas, torch.cat(proposals)).reshape(len(deltas), -1, 4)  # (K, C, 4)
        scores_all = F.softmax(class_logits, -1)  # (K, C)
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
