"""Worked solutions to the exercises of chapter 6, the Region Proposal Network (notebooks/06_rpn.ipynb).

`exercise_K` is the answer to exercise K in the form `exercises.ch06.exercise_K` takes; the reasoning
is in its docstring and comments. `MISTAKES[K]` is a plausible wrong answer, which the check rejects.
Try the exercise before you read on.
"""

import torch
from torch import Tensor, nn

from minimtl import ops

# --- 1. No low-quality matches -------------------------------------------------------------------------
#
#   quality = ops.box_iou(targets[0]["boxes"], all_anchors)
#   matches = Matcher(0.7, 0.3, allow_low_quality_matches=False)(quality)
#   [(matches == g).sum().item() for g in range(3)]          # [1, 0, 1]  (with the rule: [1, 2, 1])
#
# The 35 x 50 box (box 1) fits no anchor well: its best IoU is 0.59, between the two thresholds. Without
# rule (i) those best anchors are *ignored*: they enter neither the objectness loss nor the box loss,
# and every anchor further off it (IoU < 0.3) is a negative. Nothing in the loss then ever says "there
# is an object here": the RPN is trained to call the anchors around it background and learns to
# propose it only as far as it generalises from the other two boxes. Rule (i) exists for such boxes.
exercise_1 = {"positives": [1, 0, 1], "lost": 1, "best_anchors": "ignored"}


# --- 2. A box that overlaps no anchor ----------------------------------------------------------------


def exercise_2(quality: Tensor, matches: Tensor) -> Tensor:
    """Rule (i) on top of the thresholds' matches, with the guard minimtl's Matcher has.

    Without the guard, a box whose best IoU is 0 "claims its best anchors": every anchor ties at 0
    with it, so *every* anchor turns positive (torchvision's matcher does this; the image becomes all
    foreground, and the box loss regresses thousands of anchors onto a box they do not touch). A box
    that overlaps nothing cannot be learnt by the RPN anyway, so the guard is: claim only at IoU > 0.
    (Dropping such boxes from the targets, or clipping them to the image, are guards one step earlier.)
    """
    if quality.shape[0] == 0:  # no ground truth: nothing to claim (and no argmax over an empty dim)
        return matches
    best_gt = quality.argmax(dim=0)  # (R,): the box each anchor overlaps most (ties: the first box)
    best_per_gt = quality.max(dim=1).values  # (G,)
    is_best = (quality == best_per_gt[:, None]) & (best_per_gt[:, None] > 0)  # (G, R): all ties, never at 0
    anchors = torch.where(is_best.any(dim=0))[0]
    matches = matches.clone()
    matches[anchors] = best_gt[anchors]  # the anchor's own best box, which may be another one than g
    return matches


def _torchvision_rule(quality: Tensor, matches: Tensor) -> Tensor:
    """The same without the guard: a box at IoU 0 with everything makes every anchor positive."""
    if quality.shape[0] == 0:
        return matches
    best_per_gt = quality.max(dim=1).values
    anchors = torch.where((quality == best_per_gt[:, None]).any(dim=0))[0]
    matches = matches.clone()
    matches[anchors] = quality.argmax(dim=0)[anchors]
    return matches


# --- 3. One NMS over all levels --------------------------------------------------------------------------


def exercise_3(rpn, proposals: Tensor, objectness: Tensor, image_sizes, anchors_per_level) -> list[Tensor]:
    """filter_proposals with `ops.nms` in place of `ops.batched_nms(..., level, ...)`; the rest unchanged.

    The top-k stays per level (it keeps one level from flooding the others before NMS); only the
    suppression now runs across levels: a box of P3 can remove a box of P2 that covers the same object.
    On the trained model of section 6.4 this usually gives fewer final proposals (cross-level duplicates go:
    section 6.5 counts them for image 0). The first proposals are the best-scoring ones either way, so
    look for a change in the recall of the first 10, 50 and 100 where one level's duplicate used to push
    another object's box down the list.
    """
    pre_nms_top_n = rpn.pre_nms_top_n[0 if rpn.training else 1]
    post_nms_top_n = rpn.post_nms_top_n[0 if rpn.training else 1]
    top, offset = [], 0
    for logits in objectness.split(anchors_per_level, dim=1):  # (N, R_l)
        top.append(logits.topk(min(pre_nms_top_n, logits.shape[1]), dim=1).indices + offset)
        offset += logits.shape[1]
    top = torch.cat(top, dim=1)  # (N, T)
    rows = torch.arange(proposals.shape[0])[:, None]
    scores, proposals = torch.sigmoid(objectness[rows, top]), proposals[rows, top]  # (N, T), (N, T, 4)
    out = []
    for boxes, score, size in zip(proposals, scores, image_sizes, strict=True):
        boxes = ops.clip_boxes_to_image(boxes, size)
        keep = ops.remove_small_boxes(boxes, rpn.min_size)
        boxes, score = boxes[keep], score[keep]
        keep = torch.where(score >= rpn.score_thresh)[0]
        boxes, score = boxes[keep], score[keep]
        keep = ops.nms(boxes, score, rpn.nms_thresh)[:post_nms_top_n]  # one NMS: levels compete
        out.append(boxes[keep])
    return out


