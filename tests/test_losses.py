"""Element-wise losses (minimtl/losses/{box,focal,segmentation}.py): hand examples, torchvision and
torch.nn.functional as oracles, degenerate geometry, reductions, empty inputs and bad arguments."""

import importlib
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import check_op
from hypothesis import given
from strategies import as_boxes, box_lists
from torch import Tensor

from minimtl.losses import (
    binary_dice_loss,
    ciou_loss,
    dice_loss,
    diou_loss,
    giou_loss,
    pixel_cross_entropy,
    sigmoid_focal_loss,
    smooth_l1_loss,
)

IOU_LOSSES = {"giou": giou_loss, "diou": diou_loss, "ciou": ciou_loss}
TORCHVISION_NAMES = {
    "giou": "generalized_box_iou_loss",
    "diou": "distance_box_iou_loss",
    "ciou": "complete_box_iou_loss",
}


def random_box_pairs(n: int, generator: torch.Generator, dtype=torch.float64) -> tuple[Tensor, Tensor]:
    """n well-formed pairs: overlapping, disjoint (second box shifted far away) and identical ones."""
    xy = torch.rand(2, n, 2, generator=generator, dtype=dtype) * 20  # (2, n, 2)
    wh = torch.rand(2, n, 2, generator=generator, dtype=dtype) * 10 + 0.5  # (2, n, 2)
    boxes1, boxes2 = torch.cat([xy, xy + wh], dim=-1)  # (n, 4), (n, 4)
    boxes2[: n // 4] += 100  # disjoint
    boxes2[n // 4 : n // 2] = boxes1[n // 4 : n // 2]  # identical
    return boxes1, boxes2


# --- box losses: hand examples ---------------------------------------------------------------------


def test_iou_losses_hand_example():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 1.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 1.0, 2.0]])
    # Pair 0: |a ∩ b| = 1, |a ∪ b| = 7; C = [0, 3]², |C| = 9, diagonal² 18; centres (1, 1), (2, 2): ρ² = 2.
    #   Same aspect ratio, so v = 0 and CIoU = DIoU.
    # Pair 1: a 2×1 and a 1×2 box in the same corner: |∩| = 1, |∪| = 3; C = [0, 2]², |C| = 4,
    #   diagonal² 8; centres (1, 0.5), (0.5, 1): ρ² = 0.5; v = 4/π² (atan(1/2) - atan(2))².
    v = 4 / math.pi**2 * (math.atan(0.5) - math.atan(2)) ** 2
    alpha = v / (1 - 1 / 3 + v)
    giou = [1 - 1 / 7 + 2 / 9, 1 - 1 / 3 + 1 / 4]
    diou = [1 - 1 / 7 + 2 / 18, 1 - 1 / 3 + 0.5 / 8]
    ciou = [diou[0], diou[1] + alpha * v]
    torch.testing.assert_close(giou_loss(a, b), torch.tensor(giou))
    torch.testing.assert_close(diou_loss(a, b), torch.tensor(diou))
    torch.testing.assert_close(ciou_loss(a, b), torch.tensor(ciou))


def test_iou_losses_of_identical_boxes_are_zero():
    boxes = torch.tensor([[0.0, 0.0, 4.0, 3.0], [10.0, 5.0, 12.0, 30.0]])
    for loss_fn in IOU_LOSSES.values():
        torch.testing.assert_close(loss_fn(boxes, boxes), torch.zeros(2), atol=1e-6, rtol=0)


# --- box losses against torchvision ----------------------------------------------------------------


@pytest.mark.parametrize("name", IOU_LOSSES)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_iou_losses_match_torchvision(name, reduction):
    ops = importlib.import_module("torchvision.ops")
    reference = getattr(ops, TORCHVISION_NAMES[name])
    boxes1, boxes2 = random_box_pairs(64, torch.Generator().manual_seed(0))
    check_op(
        lambda x, y: IOU_LOSSES[name](x, y, reduction=reduction),
        lambda x, y: reference(x, y, reduction=reduction),
        boxes1,
        boxes2,
        atol=1e-12,
        rtol=1e-10,
        grad=True,
    )


