"""Checks for the exercises of chapter 5, the backbone and the feature pyramid (notebooks/05_fpn.ipynb).

Each `exercise_K(answer)` returns quietly when the answer is right and raises an AssertionError that
says what is wrong otherwise. Values are computed from minimtl's modules (`resnet18`, `FPN`,
`LevelMapper`, `RCNNConfig`); functions and modules are run on seeded random inputs and compared with
the package's. No check trains a model, and none changes torch's global random state. Worked solutions:
notebooks/solutions/ch05.py.
"""

import copy
import dataclasses
import functools
import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn

from exercises.common import record as _record
from exercises.common import run as _call
from minimtl.modeling.backbone import Bottleneck, FrozenBatchNorm2d, resnet18
from minimtl.modeling.fpn import FPN
from minimtl.modeling.poolers import LevelMapper
from minimtl.models.rcnn import RCNNConfig

SMALL_MIN_SIZE = 128  # the chapter's small model: images of 128 pixels (SMALL in section 5.4)


def _keeps_global_rng(check):
    """Run a check without touching torch's global random state (module initialisation draws from it)."""

    @functools.wraps(check)
    def wrapper(answer):
        with torch.random.fork_rng(devices=[]):
            return check(answer)

    return wrapper


def _close(k: int, what: str, got, expected: torch.Tensor, atol: float) -> None:
    """got == expected to within atol, elementwise, with a message that shows where."""
    assert torch.is_tensor(got), f"exercise {k}: {what} should be a tensor, got {type(got).__name__}"
    assert got.shape == expected.shape, (
        f"exercise {k}: {what} should have shape {tuple(expected.shape)}, got {tuple(got.shape)}"
    )
    got, expected = got.detach().double(), expected.detach().double()
    bad = ~((got - expected).abs() <= atol)
    if bad.any():
        at = tuple(bad.nonzero()[0].tolist())
        raise AssertionError(
            f"exercise {k}: {what}: {int(bad.sum())} of {bad.numel()} values are off by more than {atol:g}; at "
            f"index {at} the answer is {expected[at].item():.6g}, got {got[at].item():.6g}"
        )


def _receptive_fields() -> dict[str, int]:
    """The receptive field of C2..C5 of ResNet-18, from its modules: r += (k - 1) * jump, jump *= stride along
    the longest path (the residual branch; the 1 x 1 shortcuts see less)."""
    trunk = resnet18(width=8)  # the width does not change the geometry
    r, jump, out = 1, 1, {}

    def visit(module):
        nonlocal r, jump
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
            k = module.kernel_size[0] if isinstance(module.kernel_size, tuple) else module.kernel_size
            d = module.dilation[0] if isinstance(module.dilation, tuple) else module.dilation
            s = module.stride[0] if isinstance(module.stride, tuple) else module.stride
            r, jump = r + (k - 1) * d * jump, jump * s

    visit(trunk.conv1)
    visit(trunk.maxpool)
    for i in range(1, 5):
        for block in getattr(trunk, f"layer{i}"):
            for name, module in block.named_children():
                if name != "downsample":
                    visit(module)
        out[f"C{i + 1}"] = r
    return out


@_keeps_global_rng
def exercise_1(answer) -> None:
    """answer: {"C2": ..., "C3": ..., "C4": ..., "C5": receptive fields in pixels, "larger_than_128": {names}}."""
    answer = _record(1, answer, {"C2", "C3", "C4", "C5", "larger_than_128"})
    fields = _receptive_fields()
    for name, expected in fields.items():
        assert answer[name] == expected, (
            f"exercise 1: the receptive field of {name} is {expected} pixels (stem: 7 x 7 stride 2, then 3 x 3 "
            f"max-pool stride 2; each 3 x 3 conv adds 2 x the current stride), got {answer[name]!r}"
        )
    larger = {name for name, r in fields.items() if r > 128}
    assert set(answer["larger_than_128"]) == larger, (
        f"exercise 1: the maps whose receptive field exceeds a 128-pixel image are {sorted(larger)}, got "
        f"{answer['larger_than_128']!r}"
    )