def _one_topk_one_nms(rpn, proposals, objectness, image_sizes, anchors_per_level):
    """Wrong: the top-k taken over all levels at once too (the level with the highest logits takes all)."""
    return exercise_3(rpn, proposals, objectness, image_sizes, [sum(anchors_per_level)])


# --- 4. The mean best IoU ----------------------------------------------------------------------------------


def exercise_4(proposals: list[Tensor], targets: list[dict]) -> float:
    """For each ground-truth box, its best IoU with its image's proposals; the mean over all boxes.

    The max runs over the proposals (dim 1 of the (G, P) IoU matrix): the question is "how well is
    each object covered", not "how good is each proposal". An image without proposals leaves its
    boxes uncovered: 0 each (`max` over an empty dim would raise).
    """
    best = [
        ops.box_iou(t["boxes"], p).max(dim=1).values if len(p) else torch.zeros(len(t["boxes"]))
        for p, t in zip(proposals, targets, strict=True)
    ]
    return torch.cat(best).mean().item()


def _best_per_proposal(proposals, targets):
    """Wrong: the best IoU of each proposal with any box, averaged: it measures the proposals, not the recall."""
    best = [ops.box_iou(t["boxes"], p).max(dim=0).values for p, t in zip(proposals, targets, strict=True)]
    return torch.cat(best).mean().item()


# --- 5. Dividing by the positives ---------------------------------------------------------------------------


def exercise_5(num_positives: int, batch_size_per_image: int = 256, positive_fraction: float = 0.5) -> float:
    """|S| / |P|: the box loss is a sum over the sampled positives P, divided by |S| or by |P|.

    The sampler keeps P = min(positives, int(256 * 0.5) = 128) and fills S up to 256 with negatives.
    One object brings a handful of positive anchors (section 6.2: 1 to 3 each): with 3, the loss grows
    by 256 / 3 = 85. Twenty objects with 3 each: 256 / 60 = 4.3. From 128 positives on, always 2. So
    dividing by |P| makes each positive weigh the same whatever the image, while dividing by |S|
    (minimtl, torchvision, Detectron) makes an image with few objects contribute a small box loss, and
    keeps the box term's scale fixed relative to the objectness term, which is also over |S|.
    """
    kept = min(num_positives, int(batch_size_per_image * positive_fraction))
    return batch_size_per_image / kept


def _forgets_the_cap(num_positives, batch_size_per_image=256, positive_fraction=0.5):
    """Wrong: assumes the sampler keeps every positive; past 128 positives it keeps 128."""
    return batch_size_per_image / num_positives


# --- 6. One logit or two --------------------------------------------------------------------------------------


def exercise_6(conv: nn.Conv2d) -> nn.Conv2d:
    """softmax(z_bg, z_obj)[obj] = e^z_obj / (e^z_bg + e^z_obj) = sigmoid(z_obj - z_bg).

    A softmax only sees differences of logits: adding the same number to both changes nothing, so
    the two-logit layer has one redundant output per anchor. Both logits are linear in the input
    (the same conv), so their difference is a conv too, with weights w_obj - w_bg and bias b_obj - b_bg:
    the one-logit head with a sigmoid computes exactly the same probabilities, with half the outputs.
    Conversely, any one-logit layer z is the two-logit layer (0, z). Their cross-entropies are equal
    too: BCE(z_obj - z_bg, y) = CE((z_bg, z_obj), y).
    """
    num_anchors = conv.out_channels // 2
    one = nn.Conv2d(conv.in_channels, num_anchors, conv.kernel_size, conv.stride, conv.padding)
    with torch.no_grad():
        one.weight.copy_(conv.weight[1::2] - conv.weight[0::2])  # channel 2a + 1 (object) - 2a (background)
        one.bias.copy_(conv.bias[1::2] - conv.bias[0::2])
    return one


def _object_logit_only(conv: nn.Conv2d) -> nn.Conv2d:
    """Wrong: keeps the object logits and drops the background's; the sigmoid of z_obj is not the softmax."""
    one = nn.Conv2d(conv.in_channels, conv.out_channels // 2, conv.kernel_size, conv.stride, conv.padding)
    with torch.no_grad():
        one.weight.copy_(conv.weight[1::2])
        one.bias.copy_(conv.bias[1::2])
    return one


MISTAKES = {
    1: {"positives": [1, 2, 1], "lost": 1, "best_anchors": "negative"},  # the counts with the rule still on
    2: _torchvision_rule,
    3: _one_topk_one_nms,
    4: _best_per_proposal,
    5: _forgets_the_cap,
    6: _object_logit_only,
}
