"""load_backbone_weights (minimtl/models/pretrained.py): torchvision ImageNet ResNet checkpoints into the backbone.

torchvision is the oracle: its ResNet, with random weights and random BatchNorm statistics, is saved
to a file, loaded into minimtl's backbone, and both must give the same C2..C5.
"""

import re

import pytest
import torch
import torchvision  # the oracle: a required test dependency, so a missing one fails instead of skipping
from torch import nn

import minimtl.models
from minimtl.modeling.backbone import FrozenBatchNorm2d, resnet18, resnet34
from minimtl.models import MultiTaskConfig, MultiTaskRCNN, load_backbone_weights


def randomised_resnet(arch: str, seed: int) -> nn.Module:
    """torchvision's ResNet in eval mode, BatchNorm statistics and affine parameters random too: with
    the defaults (mean 0, var 1, weight 1, bias 0) a BatchNorm loaded as the identity would pass."""
    torch.manual_seed(seed)
    net = getattr(torchvision.models, arch)(weights=None)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.num_batches_tracked.fill_(1234)
    return net.eval()


def torchvision_c2_to_c5(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    features = []
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        x = layer(x)
        features.append(x)
    return features


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """arch -> (torchvision net, path of its saved state_dict); made once, read by every test."""
    folder = tmp_path_factory.mktemp("checkpoints")
    made = {}
    for seed, arch in enumerate(("resnet18", "resnet50")):
        net = randomised_resnet(arch, seed)
        path = folder / f"{arch}.pth"
        torch.save(net.state_dict(), path)
        made[arch] = net, path
    return made


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_loaded_backbone_matches_torchvision(checkpoints, arch):
    net, path = checkpoints[arch]
    build = getattr(minimtl.models, f"maskrcnn_{arch}_fpn")
    model = build(4, norm="frozen_bn", norm_eps=1e-5, trainable_backbone_layers=3).eval()
    requires_grad = {name: p.requires_grad for name, p in model.backbone.named_parameters()}
    summary = load_backbone_weights(model, path)

    file = torch.load(path, weights_only=True)
    ours = model.backbone.state_dict()
    assert summary["loaded"] == len(ours) and summary["missing"] == []
    assert set(summary["ignored"]) == {"fc.weight", "fc.bias"} | {k for k in file if k.endswith("num_batches_tracked")}
    for key, value in ours.items():
        assert torch.equal(value, file[key]), key

    # trainable_backbone_layers=3: layer2..layer4 train; the stem and layer1 are frozen, and frozen
    # BatchNorm has no parameters at all. Loading copies in place and keeps this.
    assert {name: p.requires_grad for name, p in model.backbone.named_parameters()} == requires_grad
    trainable = {name.split(".")[0] for name, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}
    assert not any(p.requires_grad for p in model.backbone.conv1.parameters())
    assert not any(p.requires_grad for p in model.backbone.layer1.parameters())
    assert all(isinstance(m, FrozenBatchNorm2d) for m in (model.backbone.bn1, model.backbone.layer4[-1].bn2))

    x = torch.randn(2, 3, 96, 64)
    assert model.config.channels_last  # the conv weights are NHWC; RCNN.batch_images sends the images so too
    with torch.no_grad():
        expected = torchvision_c2_to_c5(net, x.contiguous())
        features = model.backbone(x.contiguous(memory_format=torch.channels_last))
    assert [tuple(f.shape) for f in features] == [tuple(f.shape) for f in expected]
    for level, (ours_c, theirs_c) in enumerate(zip(features, expected, strict=True), start=2):
        # FrozenBatchNorm2d folds the statistics into x * scale + shift: float32 rounding differs.
        torch.testing.assert_close(
            ours_c, theirs_c, rtol=1e-4, atol=1e-4 * theirs_c.abs().max().item(), msg=f"C{level}"
        )


def test_plain_batchnorm_takes_the_statistics_and_the_counter(checkpoints):
    net, path = checkpoints["resnet18"]
    backbone = resnet18(norm="bn")
    summary = load_backbone_weights(backbone, path)
    assert summary["ignored"] == ["fc.weight", "fc.bias"] and summary["loaded"] == len(backbone.state_dict())
    assert backbone.layer3[1].bn2.num_batches_tracked.item() == 1234
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for ours_c, theirs_c in zip(backbone.eval()(x), torchvision_c2_to_c5(net, x), strict=True):
            torch.testing.assert_close(ours_c, theirs_c, atol=0, rtol=0)  # the same ops in the same order


def prefixed(state, prefix):
    return {prefix + k: v for k, v in state.items()}


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda s: {"state_dict": s, "epoch": 90}, id="state_dict"),
        pytest.param(lambda s: {"model": prefixed(s, "module.")}, id="model+module."),
        pytest.param(lambda s: {"state_dict": prefixed(s, "module.")}, id="state_dict+module."),
        pytest.param(lambda s: prefixed(s, "module."), id="module."),
        pytest.param(lambda s: prefixed({k: v for k, v in s.items() if "fc." not in k}, "backbone.body."), id="body"),
        pytest.param(lambda s: prefixed(s, "backbone."), id="backbone."),
    ],
)
def test_nested_and_prefixed_checkpoints(checkpoints, tmp_path, wrap):
    net, _ = checkpoints["resnet18"]
    path = tmp_path / "wrapped.pth"
    torch.save(wrap(net.state_dict()), path)
    backbone = resnet18(norm="frozen_bn")
    load_backbone_weights(backbone, path)
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, net.state_dict()[key]), key