@pytest.mark.parametrize("name", IOU_LOSSES)
@given(box_lists(min_size=1, max_size=8), box_lists(min_size=1, max_size=8))
def test_iou_losses_match_torchvision_on_awkward_geometry(name, list1, list2):
    """Shared edges, nested, zero-width and inverted boxes, exact ties: the values still agree (CIoU
    only where both heights are >= 1e-3: we clamp heights at eps where torchvision divides by 0)."""
    ops = importlib.import_module("torchvision.ops")
    n = min(len(list1), len(list2))
    boxes1, boxes2 = as_boxes(list1[:n], torch.float64), as_boxes(list2[:n], torch.float64)
    ours = IOU_LOSSES[name](boxes1, boxes2)
    expected = getattr(ops, TORCHVISION_NAMES[name])(boxes1, boxes2)
    keep = torch.ones(n, dtype=torch.bool)
    if name == "ciou":
        keep = (boxes1[:, 3] - boxes1[:, 1] >= 1e-3) & (boxes2[:, 3] - boxes2[:, 1] >= 1e-3)
    torch.testing.assert_close(ours[keep], expected[keep], atol=1e-9, rtol=1e-9)
    assert ours.isfinite().all()


@pytest.mark.parametrize("name", IOU_LOSSES)
def test_iou_losses_zero_size_boxes_are_finite(name):
    boxes1 = torch.tensor(
        [
            [1.0, 1.0, 1.0, 1.0],  # a point, against the same point
            [1.0, 1.0, 1.0, 1.0],  # a point, against a box elsewhere
            [0.0, 0.0, 0.0, 5.0],  # zero width, against an overlapping box
            [0.0, 2.0, 4.0, 2.0],  # zero height, against itself
        ],
        requires_grad=True,
    )
    boxes2 = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 4.0, 6.0, 7.0], [-1.0, 1.0, 3.0, 4.0], [0.0, 2.0, 4.0, 2.0]])
    loss = IOU_LOSSES[name](boxes1, boxes2)
    assert loss.isfinite().all(), loss
    assert (loss >= 0).all() and (loss <= 3).all(), loss  # GIoU/DIoU in [0, 2]; CIoU adds α·v <= 1
    loss.sum().backward()
    assert boxes1.grad.isfinite().all(), boxes1.grad


@pytest.mark.parametrize("name", IOU_LOSSES)
def test_iou_losses_reductions_and_empty_input(name):
    loss_fn = IOU_LOSSES[name]
    boxes1, boxes2 = random_box_pairs(8, torch.Generator().manual_seed(1))
    per_pair = loss_fn(boxes1, boxes2)
    assert per_pair.shape == (8,)
    torch.testing.assert_close(loss_fn(boxes1, boxes2, reduction="mean"), per_pair.mean())
    torch.testing.assert_close(loss_fn(boxes1, boxes2, reduction="sum"), per_pair.sum())
    # Any leading shape: (2, 4, 4) -> (2, 4).
    torch.testing.assert_close(loss_fn(boxes1.view(2, 4, 4), boxes2.view(2, 4, 4)), per_pair.view(2, 4))

    empty = torch.zeros(0, 4, requires_grad=True)
    assert loss_fn(empty, empty).shape == (0,)
    for reduction in ("mean", "sum"):
        total = loss_fn(empty, empty, reduction=reduction)
        assert total.item() == 0 and total.requires_grad  # 0, not NaN, and part of the graph
        total.backward()


@pytest.mark.parametrize("name", IOU_LOSSES)
def test_iou_losses_bad_arguments(name):
    loss_fn = IOU_LOSSES[name]
    boxes = torch.zeros(3, 4)
    with pytest.raises(ValueError, match=rf"{name}_loss: reduction must be 'none', 'mean' or 'sum', got 'avg'"):
        loss_fn(boxes, boxes, reduction="avg")
    with pytest.raises(ValueError, match=r"same shape, got \(3, 4\) and \(2, 4\)"):
        loss_fn(boxes, torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"Tensor\[\.\.\., 4\].*got \(3, 5\)"):
        loss_fn(torch.zeros(3, 5), torch.zeros(3, 5))


def test_integer_boxes_become_float():
    boxes = torch.tensor([[0, 0, 2, 2]])
    for loss_fn in IOU_LOSSES.values():
        assert loss_fn(boxes, boxes).dtype == torch.float32


# --- smooth L1 -------------------------------------------------------------------------------------


def test_smooth_l1_hand_example():
    input = torch.tensor([0.05, 1.0, -3.0])
    # |x| < beta = 0.1: 0.5 x² / beta; otherwise |x| - beta / 2.
    expected = torch.tensor([0.5 * 0.05**2 / 0.1, 1.0 - 0.05, 3.0 - 0.05])
    torch.testing.assert_close(smooth_l1_loss(input, torch.zeros(3), beta=0.1, reduction="none"), expected)
    torch.testing.assert_close(smooth_l1_loss(input, torch.zeros(3), beta=0.1), expected.sum())  # default: sum


