"""Checks for the exercises of chapter 8, the Mask R-CNN mask head (notebooks/08_mask_rcnn.ipynb, 8.8).

`exercise_K(answer)` returns quietly when the answer to exercise K is right, and raises an
AssertionError that says what is wrong otherwise. Each check compares the answer with minimtl's own
code (`MaskHead`, `project_masks_on_boxes`, `paste_masks_in_image`, `ops.roi_align`, `RCNNConfig`) on
hand cases, edge cases and seeded random inputs; none trains a model.
Worked solutions: notebooks/solutions/ch08.py.
"""

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from exercises.common import call as _call
from exercises.common import close as _close
from exercises.common import has_keys as _keys
from exercises.common import keeps_global_rng as _keeps_global_rng
from exercises.common import number as _number
from minimtl import ops
from minimtl.modeling.mask_head import MaskConvs, MaskHead, MaskPredictor, paste_masks_in_image
from minimtl.modeling.poolers import MultiScaleRoIAlign
from minimtl.models.rcnn import RCNNConfig

RECTANGLE = (10, 15, 50, 45)  # the red rectangle of image 0 (sections 8.2 and 8.4): x1, y1, x2, y2
POINTREND = {
    "larger_map": "predict every RoI's mask on a finer regular grid (e.g. 112 x 112) with a bigger head",
    "adaptive_points": "upsample the coarse mask step by step and re-predict only the most uncertain points, "
    "near the border, with a small MLP on fine-level features",
    "deeper_head": "add more convolutions to the mask head, keeping 28 x 28",
    "box_refinement": "refine the box first, so that the 28 x 28 grid fits the object better",
}


# --- helpers: every failure is an AssertionError that names the exercise ---------------------------


def rectangle_mask(size=128) -> Tensor:
    """The red rectangle's (size, size) uint8 mask: the pixels x in [10, 50), y in [15, 45)."""
    x1, y1, x2, y2 = RECTANGLE
    mask = torch.zeros(size, size, dtype=torch.uint8)
    mask[y1:y2, x1:x2] = 1
    return mask


def mask_iou(a: Tensor, b: Tensor) -> float:
    a, b = a.bool(), b.bool()
    return ((a & b).sum() / (a | b).sum()).item()


def random_masks(generator, num, height, width) -> Tensor:
    """num (H, W) uint8 masks, each a random rectangle at least 5 pixels wide: (num, H, W)."""

    def randint(low, high):
        return int(torch.randint(low, high, (1,), generator=generator))

    masks = torch.zeros(num, height, width, dtype=torch.uint8)
    for m in masks:
        x1, y1 = randint(0, width - 8), randint(0, height - 8)
        x2, y2 = x1 + 5 + randint(0, width - x1 - 5), y1 + 5 + randint(0, height - y1 - 5)
        m[y1:y2, x1:x2] = 1
    return masks


def random_boxes(generator, num, height, width, margin=10.0) -> Tensor:
    """num boxes (num, 4), some reaching up to `margin` pixels beyond the image, at least 2 pixels wide."""
    xy = torch.rand(num, 2, generator=generator) * torch.tensor([width, height]) - margin
    wh = 2 + torch.rand(num, 2, generator=generator) * torch.tensor([width, height]) * 0.6
    return torch.cat([xy, xy + wh], dim=1)


# --- the exercises -----------------------------------------------------------------------------------


def softmax_loss_reference(logits: Tensor, classes: Tensor, targets: Tensor) -> Tensor:
    """Per-pixel cross-entropy over the C maps against the soft label (1 - y on class 0, y on the RoI's class)."""
    if len(logits) == 0:
        return logits.sum() * 0
    distribution = torch.zeros_like(logits)  # (F, C, M, M)
    distribution[:, 0] = 1 - targets
    distribution[torch.arange(len(classes)), classes] = targets
    return F.cross_entropy(logits, distribution)  # the mean over F * M * M pixels


