"""Worked solutions to the exercises of chapter 5, the backbone and the feature pyramid (notebooks/05_fpn.ipynb).

Each `exercise_K` is the answer in the form `exercises.ch05.exercise_K` takes; the reasoning is in the
comments and docstrings. `MISTAKES` holds a plausible wrong answer per exercise, which the check rejects.
Try the exercise before you read on.
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn

from minimtl.modeling.fpn import FPN

# --- Exercise 1 ----------------------------------------------------------------------------------
# Along the longest path (the residual branch), a layer with kernel k and stride s grows the receptive
# field r by (k - 1) x j, j the product of the strides before it (the "jump", in input pixels), and
# multiplies j by s:
#   conv1 7 x 7 / 2:   r = 1 + 6 x 1 = 7,      j = 2
#   maxpool 3 x 3 / 2: r = 7 + 2 x 2 = 11,     j = 4
#   layer1, 4 convs 3 x 3:   r = 11 + 4 x (2 x 4) = 43             -> C2: 43
#   layer2, the first /2:    r = 43 + 2 x 4 = 51, j = 8; 3 more: 51 + 3 x 16 = 99     -> C3: 99
#   layer3: 99 + 2 x 8 = 115, j = 16; 3 more: 115 + 3 x 32 = 211                       -> C4: 211
#   layer4: 211 + 2 x 16 = 243, j = 32; 3 more: 243 + 3 x 64 = 435                    -> C5: 435
# (The 1 x 1 shortcuts see less; padding does not change the count.) C4 and C5 see more than a whole
# 128-pixel image: every C5 pixel of the small model depends on the entire image (and on the zero padding
# around it). The *effective* receptive field, where the gradient is large, is much smaller, about
# Gaussian around the centre.
exercise_1 = {"C2": 43, "C3": 99, "C4": 211, "C5": 435, "larger_than_128": {"C4", "C5"}}


# --- Exercise 2 ----------------------------------------------------------------------------------
def toy_fpn_bilinear(cs, fpn):
    """Section 5.3's toy_fpn with bilinear upsampling (align_corners=False: the pixels' centres scale by 2).

    P2 changes, but not much: by about 14% of its norm on an untrained ResNet-18 with a 64-channel FPN
    (P3 and P4 by 12% and 11%; P5 and P6 not at all). Bilinear upsampling replaces each 2 x 2
    block of copies by a ramp between neighbouring values of the coarser map, so the two differ by at
    most half the difference between neighbours, and only in the top-down term (the lateral term,
    which carries P2's detail, is the same). The 3 x 3 output convolution then mixes each pixel with
    its neighbours, itself a smoothing filter that training can shape to undo the blockiness of nearest
    upsampling; so the network can adapt to either, and the cheaper nearest upsampling is the usual choice.
    """
    lateral = [F.conv2d(c, conv.weight, conv.bias) for c, conv in zip(cs, fpn.lateral_convs, strict=True)]
    merged = [lateral[3]]  # M5
    for i in (2, 1, 0):  # M4, M3, M2
        up = F.interpolate(merged[0], scale_factor=2, mode="bilinear", align_corners=False)
        merged.insert(0, lateral[i] + up)
    ps = [F.conv2d(m, conv.weight, conv.bias, padding=1) for m, conv in zip(merged, fpn.output_convs, strict=True)]
    return ps + [ps[-1][:, :, ::2, ::2]]  # P6: every other pixel of P5


exercise_2 = toy_fpn_bilinear


# --- Exercise 3 ----------------------------------------------------------------------------------
class LateralOnlyFPN(FPN):
    """The FPN without its top-down pathway: P_i = O_i(L_i(C_i)), P6 = P5 subsampled by 2.

    The same parameters as FPN (so the same weights load), only forward changes. In a copy of the small
    model (`model.fpn = LateralOnlyFPN(model.backbone.out_channels, 64)`) trained as in section 5.4,
    expect the RPN's objectness loss on the small objects (the 10 x 10 square and the 16 x 16 ones, whose
    anchors live on P2 and P3) to fall more slowly: without the top-down path, P2 is a 1 x 1 convolution
    of C2, a few layers from the pixels, with a receptive field of 43 pixels and little semantics; with
    it, P2 also carries C5's view of the whole image. Large objects, on P4 and P5, barely notice. (Measure
    it over a few seeds: with one synthetic batch and tens of steps the difference is noisy.)
    """

    def forward(self, features):
        outputs = [out(lat(c)) for c, lat, out in zip(features, self.lateral_convs, self.output_convs, strict=True)]
        outputs.append(F.max_pool2d(outputs[-1], kernel_size=1, stride=2))  # P6
        return outputs


exercise_3 = LateralOnlyFPN

# --- Exercise 4 ----------------------------------------------------------------------------------
# Level assignment depends on a box's size in pixels. COCO images are resized to 800 pixels (the short
# side), the small model's to 128: the same scene gives boxes 128 / 800 = 0.16 times as large. To send a
# box that covers the same fraction of its image to the same level, scale the canonical size by the same
# factor: 224 x 128 / 800 = 35.84 (about 36). Then the level boundaries (canonical / 2, canonical, 2
# canonical, at sides 18, 36, 72 pixels) spread the small model's boxes over P2..P5 as COCO's are, instead of
# sending everything below 112 pixels to P2.
exercise_4 = 224 * 128 / 800

# --- Exercise 5 ----------------------------------------------------------------------------------
# A. P6 exists only for the RPN's largest anchors (512 pixels, stride 64; FPN paper section 4.1), and the
# box head never pools from it. Subsampling P5 adds no parameters and no computation, and because the RPN
# head is shared by all levels, it sees on P6 exactly the features it sees on P5's even pixels: the same
# filters must then tell 512-pixel objects from 256-pixel ones by the anchors alone. RetinaNet's P6 (and
# P7), a strided 3 x 3 convolution on C5, gives the coarse level its own learned features and a larger
# receptive field, which a one-stage detector classifying every anchor there needs more; for ResNet-50 with
# d = 256 it costs 2048 x 256 x 9 + 256 = 4,718,848 parameters (and P7 another 590,080).
exercise_5 = {"extra_parameters": 2048 * 256 * 9 + 256, "choice": "A"}


# --- Exercise 6 ----------------------------------------------------------------------------------
def fold(conv: nn.Conv2d, bn) -> nn.Conv2d:
    """A new convolution equal to bn(conv(x)) for a FrozenBatchNorm2d bn (or a BatchNorm2d in eval mode).

    bn(y) = y * scale + shift per output channel c, with scale = weight / sqrt(running_var + eps) and
    shift = bias - running_mean * scale. The convolution is linear: conv(x)[c] = W[c] * x + b[c], so
        bn(conv(x))[c] = (scale[c] W[c]) * x + (scale[c] b[c] + shift[c]):
    multiply each output channel's filter by scale[c], and the bias (0 if the conv has none) likewise,
    then add shift. One layer fewer at inference, the same numbers up to rounding.
    """
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (out,)
    shift = bn.bias - bn.running_mean * scale
    folded = copy.deepcopy(conv)  # keeps stride, padding, dilation, groups; leaves conv untouched
    with torch.no_grad():
        folded.weight.mul_(scale.reshape(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
        folded.bias = nn.Parameter(bias * scale + shift)
    return folded


exercise_6 = fold


# --- Mistakes the checks must reject ---------------------------------------------------------------
def _align_corners(cs, fpn):  # align_corners=True: the corners' centres stay, the rest shifts
    lateral = [conv(c) for c, conv in zip(cs, fpn.lateral_convs, strict=True)]
    merged = [lateral[3]]
    for i in (2, 1, 0):
        size = lateral[i].shape[-2:]
        merged.insert(0, lateral[i] + F.interpolate(merged[0], size=size, mode="bilinear", align_corners=True))
    ps = [conv(m) for m, conv in zip(merged, fpn.output_convs, strict=True)]
    return ps + [ps[-1][:, :, ::2, ::2]]


class _LateralsOnly(FPN):  # forgets the output convolutions
    def forward(self, features):
        outputs = [lat(c) for c, lat in zip(features, self.lateral_convs, strict=True)]
        return outputs + [outputs[-1][:, :, ::2, ::2]]


def _fold_without_conv_bias(conv, bn):  # the conv's own bias is dropped
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    folded = copy.deepcopy(conv)
    with torch.no_grad():
        folded.weight.mul_(scale.reshape(-1, 1, 1, 1))
        folded.bias = nn.Parameter(bn.bias - bn.running_mean * scale)
    return folded


MISTAKES = {
    1: {"C2": 23, "C3": 51, "C4": 107, "C5": 219, "larger_than_128": {"C5"}},  # forgot the max-pool
    2: _align_corners,
    3: _LateralsOnly,
    4: 224 * 128 / 1333,  # scaled by max_size instead of min_size
    5: {"extra_parameters": 2048 * 256 * 9, "choice": "C"},
    6: _fold_without_conv_bias,
}