@pytest.mark.parametrize("beta", [1 / 9, 1.0, 3.0])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_smooth_l1_matches_functional(beta, reduction):
    g = torch.Generator().manual_seed(2)
    input, target = torch.randn(2, 50, 4, generator=g, dtype=torch.float64)
    check_op(
        lambda x, y: smooth_l1_loss(x, y, beta=beta, reduction=reduction),
        lambda x, y: F.smooth_l1_loss(x, y, beta=beta, reduction=reduction),
        input,
        target,
        atol=1e-12,
        rtol=1e-12,
        grad=True,
    )


def test_smooth_l1_beta_zero_is_l1_with_finite_gradients():
    input = torch.tensor([0.0, 0.5, -2.0], requires_grad=True)  # includes an exact 0 difference
    loss = smooth_l1_loss(input, torch.zeros(3), beta=0.0, reduction="none")
    torch.testing.assert_close(loss, F.l1_loss(input, torch.zeros(3), reduction="none"))
    loss.sum().backward()
    assert input.grad.isfinite().all()


def test_smooth_l1_empty_and_bad_arguments():
    empty = torch.zeros(0, 4, requires_grad=True)
    for reduction in ("mean", "sum"):
        total = smooth_l1_loss(empty, empty.detach(), reduction=reduction)
        assert total.item() == 0 and total.requires_grad
    with pytest.raises(ValueError, match=r"smooth_l1_loss: beta must be >= 0, got -1"):
        smooth_l1_loss(torch.zeros(2), torch.zeros(2), beta=-1)
    with pytest.raises(ValueError, match=r"smooth_l1_loss: input and target must have the same shape"):
        smooth_l1_loss(torch.zeros(2, 4), torch.zeros(4))
    with pytest.raises(ValueError, match=r"smooth_l1_loss: reduction must be .*got 'max'"):
        smooth_l1_loss(torch.zeros(2), torch.zeros(2), reduction="max")


# --- focal loss ------------------------------------------------------------------------------------


def test_focal_loss_hand_example():
    # Logit 0: p = 0.5 for either label, so p_t = 0.5, CE = log 2, (1 - p_t)^2 = 1/4.
    loss = sigmoid_focal_loss(torch.zeros(2), torch.tensor([1.0, 0.0]), alpha=0.25, gamma=2)
    torch.testing.assert_close(loss, torch.tensor([0.25, 0.75]) * math.log(2) / 4)


@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (0.5, 0.0), (-1.0, 2.0), (0.9, 1.5)])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_focal_loss_matches_torchvision(alpha, gamma, reduction):
    ops = importlib.import_module("torchvision.ops")
    g = torch.Generator().manual_seed(3)
    inputs = torch.randn(8, 20, generator=g, dtype=torch.float64) * 4
    targets = (torch.rand(8, 20, generator=g) < 0.3).double()
    targets[0] = torch.rand(20, generator=g, dtype=torch.float64)  # soft labels are allowed too
    check_op(
        lambda x, t: sigmoid_focal_loss(x, t, alpha, gamma, reduction),
        lambda x, t: ops.sigmoid_focal_loss(x, t, alpha, gamma, reduction),
        inputs,
        targets,
        atol=1e-12,
        rtol=1e-10,
        grad=True,
    )


def test_focal_loss_without_focusing_is_binary_cross_entropy():
    g = torch.Generator().manual_seed(4)
    inputs, targets = torch.randn(100, generator=g), (torch.rand(100, generator=g) < 0.5).float()
    expected = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    torch.testing.assert_close(sigmoid_focal_loss(inputs, targets, alpha=-1, gamma=0), expected)


def test_focal_loss_is_stable_for_large_logits():
    inputs = torch.tensor([-200.0, -50.0, 50.0, 200.0], requires_grad=True)
    targets = torch.tensor([1.0, 0.0, 0.0, 1.0])
    loss = sigmoid_focal_loss(inputs, targets)
    # Confidently wrong: (1 - p_t)^γ = 1 and -log p_t = |x|, so α_t |x|; confidently right: 0.
    torch.testing.assert_close(loss, torch.tensor([0.25 * 200, 0.0, 0.75 * 50, 0.0]), atol=1e-6, rtol=1e-6)
    loss.sum().backward()
    assert inputs.grad.isfinite().all()