@_keeps_global_rng
def exercise_1(softmax_mask_loss) -> None:
    """softmax_mask_loss(logits (F, C, M, M), classes (F,), targets (F, M, M)) -> the mean over F * M * M."""
    generator = torch.Generator().manual_seed(0)
    # Two classes (background and one object class): the softmax over (z_0, z_1) is sigmoid(z_1 - z_0), so the
    # loss must be MaskHead's BCE on the difference of the two maps.
    logits = 3 * torch.randn(4, 2, 7, 7, generator=generator)
    targets = torch.rand(4, 7, 7, generator=generator)
    classes = torch.ones(4, dtype=torch.int64)
    bce = F.binary_cross_entropy_with_logits(logits[:, 1] - logits[:, 0], targets)
    got = _call(1, softmax_mask_loss, logits, classes, targets)
    _close(1, "the loss with C = 2 (it must equal BCE(z_1 - z_0, y), MaskHead's loss on the difference)", got, bce)
    for num_rois, num_classes, size in ((5, 4, 28), (3, 6, 14), (0, 4, 28)):
        logits = 3 * torch.randn(num_rois, num_classes, size, size, generator=generator)
        classes = torch.randint(1, num_classes, (num_rois,), generator=generator)
        targets = (torch.rand(num_rois, size, size, generator=generator) * 1.4 - 0.2).clamp(0, 1)  # 0, 1, fractions
        logits.requires_grad_()
        got = _call(1, softmax_mask_loss, logits, classes, targets)
        what = f"the loss of {num_rois} RoIs, {num_classes} classes, {size} x {size}"
        if num_rois == 0:
            if not isinstance(got, Tensor) or not torch.isfinite(got) or got.item() != 0:
                raise AssertionError(f"exercise 1: with no foreground RoI the loss should be 0 (not NaN), got {got}")
            continue
        _close(1, what, got, softmax_loss_reference(logits.detach(), classes, targets))
        if not got.requires_grad:
            raise AssertionError("exercise 1: the loss must keep its graph (a gradient flows to the logits)")
        (grad,) = torch.autograd.grad(got, logits)
        other = torch.ones(num_rois, num_classes, dtype=torch.bool)
        other[:, 0] = False
        other[torch.arange(num_rois), classes] = False
        assert (grad[other] != 0).any(), (
            "exercise 1: under a softmax every class's map gets a gradient (it competes for the pixel); yours gives "
            "none to the maps of the other classes"
        )


def _small_mask_heads(generator, num_classes: int, agnostic_class):
    """A learner's class-agnostic head and a class-specific MaskHead that repeats its one map for every class."""
    pooler, convs = MultiScaleRoIAlign(14), MaskConvs(8, (8,))
    predictor = MaskPredictor(8, 8, 1)
    with torch.no_grad():
        for p in [*convs.parameters(), *predictor.parameters()]:
            p.copy_(0.3 * torch.randn(p.shape, generator=generator))
    mine = _call(2, agnostic_class, pooler, convs, predictor)
    repeated = MaskPredictor(8, 8, num_classes)
    repeated.deconv = copy.deepcopy(predictor.deconv)
    with torch.no_grad():
        repeated.logits.weight.copy_(predictor.logits.weight.repeat(num_classes, 1, 1, 1))
        repeated.logits.bias.copy_(predictor.logits.bias.repeat(num_classes))
    return mine, MaskHead(pooler, convs, repeated)


