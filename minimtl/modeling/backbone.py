"""ResNet backbones (He et al., "Deep Residual Learning", CVPR 2016), returning C2-C5.

A detector needs features at several scales. ResNet computes them on the way: a stem (7x7 conv,
stride 2, then 3x3 max-pool, stride 2) and four stages of residual blocks, each halving the
resolution. Their outputs are C2, C3, C4, C5 at strides 4, 8, 16, 32, which the FPN combines.

    block(x) = relu(F(x) + shortcut(x))
    BasicBlock (ResNet-18/34):  F = conv3x3 -> norm -> relu -> conv3x3 -> norm
    Bottleneck (ResNet-50):     F = conv1x1 -> norm -> relu -> conv3x3 (stride) -> norm -> relu
                                    -> conv1x1 (4x channels) -> norm
    shortcut = identity, or conv1x1 (stride) -> norm when the shape changes.

The stride sits on the 3x3 conv ("ResNet v1.5", as in torchvision). Module names follow
torchvision's (conv1, bn1, layer1..layer4, downsample), so its weights load with few renames.

Shapes: N images, 3 x H x W in; C2 is (N, 64e, H/4, W/4) ... C5 is (N, 512e, H/32, W/32), e = 1
for BasicBlock and 4 for Bottleneck (times width / 64).
"""

from collections.abc import Callable

import torch
from torch import Tensor, nn


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters (buffers, not parameters).

    y = x * scale + shift, scale = weight / sqrt(running_var + eps), shift = bias - running_mean * scale.
    Detectors train with a few images per batch, too few for batch statistics; a backbone started
    from pretrained weights keeps its normalisation frozen instead.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)  # a BatchNorm2d's counter: meaningless here
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight.reshape(1, -1, 1, 1) * (self.running_var.reshape(1, -1, 1, 1) + self.eps).rsqrt()
        shift = self.bias.reshape(1, -1, 1, 1) - self.running_mean.reshape(1, -1, 1, 1) * scale
        return x * scale + shift

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def norm_layer(kind: str, eps: float = 1e-5) -> Callable[[int], nn.Module]:
    """ "bn" (BatchNorm2d), "frozen_bn" (FrozenBatchNorm2d) or "gn" (GroupNorm, 32 groups or fewer)."""
    if kind == "bn":
        return lambda c: nn.BatchNorm2d(c, eps=eps)
    if kind == "frozen_bn":
        return lambda c: FrozenBatchNorm2d(c, eps=eps)
    if kind == "gn":
        return lambda c: nn.GroupNorm(min(32, c), c, eps=eps)
    raise ValueError(f"norm must be 'bn', 'frozen_bn' or 'gn', got {kind!r}")


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int, norm: Callable[[int], nn.Module]):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = norm(channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, channels, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int, norm: Callable[[int], nn.Module]):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, 1, bias=False)
        self.bn2 = norm(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = norm(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, out_channels, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def _shortcut(in_channels, out_channels, stride, norm) -> nn.Module | None:
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), norm(out_channels))


class ResNet(nn.Module):
    """A ResNet trunk: forward(images (N, 3, H, W)) -> [C2, C3, C4, C5].

    Args:
        block: BasicBlock or Bottleneck.
        layers: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
        norm: "bn", "frozen_bn" or "gn".
        width: channels of the stem and of the first stage (64 in the paper; smaller for toy runs).
        trainable_stages: how many stages, counted from the top (layer4), get gradients; 5 trains
            the stem too, 0 freezes everything (torchvision's trainable_backbone_layers).
        norm_eps: the normalisation's epsilon (torchvision's COCO checkpoints use 0.0).
    """

    def __init__(self, block, layers, norm="bn", width=64, trainable_stages=5, norm_eps=1e-5):
        super().__init__()
        make_norm = norm_layer(norm, norm_eps)
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = make_norm(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_channels, self.out_channels = width, []
        for i, num_blocks in enumerate(layers):
            channels, stride = width * 2**i, 1 if i == 0 else 2
            blocks = []
            for j in range(num_blocks):
                blocks.append(block(in_channels, channels, stride if j == 0 else 1, make_norm))
                in_channels = channels * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            self.out_channels.append(in_channels)  # C2..C5 channels
        self._init_weights()
        self.freeze(trainable_stages)

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def freeze(self, trainable_stages: int) -> None:
        if not 0 <= trainable_stages <= 5:
            raise ValueError(f"trainable_stages must be in [0, 5], got {trainable_stages}")
        trainable = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_stages]
        if trainable_stages == 5:
            trainable.append("bn1")
        for name, parameter in self.named_parameters():
            parameter.requires_grad_(any(name.startswith(prefix) for prefix in trainable))

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, width, H/4, W/4)
        features = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            features.append(x)  # C2 (N, c2, H/4, W/4) ... C5 (N, c5, H/32, W/32)
        return features


def resnet18(**kwargs) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), **kwargs)


def resnet34(**kwargs) -> ResNet:
    return ResNet(BasicBlock, (3, 4, 6, 3), **kwargs)


def resnet50(**kwargs) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), **kwargs)


RESNETS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}