def test_focal_loss_empty_and_bad_arguments():
    empty = torch.zeros(0, requires_grad=True)
    total = sigmoid_focal_loss(empty, empty.detach(), reduction="mean")
    assert total.item() == 0 and total.requires_grad  # torchvision gives NaN here
    with pytest.raises(ValueError, match=r"sigmoid_focal_loss: alpha must be in \[0, 1\].*got 1.5"):
        sigmoid_focal_loss(torch.zeros(2), torch.zeros(2), alpha=1.5)
    with pytest.raises(ValueError, match=r"sigmoid_focal_loss: gamma must be >= 0, got -2"):
        sigmoid_focal_loss(torch.zeros(2), torch.zeros(2), gamma=-2)
    with pytest.raises(ValueError, match=r"sigmoid_focal_loss: inputs and targets must have the same shape"):
        sigmoid_focal_loss(torch.zeros(2, 3), torch.zeros(3))
    with pytest.raises(ValueError, match=r"sigmoid_focal_loss: reduction must be .*got 'avg'"):
        sigmoid_focal_loss(torch.zeros(2), torch.zeros(2), reduction="avg")


# --- pixel cross-entropy ---------------------------------------------------------------------------


def segmentation_batch(n=2, c=4, h=5, w=6, seed=5, dtype=torch.float64):
    """Random logits (N, C, H, W) and labels (N, H, W) with about a fifth of the pixels ignored (255)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, h, w, generator=g, dtype=dtype) * 3
    target = torch.randint(0, c, (n, h, w), generator=g)
    target[torch.rand(n, h, w, generator=g) < 0.2] = 255
    return logits, target


def test_pixel_cross_entropy_hand_example():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]])).T.reshape(1, 3, 1, 2)  # 2 pixels
    target = torch.tensor([[[0, 2]]])
    torch.testing.assert_close(
        pixel_cross_entropy(logits, target), -(math.log(0.5) + math.log(0.8)) / 2 * torch.ones(())
    )
    target = torch.tensor([[[0, 255]]])  # the second pixel ignored: the mean is over one pixel
    torch.testing.assert_close(pixel_cross_entropy(logits, target), -math.log(0.5) * torch.ones(()))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("weighted", [False, True])
def test_pixel_cross_entropy_matches_functional(reduction, weighted):
    logits, target = segmentation_batch()
    weight = torch.tensor([0.5, 1.0, 2.0, 0.25], dtype=torch.float64) if weighted else None
    check_op(
        lambda x: pixel_cross_entropy(x, target, ignore_index=255, reduction=reduction, weight=weight),
        lambda x: F.cross_entropy(x, target, ignore_index=255, reduction=reduction, weight=weight),
        logits,
        atol=1e-12,
        rtol=1e-10,
        grad=True,
    )


def test_pixel_cross_entropy_every_pixel_ignored_is_zero_not_nan():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), 255)
    loss = pixel_cross_entropy(logits, target)
    assert loss.item() == 0 and loss.requires_grad  # F.cross_entropy: NaN
    loss.backward()
    assert (logits.grad == 0).all()
    empty = pixel_cross_entropy(torch.zeros(0, 3, 4, 4, requires_grad=True), torch.zeros(0, 4, 4, dtype=torch.int64))
    assert empty.item() == 0 and empty.requires_grad


def test_pixel_cross_entropy_bad_arguments():
    logits, target = segmentation_batch(dtype=torch.float32)
    bad = target.clone()
    bad[0, 0, 0] = 7
    with pytest.raises(
        ValueError, match=r"pixel_cross_entropy: target values must be in \[0, 4\) or ignore_index=255, got 7"
    ):
        pixel_cross_entropy(logits, bad)
    bad[0, 0, 0] = -1
    with pytest.raises(ValueError, match=r"got -1"):
        pixel_cross_entropy(logits, bad)
    with pytest.raises(ValueError, match=r"pixel_cross_entropy: target must be an int64 .* got torch.float32"):
        pixel_cross_entropy(logits, target.float())
    with pytest.raises(ValueError, match=r"pixel_cross_entropy: target must be Tensor\[N, H, W\] = \(2, 5, 6\)"):
        pixel_cross_entropy(logits, target[:, :4])
    with pytest.raises(ValueError, match=r"pixel_cross_entropy: logits must be a float Tensor\[N, C, H, W\]"):
        pixel_cross_entropy(logits[0], target)
    with pytest.raises(ValueError, match=r"pixel_cross_entropy: weight must be Tensor\[C\] = \(4,\), got \(3,\)"):
        pixel_cross_entropy(logits, target, weight=torch.ones(3))
    with pytest.raises(ValueError, match=r"pixel_cross_entropy: reduction must be .*got 'avg'"):
        pixel_cross_entropy(logits, target, reduction="avg")


# --- Dice ------------------------------------------------------------------------------------------


def dice_reference(logits, target, ignore_index, eps):
    """Loop over images and classes, straight from the formula: (N, C)."""
    probs = logits.softmax(dim=1)
    out = torch.zeros(logits.shape[:2], dtype=logits.dtype)
    for n in range(logits.shape[0]):
        valid = target[n] != ignore_index
        for c in range(logits.shape[1]):
            p = probs[n, c][valid]
            g = (target[n][valid] == c).to(logits.dtype)
            out[n, c] = 1 - (2 * (p * g).sum() + eps) / (p.sum() + g.sum() + eps)
    return out


def test_dice_hand_example():
    logits = torch.zeros(1, 2, 1, 2)  # p = 0.5 for both classes at both pixels
    # target [0, 1]: each class has |P| = 1, |G| = 1, |P∩G| = 0.5: 1 - (1 + 1) / (2 + 1) = 1/3.
    torch.testing.assert_close(dice_loss(logits, torch.tensor([[[0, 1]]])), torch.tensor(1 / 3))
    # target [0, 0]: class 0: 1 - (2 + 1) / (1 + 2 + 1) = 1/4; class 1 (absent): 1 - 1 / (1 + 1) = 1/2.
    torch.testing.assert_close(
        dice_loss(logits, torch.tensor([[[0, 0]]]), reduction="none"), torch.tensor([[0.25, 0.5]])
    )
    # target [0, ignored]: class 0: 1 - (1 + 1) / (0.5 + 1 + 1) = 0.2; class 1: 1 - 1 / (0.5 + 1) = 1/3.
    torch.testing.assert_close(
        dice_loss(logits, torch.tensor([[[0, 255]]]), reduction="none"), torch.tensor([[0.2, 1 / 3]])
    )


@pytest.mark.parametrize("eps", [1.0, 1e-3])
def test_dice_matches_loop_reference(eps):
    logits, target = segmentation_batch(seed=6)
    check_op(
        lambda x: dice_loss(x, target, eps=eps, reduction="none"),
        lambda x: dice_reference(x, target, 255, eps),
        logits,
        atol=1e-12,
        rtol=1e-10,
        grad=True,
    )
    per_pair = dice_loss(logits, target, eps=eps, reduction="none")
    torch.testing.assert_close(dice_loss(logits, target, eps=eps), per_pair.mean())
    torch.testing.assert_close(dice_loss(logits, target, eps=eps, reduction="sum"), per_pair.sum())


def test_dice_perfect_prediction_is_near_zero():
    target = torch.randint(0, 3, (2, 8, 8), generator=torch.Generator().manual_seed(7))
    logits = F.one_hot(target, 3).permute(0, 3, 1, 2).double() * 50  # (N, C, H, W), confidently right
    assert dice_loss(logits, target).item() < 1e-6
    assert dice_loss(-logits, target).item() > 0.5  # confidently wrong


def test_dice_empty_and_bad_arguments():
    empty = dice_loss(torch.zeros(0, 3, 4, 4, requires_grad=True), torch.zeros(0, 4, 4, dtype=torch.int64))
    assert empty.item() == 0 and empty.requires_grad
    logits, target = segmentation_batch(dtype=torch.float32)
    all_ignored = dice_loss(logits, torch.full_like(target, 255))
    assert all_ignored.item() == 0  # no pixel counts: P = G = 0, (0 + eps) / (0 + eps) = 1
    with pytest.raises(ValueError, match=r"dice_loss: eps must be > 0.*got 0"):
        dice_loss(logits, target, eps=0)
    bad = target.clone()
    bad[1, 2, 3] = 4
    with pytest.raises(ValueError, match=r"dice_loss: target values must be in \[0, 4\) or ignore_index=255, got 4"):
        dice_loss(logits, bad)
    with pytest.raises(ValueError, match=r"dice_loss: reduction must be .*got 'avg'"):
        dice_loss(logits, target, reduction="avg")


def test_binary_dice():
    logits = torch.zeros(2, 1, 2)  # p = 0.5 everywhere
    masks = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]]])
    # Sample 0: 1 - (2·0.5 + 1) / (1 + 1 + 1) = 1/3; sample 1 (empty mask): 1 - 1 / (1 + 0 + 1) = 1/2.
    torch.testing.assert_close(binary_dice_loss(logits, masks, reduction="none"), torch.tensor([1 / 3, 0.5]))
    torch.testing.assert_close(binary_dice_loss(logits, masks), torch.tensor(5 / 12))
    empty = binary_dice_loss(torch.zeros(0, 4, 4, requires_grad=True), torch.zeros(0, 4, 4))
    assert empty.item() == 0 and empty.requires_grad
    with pytest.raises(ValueError, match=r"binary_dice_loss: logits and targets must both be Tensor\[N, \*\]"):
        binary_dice_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"binary_dice_loss: eps must be > 0"):
        binary_dice_loss(logits, masks, eps=-1)