@_keeps_global_rng
def exercise_2(agnostic_mask_head) -> None:
    """AgnosticMaskHead(pooler, convs, predictor with one output map): a MaskHead whose losses and predict use
    that one map for every class. It must equal MaskHead with the map repeated for every class."""
    generator = torch.Generator().manual_seed(0)
    num_classes = 4
    mine, reference = _small_mask_heads(generator, num_classes, agnostic_mask_head)
    if not isinstance(mine, MaskHead):
        raise AssertionError(f"exercise 2: make a subclass of MaskHead, got {type(mine).__name__}")
    sizes = [(64, 64), (64, 64)]
    features = [torch.randn(2, 8, 64 // s, 64 // s, generator=generator) for s in (4, 8, 16, 32)]  # P2..P5
    targets, proposals, matched, labels = [], [], [], []
    for num_objects in (3, 2):
        gt = random_boxes(generator, num_objects, 64, 64, margin=0).clamp(0, 64)
        masks = random_masks(generator, num_objects, 64, 64)
        classes = torch.randint(1, num_classes, (num_objects,), generator=generator)
        targets.append({"boxes": gt, "labels": classes, "masks": masks})
        index = torch.randint(0, num_objects, (6,), generator=generator)
        jitter = gt[index] + 3 * torch.randn(6, 4, generator=generator)
        proposals.append(jitter)
        matched.append(index)
        labels.append(torch.where(torch.arange(6) < 4, classes[index], 0))  # four foreground, two background
    got = _call(2, mine.losses, features, proposals, matched, labels, targets, sizes)
    expected = reference.losses(features, proposals, matched, labels, targets, sizes)
    if not isinstance(got, dict) or "loss_mask" not in got:
        raise AssertionError("exercise 2: losses should return {'loss_mask': ...}, as MaskHead.losses does")
    _close(2, "loss_mask", got["loss_mask"], expected["loss_mask"])

    detections = [
        {
            "boxes": random_boxes(generator, n, 64, 64),
            "labels": torch.randint(1, num_classes, (n,), generator=generator),
        }
        for n in (3, 1)
    ]
    mine_detections = [dict(d) for d in detections]
    _call(2, mine.predict, features, mine_detections, sizes)
    reference.predict(features, detections, sizes)
    for i, (a, b) in enumerate(zip(mine_detections, detections, strict=True)):
        if "masks" not in a:
            raise AssertionError("exercise 2: predict should add 'masks' to each image's detections, as MaskHead does")
        _close(2, f"the masks predict adds to image {i} (probabilities, (D, 1, 28, 28))", a["masks"], b["masks"])


@_keeps_global_rng
def exercise_3(answer: dict) -> None:
    """{"project": f(gt_masks (G, H, W), boxes (F, 4), matched (F,), size) -> (F, size, size) with aligned=True,
    "round_trip_iou": the rectangle's round trip (section 8.4) with those targets}."""
    _keys(3, answer, ("project", "round_trip_iou"))
    generator = torch.Generator().manual_seed(0)
    masks = random_masks(generator, 3, 40, 50)
    for size in (28, 14):
        boxes = random_boxes(generator, 7, 40, 50)
        matched = torch.randint(0, 3, (7,), generator=generator)
        got = _call(3, answer["project"], masks, boxes, matched, size)
        rois = torch.cat([matched[:, None].float(), boxes], dim=1)
        expected = ops.roi_align(masks[:, None].float(), rois, (size, size), 1.0, -1, True)[:, 0]
        if isinstance(got, Tensor) and got.shape == expected.shape:
            unaligned = ops.roi_align(masks[:, None].float(), rois, (size, size), 1.0, -1, False)[:, 0]
            if torch.allclose(got.float(), unaligned, atol=1e-6):
                raise AssertionError("exercise 3: these are the aligned=False targets of project_masks_on_boxes")
        _close(3, f"the {size} x {size} targets", got, expected)
    # The rectangle's own target is symmetric with aligned=True: its first and last columns agree.
    own = _call(
        3,
        answer["project"],
        rectangle_mask()[None],
        torch.tensor([RECTANGLE], dtype=torch.float32),
        torch.tensor([0]),
        28,
    )
    torch.testing.assert_close(own[0, :, 0], own[0, :, -1], msg="exercise 3: the rectangle's target is not symmetric")

    target = ops.roi_align(
        rectangle_mask()[None, None].float(), torch.tensor([[0.0, *RECTANGLE]]), (28, 28), 1.0, -1, True
    )
    back = paste_masks_in_image(target, torch.tensor([RECTANGLE], dtype=torch.float32), (128, 128))[0, 0] > 0.5
    expected_iou = mask_iou(back, rectangle_mask())
    unaligned = ops.roi_align(
        rectangle_mask()[None, None].float(), torch.tensor([[0.0, *RECTANGLE]]), (28, 28), 1.0, -1
    )
    back = paste_masks_in_image(unaligned, torch.tensor([RECTANGLE], dtype=torch.float32), (128, 128))[0, 0] > 0.5
    unaligned_iou = mask_iou(back, rectangle_mask())
    got = _number(3, "round_trip_iou", answer["round_trip_iou"])
    if math.isclose(got, unaligned_iou, abs_tol=1e-4) and not math.isclose(got, expected_iou, abs_tol=1e-4):
        raise AssertionError("exercise 3: that is the round trip of the aligned=False target (section 8.4's)")
    assert math.isclose(got, expected_iou, abs_tol=1e-4), (
        f"exercise 3: the rectangle's round trip with aligned=True targets (paste_masks_in_image, threshold 0.5) "
        f"is not {got:.4f}"
    )


def paste_continuous_reference(masks: Tensor, boxes: Tensor, image_size) -> Tensor:
    """Each pixel centre (x + 1/2, y + 1/2) reads its box's map at (x + 1/2 - x1) / (x2 - x1) of the box's width
    (and height), bilinearly (grid_sample, align_corners=False: -1 and 1 are the map's outer edges), 0 outside."""
    height, width = image_size
    out = []
    for mask, (x1, y1, x2, y2) in zip(masks, boxes.tolist(), strict=True):
        gx = ((torch.arange(width) + 0.5 - x1) / (x2 - x1)) * 2 - 1  # (W,)
        gy = ((torch.arange(height) + 0.5 - y1) / (y2 - y1)) * 2 - 1  # (H,)
        grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)  # (H, W, 2): (x, y)
        out.append(F.grid_sample(mask[None].float(), grid[None].float(), align_corners=False)[0])
    return torch.stack(out) if out else masks.new_zeros((0, 1, height, width))


@_keeps_global_rng
def exercise_4(paste_continuous) -> None:
    """paste_continuous(masks (D, 1, M, M), boxes (D, 4), image_size) -> (D, 1, H, W), sampled at pixel centres."""
    # By hand: a map of ones in the rectangle's box covers exactly the rectangle's pixels at 0.5.
    ones = torch.ones(1, 1, 28, 28)
    box = torch.tensor([RECTANGLE], dtype=torch.float32)
    got = _call(4, paste_continuous, ones, box, (128, 128))
    if not isinstance(got, Tensor) or got.shape != (1, 1, 128, 128):
        raise AssertionError("exercise 4: return (D, 1, H, W) masks, here (1, 1, 128, 128)")
    covered = got[0, 0] > 0.5
    if not torch.equal(covered, rectangle_mask().bool()):
        columns = torch.where(covered[30])[0]
        span = f"{columns[0].item()} to {columns[-1].item()}" if len(columns) else "none"
        raise AssertionError(
            f"exercise 4: ones pasted in the box {RECTANGLE} should cover exactly its pixels at 0.5, columns 10 to 49; "
            f"yours covers columns {span} on row 30"
        )
    generator = torch.Generator().manual_seed(0)
    for image_size in ((60, 80), (128, 128)):
        masks = torch.rand(6, 1, 28, 28, generator=generator)
        boxes = random_boxes(generator, 6, *image_size)
        got = _call(4, paste_continuous, masks, boxes, image_size)
        _close(
            4, f"the pasted masks in a {image_size} image", got, paste_continuous_reference(masks, boxes, image_size)
        )
    # The round trip of section 8.4 for the rectangle: better than minimtl's paste.
    own = ops.roi_align(rectangle_mask()[None, None].float(), torch.tensor([[0.0, *RECTANGLE]]), (28, 28), 1.0, -1)
    mine = mask_iou(_call(4, paste_continuous, own, box, (128, 128))[0, 0] > 0.5, rectangle_mask())
    minimtl = mask_iou(paste_masks_in_image(own, box, (128, 128))[0, 0] > 0.5, rectangle_mask())
    assert mine > minimtl, (
        f"exercise 4: the rectangle's round trip: {mine:.4f} with your paste, {minimtl:.4f} with minimtl's"
    )


@_keeps_global_rng
def exercise_5(answer: dict) -> None:
    """{"cell_px": the image pixels one mask cell spans on a 300-pixel object, "max_error_px": half of it,
    "pointrend": one of POINTREND's keys}."""
    _keys(5, answer, ("cell_px", "max_error_px", "pointrend"))
    config = RCNNConfig(num_classes=2)
    resolution = 2 * config.mask_roi_size  # the transposed convolution doubles the 14 x 14 pooled grid: 28
    cell = 300 / resolution
    got = _number(5, "cell_px", answer["cell_px"])
    if math.isclose(got, 300 / config.mask_roi_size, rel_tol=1e-3):
        raise AssertionError(
            f"exercise 5: 300 / {config.mask_roi_size} is the pooled grid's cell; the mask is predicted at "
            f"{resolution} x {resolution}"
        )
    assert math.isclose(got, cell, rel_tol=1e-3), (
        f"exercise 5: a 300-pixel box cut into {resolution} cells: not {got:.3g} px each"
    )
    error = _number(5, "max_error_px", answer["max_error_px"])
    assert math.isclose(error, cell / 2, rel_tol=1e-3), (
        f"exercise 5: a border known only to the nearest cell boundary can be up to half a cell off, not {error:.3g} px"
    )
    assert answer["pointrend"] in POINTREND, f"exercise 5: pointrend should be one of {sorted(POINTREND)}"
    assert answer["pointrend"] == "adaptive_points", (
        f"exercise 5: PointRend does not {POINTREND[answer['pointrend']]}; read its section 3 (point selection)"
    )


@_keeps_global_rng
def exercise_6(paste_masks_batched) -> None:
    """paste_masks_batched(masks (D, 1, M, M), boxes (D, 4), image_size, padding) == paste_masks_in_image."""
    generator = torch.Generator().manual_seed(0)
    cases = {
        "the rectangle, a map of ones": (
            torch.ones(1, 1, 28, 28),
            torch.tensor([RECTANGLE], dtype=torch.float32),
            (128, 128),
        ),
        "no detections": (torch.zeros(0, 1, 28, 28), torch.zeros(0, 4), (64, 64)),
        "a box smaller than a pixel, a box over the whole image": (
            torch.rand(2, 1, 28, 28, generator=generator),
            torch.tensor([[10.2, 10.3, 10.6, 10.5], [-30.0, -20.0, 120.0, 90.0]]),
            (60, 80),
        ),
        "random boxes, some beyond the image": (
            torch.rand(8, 1, 28, 28, generator=generator),
            random_boxes(generator, 8, 60, 80),
            (60, 80),
        ),
    }
    for padding in (1, 0, 2):
        for name, (masks, boxes, size) in cases.items():
            got = _call(6, paste_masks_batched, masks, boxes, size, padding)
            expected = paste_masks_in_image(masks, boxes, size, padding=padding)
            _close(6, f"{name} (padding {padding})", got, expected)
