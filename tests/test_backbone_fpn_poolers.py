"""ResNet, FPN and multi-scale RoIAlign (minimtl/modeling/backbone.py, fpn.py, poolers.py)."""

import importlib

import pytest
import torch
from torch import nn

from minimtl.bench.ops import random_boxes
from minimtl.modeling.backbone import FrozenBatchNorm2d, resnet18, resnet34, resnet50
from minimtl.modeling.fpn import FPN
from minimtl.modeling.poolers import LevelMapper, MultiScaleRoIAlign, infer_scale


@pytest.mark.parametrize("build, channels", [(resnet18, [64, 128, 256, 512]), (resnet34, [64, 128, 256, 512]),
                                             (resnet50, [256, 512, 1024, 2048])])  # fmt: skip
def test_resnet_returns_c2_to_c5(build, channels):
    model = build().eval()
    with torch.no_grad():
        features = model(torch.randn(1, 3, 64, 96))
    assert [f.shape[1] for f in features] == channels == model.out_channels
    assert [tuple(f.shape[-2:]) for f in features] == [(16, 24), (8, 12), (4, 6), (2, 3)]  # strides 4..32


def test_resnet_matches_torchvision():
    tv = importlib.import_module("torchvision.models")
    for ours, theirs in [(resnet18(), tv.resnet18()), (resnet50(), tv.resnet50())]:
        state = {k: v for k, v in theirs.state_dict().items() if not k.startswith("fc.")}
        ours.load_state_dict(state, strict=True)  # same names, no conversion needed
        ours.eval(), theirs.eval()
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            t = theirs.maxpool(theirs.relu(theirs.bn1(theirs.conv1(x))))
            for layer, feature in zip(
                [theirs.layer1, theirs.layer2, theirs.layer3, theirs.layer4], ours(x), strict=True
            ):
                t = layer(t)
                torch.testing.assert_close(feature, t, atol=0, rtol=0)


def test_frozen_batchnorm_equals_batchnorm_in_eval():
    bn = nn.BatchNorm2d(8).eval()
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(), bn.bias.data.uniform_()
    frozen = FrozenBatchNorm2d(8)
    frozen.load_state_dict(bn.state_dict())  # num_batches_tracked is dropped, not an error
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(frozen(x), bn(x), atol=1e-6, rtol=1e-5)
    assert not any(p.requires_grad for p in frozen.parameters())


def test_trainable_stages():
    model = resnet18(trainable_stages=2)
    trainable = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"layer3", "layer4"}
    assert all(p.requires_grad for p in resnet18(trainable_stages=5).parameters())
    with pytest.raises(ValueError, match=r"trainable_stages must be in \[0, 5\], got 6"):
        resnet18(trainable_stages=6)
    with pytest.raises(ValueError, match="norm must be 'bn', 'frozen_bn' or 'gn', got 'ln'"):
        resnet18(norm="ln")


def test_fpn_shapes_and_torchvision():
    feats = [torch.randn(2, c, 64 // 2**i, 48 // 2**i) for i, c in enumerate([8, 16, 32, 64])]
    fpn = FPN([8, 16, 32, 64], 16)
    outs = fpn(feats)
    assert [tuple(o.shape) for o in outs] == [(2, 16, 64, 48), (2, 16, 32, 24), (2, 16, 16, 12), (2, 16, 8, 6),
                                              (2, 16, 4, 3)]  # fmt: skip
    tv = importlib.import_module("torchvision.ops.feature_pyramid_network")
    theirs = tv.FeaturePyramidNetwork([8, 16, 32, 64], 16, extra_blocks=tv.LastLevelMaxPool())
    with torch.no_grad():
        for i in range(4):
            theirs.inner_blocks[i][0].weight.copy_(fpn.lateral_convs[i].weight)
            theirs.inner_blocks[i][0].bias.copy_(fpn.lateral_convs[i].bias)
            theirs.layer_blocks[i][0].weight.copy_(fpn.output_convs[i].weight)
            theirs.layer_blocks[i][0].bias.copy_(fpn.output_convs[i].bias)
        expected = list(theirs({str(i): f for i, f in enumerate(feats)}).values())
    for a, b in zip(outs, expected, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_level_mapper_boundaries():
    mapper = LevelMapper(2, 5)  # FPN eq. 1: floor(4 + log2(sqrt(wh) / 224)), clamped to [2, 5]
    sides = torch.tensor([10.0, 55.9, 56.0, 111.9, 112.0, 223.9, 224.0, 447.9, 448.0, 2000.0])
    boxes = torch.stack([torch.zeros_like(sides), torch.zeros_like(sides), sides, sides], dim=1)
    levels = mapper(boxes) + 2
    assert levels.tolist() == [2, 2, 2, 2, 3, 3, 4, 4, 5, 5]  # 56 -> 4 + log2(1/4) = 2; 112 -> 3; 224 -> 4


def test_infer_scale():
    assert infer_scale((200, 304), (800, 1216)) == 0.25
    assert infer_scale((26, 38), (800, 1216)) == 1 / 32  # 26/800 rounds to 1/32
    assert infer_scale((25, 38), (800, 1216)) == 1 / 32


def test_multiscale_roi_align_matches_torchvision():
    tv = importlib.import_module("torchvision.ops")
    g = torch.Generator().manual_seed(0)
    features = [torch.randn(2, 4, 64 // 2**i, 80 // 2**i, generator=g) for i in range(4)]  # strides 4..32
    boxes = [
        random_boxes(20, size=250, max_side=200, generator=g),
        random_boxes(7, size=250, max_side=200, generator=g),
    ]
    sizes = [(250, 310), (240, 300)]
    ours = MultiScaleRoIAlign(7, 2)(features, boxes, sizes)
    theirs = tv.MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)(
        {str(i): f for i, f in enumerate(features)}, boxes, sizes
    )
    torch.testing.assert_close(ours, theirs, atol=0, rtol=0)
