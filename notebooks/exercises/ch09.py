"""Checks for the exercises of chapter 9, hypercolumns and semantic segmentation
(notebooks/09_hypercolumns.ipynb, 9.7).

`exercise_K(answer)` returns quietly when the answer to exercise K is right, and raises an
AssertionError that says what is wrong otherwise. Each check compares the answer with minimtl's own
code (`HypercolumnHead`, `HypercolumnRoIPooler`, `SemanticFPNHead`, `dice_loss`, `mean_iou`'s
`scores_from_confusion`, the experiment's `unpaired_differences`) on hand cases, edge cases and seeded random
inputs; none trains a model. Worked solutions: notebooks/solutions/ch09.py.
"""

import copy
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
from minimtl.evaluation.semantic import scores_from_confusion
from minimtl.experiments import mtl
from minimtl.losses import dice_loss
from minimtl.modeling.hypercolumn import HypercolumnHead, HypercolumnRoIPooler
from minimtl.modeling.semantic_head import SemanticFPNHead

# Section 9.2's per-level count for "ResNet-18 width 64, D=128, 800 x 1344": the 1x1 projections of
# C2..C5 (64, 128, 256, 512 channels) at their own sizes, plus 4 multiply-adds per upsampled value.
COCO_SIZES = [(800 // s, 1344 // s) for s in (4, 8, 16, 32)]
HYPERCOLUMN_PER_LEVEL = sum(h * w * c * 128 for (h, w), c in zip(COCO_SIZES, (64, 128, 256, 512), strict=True)) + (
    4 * 3 * COCO_SIZES[0][0] * COCO_SIZES[0][1] * 128
)
VERDICTS = ("better", "worse", "no clear difference")


# --- helpers: every failure is an AssertionError that names the exercise ---------------------------


def small_levels(generator, channels=(4, 8, 16), finest=16, batch=2) -> list[Tensor]:
    """Backbone-like levels, each half the size of the previous: [(N, C_l, H_l, W_l)]."""
    return [
        torch.randn(batch, c, finest >> i, (finest * 3 // 2) >> i, generator=generator) for i, c in enumerate(channels)
    ]


def _randomise(module: nn.Module, generator) -> None:
    """Random weights and biases (minimtl initialises the biases at 0, which would hide a forgotten bias)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=generator))


# --- the exercises -----------------------------------------------------------------------------------


def full_resolution_reference(head: HypercolumnHead, features: list[Tensor], size) -> Tensor:
    """The head's layers on hypercolumns built at `size`: every level projected and upsampled straight to it."""
    columns = sum(
        F.interpolate(p(f), size=size, mode="bilinear", align_corners=False)
        for p, f in zip(head.projections, features, strict=True)
    )
    return head.classifier(F.relu(head.hidden(F.relu(columns))))


@_keeps_global_rng
def exercise_1(answer: dict) -> None:
    """{"logits": f(head, features, size) -> (N, S, H, W), "two_steps_same": bool, "relu_commutes": bool}."""
    _keys(1, answer, ("logits", "two_steps_same", "relu_commutes"))
    generator = torch.Generator().manual_seed(0)
    head = HypercolumnHead([4, 8, 16], 3, channels=8)
    _randomise(head, generator)
    features = small_levels(generator)
    for size in ((64, 96), (40, 50)):
        with torch.no_grad():
            got = _call(1, answer["logits"], head, features, size)
            expected = full_resolution_reference(head, features, size)
            if isinstance(got, Tensor) and got.shape == expected.shape:
                upsampled = F.interpolate(head(features), size=size, mode="bilinear", align_corners=False)
                if torch.allclose(got, upsampled, atol=1e-6):
                    raise AssertionError(
                        "exercise 1: these are the head's logits upsampled; build the hypercolumns at the image's "
                        "pixels and apply the head's layers to them"
                    )
        _close(1, f"the logits at {size}", got, expected, atol=1e-4, rtol=1e-4)
    coarse = torch.randn(1, 2, 4, 4, generator=generator)
    one = F.interpolate(coarse, size=(128, 128), mode="bilinear", align_corners=False)
    two = F.interpolate(F.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False), size=(128, 128),
                        mode="bilinear", align_corners=False)  # fmt: skip
    two_steps_same = bool(torch.allclose(one, two, atol=1e-6))
    assert answer["two_steps_same"] is two_steps_same, (
        "exercise 1: compare F.interpolate(F.interpolate(x, 32), 128) with F.interpolate(x, 128) on a 4 x 4 map"
    )
    relu_commutes = bool(
        torch.allclose(
            F.relu(F.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)),
            F.interpolate(F.relu(coarse), size=(32, 32), mode="bilinear", align_corners=False),
            atol=1e-6,
        )
    )
    assert answer["relu_commutes"] is relu_commutes, (
        "exercise 1: compare relu(up(x)) with up(relu(x)) where x changes sign between two cells"
    )


@_keeps_global_rng
def exercise_2(linear_hypercolumn) -> None:
    """LinearHypercolumn(in_channels, num_classes): forward(features) = HypercolumnHead.hypercolumns with
    channels = num_classes, and nothing after it (an affine map of the features)."""
    generator = torch.Generator().manual_seed(0)
    module = _call(2, linear_hypercolumn, [4, 8, 16], 3)
    if not isinstance(module, nn.Module) or not hasattr(module, "projections"):
        raise AssertionError(
            "exercise 2: make an nn.Module with HypercolumnHead's `projections` (one 1x1 conv per level)"
        )
    if [p.out_channels for p in module.projections] != [3, 3, 3]:
        raise AssertionError("exercise 2: each level's projection should give num_classes (3) channels: the logits")
    _randomise(module, generator)
    features = small_levels(generator)
    with torch.no_grad():
        got = _call(2, module, features)
        _close(2, "the logits", got, HypercolumnHead.hypercolumns(module, features))
        # Affine: f(x + y) = f(x) + f(y) - f(0), level by level; a ReLU anywhere breaks it.
        others = small_levels(generator)
        zero = [torch.zeros_like(f) for f in features]
        both = [a + b for a, b in zip(features, others, strict=True)]
        _close(2, "f(x + y), which for a linear classifier is f(x) + f(y) - f(0)", module(both),
               module(features) + module(others) - module(zero), atol=1e-4, rtol=1e-4)  # fmt: skip


@_keeps_global_rng
def exercise_3(iou_per_class) -> None:
    """iou_per_class(matrix (C, C), rows true, columns predicted) -> [IoU_c], nan for a class that never occurs."""
    generator = torch.Generator().manual_seed(0)
    cases = {
        "by hand": torch.tensor([[50, 5, 0], [10, 20, 0], [0, 5, 10]]),
        "a class absent from truth and predictions": torch.tensor(
            [[40, 2, 0, 1], [3, 9, 0, 0], [0, 0, 0, 0], [1, 0, 0, 4]]
        ),
        "a class predicted but absent from the truth": torch.tensor([[30, 0, 6], [2, 8, 1], [0, 0, 0]]),
        "random": torch.randint(0, 1000, (4, 4), generator=generator),
    }
    for name, matrix in cases.items():
        got = _call(3, iou_per_class, matrix.clone())
        expected = scores_from_confusion(matrix)["IoU"]
        got = [float(v) for v in got]
        assert len(got) == len(expected), f"exercise 3 ({name}): one IoU per class ({len(expected)}), got {len(got)}"
        for c, (mine, theirs) in enumerate(zip(got, expected, strict=True)):
            if math.isnan(theirs):
                assert math.isnan(mine), (
                    f"exercise 3 ({name}): class {c} never occurs; its IoU is undefined (nan), got {mine}"
                )
                continue
            assert math.isclose(mine, theirs, abs_tol=1e-9), (
                f"exercise 3 ({name}): class {c}: IoU = TP / (TP + FP + FN) = {theirs:.4f}, got {mine:.4f} "
                "(rows are the true class, columns the predicted one)"
            )


@_keeps_global_rng
def exercise_4(inverse_frequency_weights) -> None:
    """inverse_frequency_weights(labels (N, H, W), num_classes, ignore_index=255) -> (C,): w_c = N / (K n_c)."""
    generator = torch.Generator().manual_seed(0)
    shapes = torch.zeros(2, 20, 30, dtype=torch.int64)  # mostly background, as the shapes are
    shapes[0, 2:8, 3:9], shapes[0, 10:18, 12:25], shapes[1, 5:9, 20:28] = 1, 2, 1
    padded = shapes.clone()
    padded[:, :, 26:] = 255  # the padding of a batch: ignored
    cases = {
        "shapes, class 3 absent": (shapes, 4),
        "with ignored padding": (padded, 4),
        "random": (torch.randint(0, 5, (3, 10, 10), generator=generator), 5),
    }
    for name, (labels, num_classes) in cases.items():
        got = _call(4, inverse_frequency_weights, labels.clone(), num_classes)
        valid = labels[labels != 255]
        counts = torch.bincount(valid, minlength=num_classes).double()  # n_c
        present = counts > 0
        expected = torch.where(present, valid.numel() / (present.sum() * counts.clamp(min=1)), 0.0)
        if isinstance(got, Tensor) and got.shape == expected.shape:
            mean = got.double()[valid].mean().item()  # over the labelled pixels
            if math.isclose(mean, labels.numel() / valid.numel(), rel_tol=1e-5) and valid.numel() < labels.numel():
                raise AssertionError(f"exercise 4 ({name}): the ignored pixels (255) count for nothing, in N too")
            if not math.isclose(mean, 1.0, rel_tol=1e-5):
                raise AssertionError(
                    f"exercise 4 ({name}): the labelled pixels' weights should average 1, got {mean:.4f}"
                )
        _close(4, f"the weights ({name})", got, expected.float(), atol=1e-5, rtol=1e-5)


@_keeps_global_rng
def exercise_5(absent_class_cost) -> None:
    """absent_class_cost(total_probability, eps=1.0) -> dice_loss's term of a class absent from the image."""
    for height, width in ((4, 5), (16, 16)):
        for q in (0.001, 0.1, 0.5, 0.9):
            for eps in (1.0, 0.5):
                target = torch.zeros(1, height, width, dtype=torch.int64)  # only class 0: class 1 is absent
                logits = torch.zeros(1, 2, height, width, dtype=torch.float64)
                logits[:, 1] = math.log(q / (1 - q))  # softmax gives class 1 the probability q at every pixel
                expected = dice_loss(logits, target, eps=eps, reduction="none")[0, 1].item()
                total = q * height * width
                got = _number(5, "the cost", _call(5, absent_class_cost, total, eps))
                assert math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-9), (
                    f"exercise 5: an absent class with a total probability of {total:g} (eps {eps}) costs "
                    f"{expected:.6f} in dice_loss, got {got:.6f}; read _soft_dice: the eps is in both the numerator "
                    "and the denominator"
                )


@_keeps_global_rng
def exercise_6(answer: dict) -> None:
    """{"multiply_adds": SemanticFPNHead's conv multiply-adds at 800 x 1344 (256 in, 128 channels, 4 classes),
    "times_hypercolumn": that over section 9.2's per-level count}."""
    _keys(6, answer, ("multiply_adds", "times_hypercolumn"))
    head = SemanticFPNHead(256, 4, 128)
    expected = 0
    for stage, (h, w) in zip(head.stages, COCO_SIZES, strict=True):  # P2..P5 at strides 4..32
        for layer in stage:
            if isinstance(layer, nn.Conv2d):
                kh, kw = layer.kernel_size
                expected += h * w * layer.out_channels * layer.in_channels * kh * kw // layer.groups
            elif isinstance(layer, nn.Upsample):
                h, w = 2 * h, 2 * w
    h, w = COCO_SIZES[0]
    expected += h * w * head.classifier.out_channels * head.classifier.in_channels  # the 1x1 classifier
    got = _number(6, "multiply_adds", answer["multiply_adds"])
    if math.isclose(got * 9, expected, rel_tol=0.2):
        raise AssertionError("exercise 6: a 3x3 convolution does 9 multiply-adds per input channel and output value")
    assert math.isclose(got, expected, rel_tol=1e-3), (
        f"exercise 6: SemanticFPNHead's convolutions do {expected / 1e9:.2f} G multiply-adds at 800 x 1344, "
        f"not {got / 1e9:.2f} G; count every 3x3 conv of every stage at the size it runs at, and the classifier"
    )
    ratio = _number(6, "times_hypercolumn", answer["times_hypercolumn"])
    assert math.isclose(ratio, expected / HYPERCOLUMN_PER_LEVEL, rel_tol=1e-2), (
        f"exercise 6: divide by section 9.2's per-level count, {HYPERCOLUMN_PER_LEVEL / 1e6:.1f} M: "
        f"{expected / HYPERCOLUMN_PER_LEVEL:.1f}, not {ratio:.1f}"
    )


@_keeps_global_rng
def exercise_7(without_level) -> None:
    """without_level(pooler, level) -> a copy of the HypercolumnRoIPooler with that level's projection zeroed."""
    generator = torch.Generator().manual_seed(0)
    pooler = HypercolumnRoIPooler(8, 4, 14)
    _randomise(pooler, generator)  # with nonzero biases, as after training
    before = copy.deepcopy(pooler.state_dict())
    features = [torch.randn(2, 8, 64 // s, 64 // s, generator=generator) for s in (4, 8, 16, 32)]  # P2..P5
    boxes = [torch.tensor([[4.0, 6.0, 40.0, 30.0], [20.0, 20.0, 60.0, 62.0]]), torch.tensor([[0.0, 0.0, 64.0, 64.0]])]
    sizes = [(64, 64), (64, 64)]
    for level in (0, 2):
        mine = _call(7, without_level, pooler, level)
        for name, value in pooler.state_dict().items():
            if not torch.equal(value, before[name]):
                raise AssertionError("exercise 7: leave the trained pooler as it is; zero the level in a copy")
        if not isinstance(mine, HypercolumnRoIPooler):
            raise AssertionError(f"exercise 7: return a HypercolumnRoIPooler, got {type(mine).__name__}")
        rois = ops.boxes_to_rois(boxes)
        with torch.no_grad():
            parts = [
                p(ops.roi_align(f, rois, 14, 1 / s, 2, False))
                for index, (p, f, s) in enumerate(zip(pooler.projections, features, (4, 8, 16, 32), strict=True))
                if index != level
            ]
            expected = F.relu(sum(parts))
            got = _call(7, mine, features, boxes, sizes)
            if isinstance(got, Tensor) and got.shape == expected.shape and not torch.allclose(got, expected, atol=1e-5):
                bias = pooler.projections[level].bias[None, :, None, None]
                if torch.allclose(got, F.relu(sum(parts) + bias), atol=1e-5):
                    raise AssertionError(
                        f"exercise 7: level {level}'s projection still adds its bias; a zeroed level adds nothing"
                    )
        _close(7, f"the pooled features without level {level}", got, expected)


@_keeps_global_rng
def exercise_8(verdict) -> None:
    """verdict(scores_a, scores_b) -> "better" | "worse" | "no clear difference", chapter 10.6's rule."""
    cases = [
        ([0.45, 0.46, 0.44], [0.40, 0.41, 0.42]),
        ([0.45, 0.47, 0.43], [0.40, 0.42, 0.38]),
        ([0.40, 0.41, 0.42], [0.45, 0.46, 0.44]),
        ([0.451, 0.438, 0.466], [0.438, 0.425, 0.451]),
        ([0.30, 0.50, 0.40], [0.35, 0.36, 0.37]),
        ([0.42], [0.40]),
        ([0.43, 0.45], [0.40, 0.41, 0.39]),
        ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
    ]
    for a, b in cases:
        results = {
            "joint, a": [{"mIoU": v} for v in a],
            "semantic only": [{"mIoU": v} for v in b],
        }
        (_, _, diff, stderr, expected) = mtl.unpaired_differences(mtl.summary(results), results)[0]
        got = _call(8, verdict, list(a), list(b))
        assert got in VERDICTS, f"exercise 8: return one of {VERDICTS}, got {got!r}"
        assert got == expected, (
            f"exercise 8: a = {a}, b = {b}: the difference {diff:+.4f} against twice its standard error "
            f"2 x {stderr:.4f} gives {expected!r}, not {got!r}; the standard error of a mean over n seeds is "
            "std / sqrt(n)"
        )
