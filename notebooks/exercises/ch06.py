"""Checks for the exercises of chapter 6, the Region Proposal Network (notebooks/06_rpn.ipynb, 6.7).

`exercise_K(answer)` returns quietly when the answer to exercise K is right, and raises an
AssertionError that says what is wrong otherwise. Each check compares the answer with minimtl's own
code (`Matcher`, `BalancedPositiveNegativeSampler`, `RegionProposalNetwork`, `ops`) on hand cases,
edge cases and seeded random inputs; none trains a model. Worked solutions: notebooks/solutions/ch06.py.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from exercises.common import call as _call
from exercises.common import close as _close
from exercises.common import has_keys as _keys
from exercises.common import keeps_global_rng as _keeps_global_rng
from exercises.common import number as _number
from minimtl import ops
from minimtl.modeling.anchors import AnchorGenerator
from minimtl.modeling.matcher import Matcher
from minimtl.modeling.rpn import RegionProposalNetwork, RPNHead
from minimtl.modeling.sampler import BalancedPositiveNegativeSampler

# The chapter's scene (sections 6.1-6.2): the boxes of image 0, and the small model's anchors (one size
# per level, P2..P6 at strides 4..64) on its 128 x 128 images.
SCENE_BOXES = torch.tensor([[10.0, 15, 50, 45], [70, 60, 105, 110], [20, 80, 50, 110]])
SMALL_ANCHOR_SIZES = ((16,), (32,), (64,), (128,), (256,))
LABELS = ("positive", "negative", "ignored")


# --- helpers: every failure is an AssertionError that names the exercise ---------------------------


def small_anchors() -> Tensor:
    """The anchors of the chapter's small model on a 128 x 128 image, all levels: (4092, 4)."""
    shapes = [(128 // s, 128 // s) for s in (4, 8, 16, 32, 64)]
    return torch.cat(AnchorGenerator(SMALL_ANCHOR_SIZES)((128, 128), shapes))


# --- the exercises -----------------------------------------------------------------------------------


@_keeps_global_rng
def exercise_1(answer: dict) -> None:
    """answer: {"positives": [count per box of image 0], "lost": box index, "best_anchors": label}."""
    _keys(1, answer, ("positives", "lost", "best_anchors"))
    quality = ops.box_iou(SCENE_BOXES, small_anchors())  # (3, R)
    strict = Matcher(0.7, 0.3, allow_low_quality_matches=False)(quality)
    with_rule = Matcher(0.7, 0.3, allow_low_quality_matches=True)(quality)
    expected = [int((strict == g).sum()) for g in range(len(SCENE_BOXES))]
    positives = list(answer["positives"])
    assert len(positives) == len(expected), f"exercise 1: give one count per box of image 0 (3), got {positives}"
    for g, (got, want) in enumerate(zip(positives, expected, strict=True)):
        if int(got) != want and int(got) == int((with_rule == g).sum()):
            raise AssertionError(
                f"exercise 1: box {g}: {got} is its count *with* the low-quality matches; build the Matcher with "
                "allow_low_quality_matches=False"
            )
        assert int(got) == want, f"exercise 1: box {g} {SCENE_BOXES[g].tolist()} has a different count, not {got}"
    lost = [g for g, n in enumerate(expected) if n == 0]
    assert answer["lost"] in lost, f"exercise 1: box {answer['lost']} keeps positive anchors; which one has none?"
    best = answer["best_anchors"]
    assert best in LABELS, f"exercise 1: best_anchors should be one of {LABELS}, got {best!r}"
    g = lost[0]
    best_iou = quality[g].max().item()
    expected_label = "positive" if best_iou >= 0.7 else ("ignored" if best_iou >= 0.3 else "negative")
    assert best == expected_label, (
        f"exercise 1: the best anchors of box {g} have IoU {best_iou:.2f} with it; between 0.3 and 0.7 an anchor "
        f"is {expected_label}, not {best}"
    )


@_keeps_global_rng
def exercise_2(low_quality_matches) -> None:
    """low_quality_matches(quality (G, R), matches (R,)) -> (R,) int64: rule (i), with a guard."""
    strict = Matcher(0.7, 0.3, allow_low_quality_matches=False)
    reference = Matcher(0.7, 0.3, allow_low_quality_matches=True)
    generator = torch.Generator().manual_seed(0)
    cases = {
        "a box that overlaps nothing (row 1 all zeros)": torch.tensor(
            [[0.5, 0.2, 0.0, 0.8, 0.1], [0.0, 0.0, 0.0, 0.0, 0.0]]
        ),
        "a tie for a box's best anchor": torch.tensor([[0.4, 0.1, 0.4, 0.0], [0.0, 0.2, 0.1, 0.0]]),
        "a box's best anchor that overlaps another box more": torch.tensor([[0.6, 0.1, 0.0], [0.5, 0.2, 0.0]]),
        "an image without ground truth (G = 0)": torch.zeros(0, 6),
    }
    for g in (1, 3, 6):  # random IoU-like matrices, most entries 0 as for real anchors
        quality = torch.rand(g, 40, generator=generator)
        quality = quality * (torch.rand(g, 40, generator=generator) < 0.3)
        quality[torch.rand(g, generator=generator) < 0.3] = 0.0  # some boxes overlap no anchor at all
        cases[f"random, {g} boxes"] = quality
    for name, quality in cases.items():
        matches = strict(quality)
        got = _call(2, low_quality_matches, quality.clone(), matches.clone())
        expected = reference(quality)
        if not isinstance(got, Tensor) or got.shape != expected.shape:
            raise AssertionError(f"exercise 2 ({name}): return the matches, a tensor of shape {tuple(expected.shape)}")
        if not torch.equal(got.long(), expected):
            wrong = torch.where(got.long() != expected)[0].tolist()
            zero_rows = torch.where(quality.amax(dim=1) == 0)[0].tolist() if len(quality) else []
            hint = ""
            if zero_rows and (got >= 0).sum() > (expected >= 0).sum():
                hint = (
                    f" A box whose best IoU is 0 (box {zero_rows[0]}) must claim nothing: otherwise every anchor "
                    "at IoU 0 ties for its best and turns positive."
                )
            raise AssertionError(
                f"exercise 2 ({name}): anchors {wrong[:8]} get {got[wrong[:8]].tolist()}, minimtl's Matcher gives "
                f"{expected[wrong[:8]].tolist()}.{hint}"
            )


def filter_one_nms_reference(rpn: RegionProposalNetwork, proposals, objectness, image_sizes, anchors_per_level):
    """RegionProposalNetwork.filter_proposals with one NMS over all levels (ops.nms for ops.batched_nms)."""
    pre_nms_top_n = rpn.pre_nms_top_n[0 if rpn.training else 1]
    post_nms_top_n = rpn.post_nms_top_n[0 if rpn.training else 1]
    top, offset = [], 0
    for logits in objectness.split(anchors_per_level, dim=1):  # (N, R_l): the top-k stays per level
        top.append(logits.topk(min(pre_nms_top_n, logits.shape[1]), dim=1).indices + offset)
        offset += logits.shape[1]
    top = torch.cat(top, dim=1)  # (N, T)
    rows = torch.arange(proposals.shape[0])[:, None]
    scores, proposals = torch.sigmoid(objectness[rows, top]), proposals[rows, top]
    out = []
    for boxes, score, size in zip(proposals, scores, image_sizes, strict=True):
        boxes = ops.clip_boxes_to_image(boxes, size)
        keep = ops.remove_small_boxes(boxes, rpn.min_size)
        boxes, score = boxes[keep], score[keep]
        keep = torch.where(score >= rpn.score_thresh)[0]
        boxes, score = boxes[keep], score[keep]
        out.append(boxes[ops.nms(boxes, score, rpn.nms_thresh)[:post_nms_top_n]])
    return out


def _random_rpn_inputs(generator, counts, num_images=2):
    """Boxes (N, R, 4) crowded around a few centres (so that levels overlap), logits (N, R); level 1 scores lower."""
    total = sum(counts)
    centres = torch.rand(num_images, 4, 2, generator=generator) * 100  # 4 objects per image
    which = torch.randint(0, 4, (num_images, total), generator=generator)
    centre = centres[torch.arange(num_images)[:, None], which] + 6 * torch.randn(
        num_images, total, 2, generator=generator
    )
    size = 10 + 50 * torch.rand(num_images, total, 2, generator=generator)
    proposals = torch.cat([centre - size / 2, centre + size / 2], dim=2)  # (N, R, 4), some beyond the image
    objectness = torch.randn(num_images, total, generator=generator)
    objectness[:, counts[0] : counts[0] + counts[1]] -= 1.5  # so that a top-k over all levels is not per level
    return proposals, objectness


@_keeps_global_rng
def exercise_3(filter_proposals_one_nms) -> None:
    """filter_proposals_one_nms(rpn, proposals, objectness, image_sizes, anchors_per_level) -> [(P_i, 4)]."""
    # By hand: the chapter's three boxes of section 6.5, two on level 0 and one on level 1.
    rpn = RegionProposalNetwork(AnchorGenerator(SMALL_ANCHOR_SIZES), RPNHead(4, 3)).eval()
    boxes = torch.tensor([[[10.0, 10, 50, 50], [12, 11, 52, 50], [11, 10, 51, 52]]])
    logits = torch.logit(torch.tensor([[0.9, 0.8, 0.7]]))
    got = _call(3, filter_proposals_one_nms, rpn, boxes, logits, [(100, 100)], [2, 1])
    if not isinstance(got, (list, tuple)) or len(got) != 1:
        raise AssertionError("exercise 3: return a list with the proposals of each image, (P_i, 4) each")
    if len(got[0]) == 2:
        raise AssertionError(
            "exercise 3: with one NMS over all levels the box of level 1 (IoU 0.9 with the best box of level 0) is "
            "suppressed; your function kept it, as the per-level NMS does"
        )
    _close(3, "the proposals of the three boxes of section 6.5", got[0], boxes[0, :1])

    generator = torch.Generator().manual_seed(0)
    for training, score_thresh in ((False, 0.0), (True, 0.0), (False, 0.4)):
        rpn = RegionProposalNetwork(
            AnchorGenerator(SMALL_ANCHOR_SIZES),
            RPNHead(4, 3),
            pre_nms_top_n=(30, 20),
            post_nms_top_n=(60, 40),
            score_thresh=score_thresh,
        ).train(training)
        counts = [60, 40, 10]
        proposals, objectness = _random_rpn_inputs(generator, counts)
        sizes = [(100, 120), (90, 100)]
        got = _call(3, filter_proposals_one_nms, rpn, proposals.clone(), objectness.clone(), sizes, counts)
        expected = filter_one_nms_reference(rpn, proposals, objectness, sizes, counts)
        mode = f"{'training' if training else 'eval'} mode, score_thresh {score_thresh}"
        if not isinstance(got, (list, tuple)) or len(got) != len(expected):
            raise AssertionError(f"exercise 3 ({mode}): return one tensor of proposals per image ({len(expected)})")
        for i, (mine, theirs) in enumerate(zip(got, expected, strict=True)):
            if isinstance(mine, Tensor) and len(mine) != len(theirs):
                per_level = rpn.filter_proposals(proposals, objectness, sizes, counts)[i]
                hint = " (that is what the per-level NMS keeps)" if len(mine) == len(per_level) else ""
                raise AssertionError(
                    f"exercise 3 ({mode}), image {i}: {len(theirs)} proposals expected, got {len(mine)}{hint}; the "
                    f"pre_nms_top_n ({rpn.pre_nms_top_n[0 if training else 1]}) stays per level, only the NMS changes"
                )
            _close(3, f"the proposals of image {i} ({mode})", mine, theirs)


@_keeps_global_rng
def exercise_4(mean_best_iou) -> None:
    """mean_best_iou(proposals [(P_i, 4)], targets [{"boxes": (G_i, 4)}]) -> float."""

    def reference(proposals, targets):
        best = [
            ops.box_iou(t["boxes"], p).max(dim=1).values if len(p) else torch.zeros(len(t["boxes"]))
            for p, t in zip(proposals, targets, strict=True)
        ]
        return torch.cat(best).mean().item()

    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    generator = torch.Generator().manual_seed(0)

    def random_boxes(n):
        xy = torch.rand(n, 2, generator=generator) * 80
        return torch.cat([xy, xy + 5 + 30 * torch.rand(n, 2, generator=generator)], dim=1)

    cases = {
        "one box, a perfect proposal and a half one": ([torch.tensor([[0.0, 0, 10, 10], [0, 0, 5, 10]])], [box]),
        "two images, one box and three boxes": (
            [torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([[0.0, 0, 20, 20], [40, 40, 60, 60]])],
            [box, torch.tensor([[0.0, 0, 20, 20], [0, 0, 10, 20], [40, 40, 50, 50]])],
        ),
        "an image without proposals (its boxes count 0)": ([torch.zeros(0, 4), box.clone()], [box, box]),
        "an image without ground truth": ([random_boxes(5), random_boxes(4)], [torch.zeros(0, 4), random_boxes(3)]),
        "random, 3 images": ([random_boxes(20) for _ in range(3)], [random_boxes(g) for g in (1, 4, 2)]),
    }
    for name, (proposals, boxes) in cases.items():
        targets = [{"boxes": b} for b in boxes]
        got = _number(4, f"mean_best_iou ({name})", _call(4, mean_best_iou, proposals, targets))
        expected = reference(proposals, targets)
        assert math.isclose(got, expected, abs_tol=1e-5), (
            f"exercise 4 ({name}): the mean best IoU is {expected:.4f}, got {got:.4f}; the mean runs over the "
            "ground-truth boxes of all images, each with the best IoU of its image's proposals"
        )


@_keeps_global_rng
def exercise_5(box_loss_factor) -> None:
    """box_loss_factor(num_positives, batch_size_per_image, positive_fraction) -> float (at least one positive)."""
    for batch, fraction in ((256, 0.5), (64, 0.5), (512, 0.25)):
        sampler = BalancedPositiveNegativeSampler(batch, fraction)
        for positives in (1, 3, 20, int(batch * fraction) - 1, int(batch * fraction), int(batch * fraction) + 1, 700):
            labels = torch.cat([torch.ones(positives), torch.zeros(4 * batch)])  # plenty of negatives
            sampled_pos, sampled_neg = sampler(labels, generator=torch.Generator().manual_seed(0))
            expected = (sampled_pos.sum() + sampled_neg.sum()).item() / sampled_pos.sum().item()  # |S| / |P|
            got = _number(5, "the factor", _call(5, box_loss_factor, positives, batch, fraction))
            assert math.isclose(got, expected, rel_tol=1e-6), (
                f"exercise 5: with {positives} positive anchors, {batch} sampled per image and at most "
                f"{fraction:.0%} positive, the box loss grows by {expected:.4g}, got {got:.4g}; how many "
                "positives does the sampler keep?"
            )


@_keeps_global_rng
def exercise_6(one_logit_conv) -> None:
    """one_logit_conv(conv with 2A outputs) -> conv with A outputs; sigmoid(new) == softmax(old)[object]."""
    generator = torch.Generator().manual_seed(0)
    for num_anchors, kernel in ((3, 1), (2, 3)):
        paper = nn.Conv2d(6, 2 * num_anchors, kernel, padding=kernel // 2)
        with torch.no_grad():
            paper.weight.normal_(generator=generator)
            paper.bias.normal_(generator=generator)
        before = [p.detach().clone() for p in paper.parameters()]
        ours = _call(6, one_logit_conv, paper)
        if not isinstance(ours, nn.Conv2d) or ours.out_channels != num_anchors:
            got = ours.out_channels if isinstance(ours, nn.Conv2d) else type(ours).__name__
            raise AssertionError(
                f"exercise 6: return an nn.Conv2d with A = {num_anchors} outputs, one logit per anchor; got {got}"
            )
        assert all(torch.equal(a, b) for a, b in zip(before, paper.parameters(), strict=True)), (
            "exercise 6: leave the paper's layer as it is; build a new one"
        )
        x = torch.randn(2, 6, 5, 7, generator=generator)
        with torch.no_grad():
            two = paper(x).view(2, num_anchors, 2, 5, 7)  # channel 2a + v: value v of anchor a
            p_object = F.softmax(two, dim=2)[:, :, 1]  # (N, A, H, W)
            mine = ours(x)
        _close(6, f"sigmoid of your layer's output (A = {num_anchors}, {kernel}x{kernel})", mine.sigmoid(), p_object)
        # The new layer fits minimtl's head: RPNHead's objectness is exactly such a conv, read with a sigmoid.
        head = RPNHead(6, num_anchors)
        if kernel == 1:
            head.objectness = ours
            with torch.no_grad():
                objectness, _ = head([x])
                expected = F.softmax(paper(F.relu(head.conv(x))).view(2, num_anchors, 2, 5, 7), dim=2)[:, :, 1]
            _close(6, "RPNHead's objectness with your layer", objectness[0].sigmoid(), expected)
