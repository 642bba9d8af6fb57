"""Worked solutions to the exercises of chapter 7, the Fast R-CNN box head (notebooks/07_fast_rcnn.ipynb).

`exercise_K` is the answer to exercise K in the form `exercises.ch07.exercise_K` takes; the reasoning
is in its docstring and comments. `MISTAKES[K]` is a plausible wrong answer, which the check rejects.
Try the exercise before you read on.
"""

import math

import torch
import torch.nn.functional as F

from minimtl import ops
from minimtl.losses import giou_loss

# --- 1. The foreground cap ---------------------------------------------------------------------------------


def exercise_1(num_foreground: int, num_background: int, batch_size_per_image: int, positive_fraction: float) -> float:
    """The sampler takes F = min(fg, int(batch * fraction)) foreground, then B = min(bg, batch - F).

    The cap is an upper bound: it changes the sample only when there are more foreground candidates
    than int(batch * fraction). Our images: about 100 proposals + 3 ground-truth boxes, 64 samples, cap
    16. Once the RPN has learnt, its proposals crowd onto the three objects, and many of them reach IoU
    0.5 with one: say 40. Capped, 16 of 64 samples are foreground (25 %); uncapped (fraction 1.0), 40 of
    64 (63 %): the classifier sees mostly objects, its loss falls faster, and it learns less about the
    background it must reject at test time (print `(torch.cat(labels) > 0).float().mean()` after
    training to see your run's value). A COCO image: 2000 proposals and about 7 objects; only an image
    crowded with objects has more than 128 foreground proposals, so there the cap seldom binds, and what
    keeps the batches from being nearly all background is the sampling itself (512 of 2000, at most a
    quarter foreground). The cap matters where foreground proposals are plentiful, as on our images.
    """
    kept_fg = min(num_foreground, int(batch_size_per_image * positive_fraction))
    kept_bg = min(num_background, batch_size_per_image - kept_fg)
    sampled = kept_fg + kept_bg
    return kept_fg / sampled if sampled else 0.0


def _assumes_a_full_batch(num_foreground, num_background, batch_size_per_image, positive_fraction):
    """Wrong: divides by the batch size, as if there were always enough candidates to fill it."""
    return min(num_foreground, int(batch_size_per_image * positive_fraction)) / batch_size_per_image


# --- 2. Class-agnostic deltas ---------------------------------------------------------------------------------


def agnostic_losses(heads, class_logits, deltas, proposals, matched, labels, targets) -> dict:
    """RoIHeads.losses with deltas (K, 4): no gather of the true class's 4 values any more.

    Only the regression term changes: every foreground RoI regresses its one box, whatever its class.
    The classification term and the division by the sampled count stay.
    """
    labels_all = torch.cat(labels)  # (K,)
    classification_loss = F.cross_entropy(class_logits, labels_all)
    pos = torch.where(labels_all > 0)[0]
    gt = torch.cat([t["boxes"][m] for t, m in zip(targets, matched, strict=True)])  # (K, 4) matched boxes
    target_deltas = heads.box_coder.encode(gt[pos], torch.cat(proposals)[pos])
    box_loss = F.smooth_l1_loss(deltas[pos], target_deltas, beta=1 / 9, reduction="sum")
    return {"loss_classifier": classification_loss, "loss_box_reg": box_loss / max(labels_all.numel(), 1)}


