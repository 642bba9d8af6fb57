"""Feature Pyramid Network (Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017).

Deep features (C5) know what is in the image but are coarse; shallow ones (C2) are sharp but know
little. FPN gives every level both (section 3): a top-down path upsamples the coarser merged map by
nearest neighbour, and a lateral 1x1 conv brings each C_i to the same width d; the two are added,
and a 3x3 conv smooths the sum:

    M5 = lateral5(C5),    M_i = lateral_i(C_i) + upsample(M_{i+1}),    P_i = output_i(M_i)

Section 4.1 adds P6 for the RPN's largest anchors: P5 subsampled with stride 2 (a 1x1 max-pool).

Shapes: C_i (N, c_i, H/2^i, W/2^i) -> P_i (N, d, H/2^i, W/2^i), i = 2..5; P6 (N, d, H/64, W/64).
"""

import torch.nn.functional as F
from torch import Tensor, nn


class FPN(nn.Module):
    """forward([C2, C3, C4, C5]) -> [P2, P3, P4, P5, P6], each with `out_channels` channels."""

    def __init__(self, in_channels: list[int], out_channels: int = 256):
        super().__init__()
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output_convs = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        self.out_channels = out_channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        merged = self.lateral_convs[-1](features[-1])  # M5, (N, d, H/32, W/32)
        outputs = [self.output_convs[-1](merged)]
        for i in range(len(features) - 2, -1, -1):  # C4, C3, C2
            lateral = self.lateral_convs[i](features[i])  # (N, d, h_i, w_i)
            merged = lateral + F.interpolate(merged, size=lateral.shape[-2:], mode="nearest")
            outputs.insert(0, self.output_convs[i](merged))
        outputs.append(F.max_pool2d(outputs[-1], kernel_size=1, stride=2))  # P6
        return outputs