def _inputs(seed: int):
    """A seeded FPN of 16 channels on ResNet-18 (width 8)-like C2..C5 of a 64 x 64 image."""
    torch.manual_seed(seed)  # inside fork_rng: the global state is restored afterwards
    channels = [8, 16, 32, 64]
    fpn = FPN(channels, out_channels=16)
    with torch.no_grad():
        for conv in fpn.modules():
            if isinstance(conv, nn.Conv2d):
                conv.bias.uniform_(-0.5, 0.5)  # not the zeros of the initialisation: a forgotten bias shows
    cs = [torch.randn(2, c, 16 // 2**i, 16 // 2**i) for i, c in enumerate(channels)]
    return fpn, cs


def _bilinear_fpn(cs, fpn):
    lateral = [conv(c) for c, conv in zip(cs, fpn.lateral_convs, strict=True)]
    merged = [lateral[3]]
    for i in (2, 1, 0):
        up = F.interpolate(merged[0], scale_factor=2, mode="bilinear", align_corners=False)
        merged.insert(0, lateral[i] + up)
    ps = [conv(m) for m, conv in zip(merged, fpn.output_convs, strict=True)]
    return ps + [F.max_pool2d(ps[-1], kernel_size=1, stride=2)]


@_keeps_global_rng
def exercise_2(toy_fpn_bilinear) -> None:
    """toy_fpn_bilinear(cs, fpn) -> [P2, ..., P6], with bilinear upsampling (align_corners=False)."""
    fpn, cs = _inputs(2)
    with torch.no_grad():
        got = _call(2, "toy_fpn_bilinear", toy_fpn_bilinear, cs, fpn)
        expected = _bilinear_fpn(cs, fpn)
    assert isinstance(got, (list, tuple)) and len(got) == 5, (
        f"exercise 2: toy_fpn_bilinear should return [P2, P3, P4, P5, P6], got {type(got).__name__} of "
        f"{len(got) if isinstance(got, (list, tuple)) else '?'}"
    )
    for level, (p, e) in enumerate(zip(got, expected, strict=True)):
        what = f"P{level + 2}, upsampling with F.interpolate(scale_factor=2, mode='bilinear', align_corners=False)"
        _close(2, what, p, e, 1e-5)


@_keeps_global_rng
def exercise_3(lateral_only_fpn) -> None:
    """lateral_only_fpn: an FPN subclass, built as lateral_only_fpn(in_channels, out_channels), whose forward
    drops the top-down pathway: P_i = O_i(L_i(C_i)), P6 = P5 subsampled by 2."""
    fpn, cs = _inputs(3)
    module = _call(3, "lateral_only_fpn([8, 16, 32, 64], 16)", lateral_only_fpn, [8, 16, 32, 64], 16)
    assert isinstance(module, nn.Module), f"exercise 3: expected an nn.Module, got {type(module).__name__}"
    try:
        module.load_state_dict(fpn.state_dict())
    except RuntimeError as error:
        raise AssertionError(f"exercise 3: keep FPN's parameters and their names, so weights load: {error}") from None
    got = _call(3, "forward", module, cs)
    with torch.no_grad():
        ps = [out(lat(c)) for c, lat, out in zip(cs, fpn.lateral_convs, fpn.output_convs, strict=True)]
        expected = ps + [F.max_pool2d(ps[-1], kernel_size=1, stride=2)]
    assert isinstance(got, (list, tuple)) and len(got) == 5, "exercise 3: forward should return [P2, ..., P6]"
    for level, (p, e) in enumerate(zip(got, expected, strict=True)):
        _close(3, f"P{level + 2} = O(L(C{min(level, 3) + 2}))" + (" subsampled" if level == 4 else ""), p, e, 1e-5)
    sum(p.sum() for p in got).backward()
    frozen = [name for name, p in module.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not frozen, f"exercise 3: every parameter should get a gradient in training; these got none: {frozen}"


def exercise_4(canonical_size) -> None:
    """canonical_size: the small model's canonical size, so that its RoIs spread over P2..P5 as COCO's do."""
    default = inspect.signature(LevelMapper).parameters["canonical_size"].default  # 224
    coco = next(f.default for f in dataclasses.fields(RCNNConfig) if f.name == "min_size")  # 800
    expected = default * SMALL_MIN_SIZE / coco
    assert isinstance(canonical_size, (int, float)) and math.isclose(canonical_size, expected, rel_tol=0.02), (
        f"exercise 4: a COCO image is resized to {coco} pixels and the small model's to {SMALL_MIN_SIZE}: the same "
        f"object is {SMALL_MIN_SIZE / coco:g} times as large, so the canonical size should shrink with it, "
        f"{default} x {SMALL_MIN_SIZE}/{coco} = {expected:g}; got {canonical_size!r}"
    )
    # The consequence: boxes that are the same fraction of their image go to the same level.
    fractions = torch.linspace(0.05, 1.0, 60)  # the box's side over the image's

    def squares(side):  # (60, 4)
        return torch.stack([torch.zeros_like(side), torch.zeros_like(side), side, side], dim=1)

    small = LevelMapper(2, 5, canonical_size)(squares(fractions * SMALL_MIN_SIZE))
    large = LevelMapper(2, 5)(squares(fractions * coco))
    agree = (small == large).float().mean().item()
    assert agree > 0.9, f"exercise 4: only {agree:.0%} of the boxes land on the same level in both images"


_EXERCISE_5 = {
    "A": None,
    "B": "nothing stops a stride-2 3 x 3 convolution on a map of odd size: with padding 1 it gives ceil(n / 2), as "
    "the max-pool does; RetinaNet does exactly that",
    "C": "a 1 x 1 max-pool of stride 2 is plain subsampling: it takes every other pixel, no maximum over a "
    "neighbourhood, so it adds no invariance",
}


def exercise_5(answer) -> None:
    """answer: {"extra_parameters": the parameters of RetinaNet's P6 conv for ResNet-50 + FPN, "choice": A, B or C}."""
    answer = _record(5, answer, {"extra_parameters", "choice"})
    c5 = Bottleneck.expansion * 64 * 2**3  # ResNet-50's C5 channels: layer4 has 512 x 4
    d = inspect.signature(FPN).parameters["out_channels"].default  # 256
    expected = c5 * d * 3 * 3 + d  # a 3 x 3 convolution from C5 to d channels, with a bias
    assert answer["extra_parameters"] == expected, (
        f"exercise 5: a 3 x 3 convolution from C5's {c5} channels to {d}, with a bias, has {c5} x {d} x 9 + {d} = "
        f"{expected:,} parameters; the max-pool has none. Got {answer['extra_parameters']!r}"
    )
    choice = answer["choice"]
    assert choice in _EXERCISE_5, f"exercise 5: choice should be one of {sorted(_EXERCISE_5)}, got {choice!r}"
    assert _EXERCISE_5[choice] is None, f"exercise 5: not {choice}: {_EXERCISE_5[choice]}"


@_keeps_global_rng
def exercise_6(fold) -> None:
    """fold(conv, frozen_bn) -> a new nn.Conv2d equal to frozen_bn(conv(x)); conv is left unchanged."""
    torch.manual_seed(6)  # inside fork_rng
    cases = [
        ("a 3 x 3 convolution without bias, stride 2 (ResNet's)", nn.Conv2d(3, 5, 3, 2, 1, bias=False)),
        ("a 1 x 1 convolution with a bias", nn.Conv2d(4, 6, 1)),
        ("a 7 x 7 convolution with a bias, stride 2, padding 3", nn.Conv2d(3, 4, 7, 2, 3)),
    ]
    for name, conv in cases:
        conv = conv.double()
        bn = FrozenBatchNorm2d(conv.out_channels).double()
        with torch.no_grad():
            if conv.bias is not None:
                conv.bias.uniform_(-1, 1)
            bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-1, 1)
            bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(1e-3, 2)  # small variances: eps matters
        before = copy.deepcopy(conv.state_dict())
        folded = _call(6, "fold", fold, conv, bn)
        assert isinstance(folded, nn.Conv2d), (
            f"exercise 6: fold should return an nn.Conv2d, got {type(folded).__name__}"
        )
        assert all(torch.equal(v, conv.state_dict()[k]) for k, v in before.items()), (
            "exercise 6: fold changed the convolution it was given: build a new one (copy.deepcopy, then set its "
            "weight and bias)"
        )
        x = torch.randn(2, conv.in_channels, 11, 11, dtype=torch.float64)
        with torch.no_grad():
            _close(6, f"fold(conv, bn)(x) for {name}", folded(x), bn(conv(x)), atol=1e-10)