def agnostic_detect(heads, class_logits, deltas, proposals, image_sizes) -> list[dict]:
    """RoIHeads.detect with deltas (K, 4): one refined box per proposal, shared by all its classes.

    The candidates are still every (proposal, class) pair (exercise 3 says why); they now share the
    box, so per-class NMS and the rest are unchanged.

    Cascade R-CNN: each stage regresses the previous stage's boxes and feeds them to the next one. A
    class-agnostic regressor gives each proposal one box to pass on, with no decision of the class
    needed before the last stage, and it is trained on every foreground RoI instead of the RoIs of
    one class: C times the samples, which matters at the later stages' high IoU thresholds, where
    foreground RoIs are few. Its paper reports no loss of accuracy from it.
    """
    num_classes = class_logits.shape[-1]
    boxes = heads.box_coder.decode(deltas, torch.cat(proposals))  # (K, 4)
    boxes_all = boxes[:, None].expand(-1, num_classes, -1)  # (K, C, 4): the same box for every class
    scores_all = F.softmax(class_logits, -1)
    counts = [len(p) for p in proposals]
    out = []
    for boxes, scores, size in zip(boxes_all.split(counts), scores_all.split(counts), image_sizes, strict=True):
        boxes = ops.clip_boxes_to_image(boxes, size)
        labels = torch.arange(num_classes).view(1, -1).expand_as(scores)
        boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
        keep = torch.where(scores > heads.score_thresh)[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = ops.remove_small_boxes(boxes, min_size=1e-2)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = ops.batched_nms(boxes, scores, labels, heads.nms_thresh)[: heads.detections_per_img]
        out.append({"boxes": boxes[keep], "labels": labels[keep], "scores": scores[keep]})
    return out


exercise_2 = {"losses": agnostic_losses, "detect": agnostic_detect}


def _losses_over_foreground(heads, class_logits, deltas, proposals, matched, labels, targets):
    """Wrong: divides the box term by the foreground count instead of all samples (section 7.2)."""
    losses = agnostic_losses(heads, class_logits, deltas, proposals, matched, labels, targets)
    num_fg = max(int((torch.cat(labels) > 0).sum()), 1)
    losses["loss_box_reg"] = losses["loss_box_reg"] * torch.cat(labels).numel() / num_fg
    return losses


# --- 3. Every pair, or the argmax? ----------------------------------------------------------------------------
#
# A rider on a horse: the two objects have nearly the same box, so the RPN gives one proposal for both, and
# the classifier, which sees both, splits its probability: person 0.55, horse 0.40. The argmax rule turns
# the proposal into one detection, "person", and the horse is lost (no other proposal is left to find it:
# the others are near-duplicates that NMS would remove). Every (proposal, class) pair makes two candidates,
# person 0.55 and horse 0.40, in two classes, so per-class NMS keeps both. Classes: 0 background, 1
# person, 2 horse; the deltas are zero, so the detections' boxes are the proposal.
exercise_3 = {
    "proposals": torch.tensor([[21.0, 22.0, 81.0, 102.0]]),
    "class_logits": torch.log(torch.tensor([[0.05, 0.55, 0.40]])),  # softmax gives back these probabilities
    "boxes": torch.tensor([[20.0, 20.0, 80.0, 100.0], [22.0, 24.0, 82.0, 104.0]]),  # the person, the horse
    "labels": torch.tensor([1, 2]),
}

_EASY = {  # wrong: each object has its own confident proposal, which the argmax rule finds as well
    "proposals": torch.tensor([[20.0, 20.0, 60.0, 60.0], [70.0, 70.0, 110.0, 110.0]]),
    "class_logits": torch.log(torch.tensor([[0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])),
    "boxes": torch.tensor([[20.0, 20.0, 60.0, 60.0], [70.0, 70.0, 110.0, 110.0]]),
    "labels": torch.tensor([1, 2]),
}


# --- 4. GIoU for the box head -------------------------------------------------------------------------------


def exercise_4(heads, deltas, proposals, matched, labels, targets):
    """The box term of RoIHeads.losses with box_loss="giou".

    Decode the true class's deltas with the head's own coder (weights 10, 10, 5, 5: the deltas were
    predicted in those units), and compare the boxes themselves: 1 - GIoU, summed over the foreground,
    divided by all samples as the smooth-L1 term is. To compare the two trained models, take for each
    object the best IoU of a detection of its class (section 7.4's last figure); the difference on this
    easy scene is small, and one seed cannot tell it from noise.
    """
    labels_all = torch.cat(labels)
    pos = torch.where(labels_all > 0)[0]
    pos_deltas = deltas.reshape(len(labels_all), -1, 4)[pos, labels_all[pos]]  # (F, 4)
    gt = torch.cat([t["boxes"][m] for t, m in zip(targets, matched, strict=True)])
    predicted = heads.box_coder.decode(pos_deltas, torch.cat(proposals)[pos])
    return giou_loss(predicted, gt[pos], reduction="sum") / max(labels_all.numel(), 1)


def _decodes_with_unit_weights(heads, deltas, proposals, matched, labels, targets):
    """Wrong: decodes with the RPN's unit weights; the box head's deltas are in units of (10, 10, 5, 5)."""
    from minimtl.modeling.box_coder import BoxCoder

    labels_all = torch.cat(labels)
    pos = torch.where(labels_all > 0)[0]
    pos_deltas = deltas.reshape(len(labels_all), -1, 4)[pos, labels_all[pos]]
    gt = torch.cat([t["boxes"][m] for t, m in zip(targets, matched, strict=True)])
    predicted = BoxCoder((1.0, 1.0, 1.0, 1.0)).decode(pos_deltas, torch.cat(proposals)[pos])
    return giou_loss(predicted, gt[pos], reduction="sum") / max(labels_all.numel(), 1)


# --- 5. Unit weights ---------------------------------------------------------------------------------------
#
# A width 10 % too large: the predicted dw is off by log(1.1) = 0.0953 in units of ww. With ww = 1 the error
# is 0.0953 < beta = 1/9 = 0.111: the quadratic branch, 0.5 * 0.0953^2 / (1/9) = 0.0409. With ww = 5 it is
# 0.477, in the linear branch: 0.477 - 0.5/9 = 0.421, ten times more, with a gradient of constant size
# instead of one that vanishes near 0. The weights scale the small errors of a second stage up to where
# beta = 1/9 was tuned. To compensate with unit weights, scale the loss back: since
# smooth_l1(c x; beta) = c * smooth_l1(x; beta / c), use beta / 5 = 1/45 and multiply the loss by 5 (for the
# width and height; beta / 10 and 10 for the centre).
exercise_5 = {"loss": 0.5 * math.log(1.1) ** 2 * 9, "branch": "quadratic", "beta": 1 / 45, "scale": 5.0}


# --- 6. One NMS over all classes ------------------------------------------------------------------------------


def exercise_6(heads, class_logits, deltas, proposals, image_sizes) -> list[dict]:
    """RoIHeads.detect with ops.nms in place of ops.batched_nms(..., labels, ...).

    What disappears in section 7.4: a box of one class that overlaps (IoU > 0.5) a higher-scoring box
    of another class, typically the second most likely class of the same proposal (its box, decoded
    with that class's deltas, nearly coincides with the best class's). On the chapter's scene the
    objects of different colours overlap little, so what goes are those low-scoring other-class
    duplicates; on real images, overlapping objects of different classes (a rider and a horse) would
    be lost too.
    """
    num_classes = class_logits.shape[-1]
    boxes_all = heads.box_coder.decode(deltas, torch.cat(proposals)).reshape(len(deltas), -1, 4)  # (K, C, 4)
    scores_all = F.softmax(class_logits, -1)
    counts = [len(p) for p in proposals]
    out = []
    for boxes, scores, size in zip(boxes_all.split(counts), scores_all.split(counts), image_sizes, strict=True):
        boxes = ops.clip_boxes_to_image(boxes, size)
        labels = torch.arange(num_classes).view(1, -1).expand_as(scores)
        boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
        keep = torch.where(scores > heads.score_thresh)[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = ops.remove_small_boxes(boxes, min_size=1e-2)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = ops.nms(boxes, scores, heads.nms_thresh)[: heads.detections_per_img]  # classes compete
        out.append({"boxes": boxes[keep], "labels": labels[keep], "scores": scores[keep]})
    return out


def _argmax_then_nms(heads, class_logits, deltas, proposals, image_sizes):
    """Wrong: keeps one class per proposal (the argmax, background included) before one NMS; that drops the
    foreground classes of every proposal whose most likely class is the background."""
    counts = [len(p) for p in proposals]
    boxes_all = heads.box_coder.decode(deltas, torch.cat(proposals)).reshape(len(deltas), -1, 4)
    out = []
    for boxes, scores, size in zip(
        boxes_all.split(counts), F.softmax(class_logits, -1).split(counts), image_sizes, strict=True
    ):
        score, label = scores.max(dim=1)
        boxes = ops.clip_boxes_to_image(boxes[torch.arange(len(label)), label], size)
        keep = torch.where((label > 0) & (score > heads.score_thresh))[0]
        boxes, score, label = boxes[keep], score[keep], label[keep]
        keep = ops.remove_small_boxes(boxes, min_size=1e-2)
        boxes, score, label = boxes[keep], score[keep], label[keep]
        keep = ops.nms(boxes, score, heads.nms_thresh)[: heads.detections_per_img]
        out.append({"boxes": boxes[keep], "labels": label[keep], "scores": score[keep]})
    return out


MISTAKES = {
    1: _assumes_a_full_batch,
    2: {"losses": _losses_over_foreground, "detect": agnostic_detect},
    3: _EASY,
    4: _decodes_with_unit_weights,
    5: {"loss": 0.5 * (5 * math.log(1.1)) ** 2 * 9, "branch": "quadratic", "beta": 5 / 9, "scale": 1 / 5},
    6: _argmax_then_nms,
}