def test_multitask_model_loads_into_its_backbone(checkpoints):
    net, path = checkpoints["resnet18"]
    model = MultiTaskRCNN(MultiTaskConfig(num_classes=4, backbone="resnet18", norm="frozen_bn"))
    load_backbone_weights(model, path)
    assert torch.equal(model.backbone.layer4[1].conv2.weight, net.layer4[1].conv2.weight)


def test_not_strict_reports_what_it_left(checkpoints, tmp_path):
    net, _ = checkpoints["resnet18"]
    state = {k: v for k, v in net.state_dict().items() if k != "layer4.1.bn2.bias"}
    state["extra.weight"] = torch.zeros(3)
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    backbone = resnet18(norm="frozen_bn")
    with raises(
        ValueError,
        r"Keys the backbone lacks: extra\.weight\. Backbone tensors the file lacks: layer4\.1\.bn2\.bias\. "
        r"strict=False loads the keys both have",
        path,
    ):
        load_backbone_weights(backbone, path)
    summary = load_backbone_weights(backbone, path, strict=False)
    assert summary["missing"] == ["layer4.1.bn2.bias"] and "extra.weight" in summary["ignored"]
    assert torch.equal(backbone.layer4[1].bn2.bias, torch.zeros(512))  # FrozenBatchNorm2d's initial value: kept
    assert torch.equal(backbone.layer4[1].bn2.weight, net.layer4[1].bn2.weight)


def raises(exception, match, path):
    """pytest.raises that also checks the message names the file."""
    return pytest.raises(exception, match=re.escape(str(path)) + ".*" + match)


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.pth"
    with raises(FileNotFoundError, ": no such file", path):
        load_backbone_weights(resnet18(), path)
    with raises(IsADirectoryError, "is a directory", tmp_path):
        load_backbone_weights(resnet18(), tmp_path)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "bad.pth"
    torch.save(torch.zeros(3), path)
    with raises(ValueError, r"is not a state dict: it holds a Tensor of shape \(3,\)", path):
        load_backbone_weights(resnet18(), path)
    torch.save({"weights": [1, 2]}, path)
    with raises(ValueError, "is not a state dict: 'weights' holds a list, not a Tensor", path):
        load_backbone_weights(resnet18(), path)
    torch.save({}, path)
    with raises(ValueError, "is not a state dict: it holds an empty dict", path):
        load_backbone_weights(resnet18(), path)
    torch.save(nn.Linear(2, 2), path)  # the whole module pickled, which weights_only refuses
    with raises(ValueError, r"could not be read .*: it pickles a torch\.nn\.modules\.linear\.Linear, not only", path):
        load_backbone_weights(resnet18(), path)
    path.write_bytes(b"")
    with raises(ValueError, r"could not be read .*: EOFError: the file is empty or cut short", path):
        load_backbone_weights(resnet18(), path)
    path.write_bytes(b"not a checkpoint")
    with raises(
        ValueError, r"could not be read .*; save the weights with torch\.save\(resnet\.state_dict\(\), path\)", path
    ):
        load_backbone_weights(resnet18(), path)
    with pytest.raises(TypeError, match="expected an RCNN, a MultiTaskRCNN or a ResNet, got Linear"):
        load_backbone_weights(nn.Linear(2, 2), path)


def test_other_architecture(checkpoints):
    _, path50 = checkpoints["resnet50"]
    with raises(
        ValueError,
        r"looks like resnet50 \(Bottleneck blocks, layer1\.0\.conv3 present\); the model is resnet18 \(BasicBlock "
        r"blocks, no layer1\.0\.conv3\)\. Keys the backbone lacks: layer1\.0\.conv3\.weight, .* \(and \d+ more\)\. "
        r"Build the model with backbone='resnet50'\.$",
        path50,
    ):
        load_backbone_weights(minimtl.models.maskrcnn_resnet18_fpn(4, norm="frozen_bn"), path50)
    _, path18 = checkpoints["resnet18"]
    with raises(ValueError, r"Backbone tensors the file lacks: layer1\.2\.conv1\.weight.*backbone='resnet18'", path18):
        load_backbone_weights(resnet34(norm="frozen_bn"), path18)


def test_whole_detector_is_pointed_elsewhere(tmp_path):
    path = tmp_path / "detector.pth"
    torch.save({"backbone.body.conv1.weight": torch.zeros(64, 3, 7, 7), "rpn.head.conv.weight": torch.zeros(1)}, path)
    with raises(ValueError, r"looks like no ResNet .*It holds a whole detector: use model\.load_state_dict", path):
        load_backbone_weights(resnet18(norm="frozen_bn"), path)


def test_shape_mismatch_names_the_key_and_the_width(checkpoints):
    _, path = checkpoints["resnet18"]
    with raises(
        ValueError,
        r"conv1\.weight has shape \(64, 3, 7, 7\) in the file but \(32, 3, 7, 7\) in the model \(and \d+ more\); "
        r"ImageNet weights need backbone_width=64",
        path,
    ):
        load_backbone_weights(minimtl.models.maskrcnn_resnet18_fpn(4, norm="frozen_bn", backbone_width=32), path)


def test_group_norm_cannot_take_batchnorm_statistics(checkpoints):
    _, path = checkpoints["resnet18"]
    with raises(ValueError, r'GroupNorm backbone \(norm="gn"\).*norm="frozen_bn" \(or "bn"\)', path):
        load_backbone_weights(minimtl.models.maskrcnn_resnet18_fpn(4, norm="gn"), path)
