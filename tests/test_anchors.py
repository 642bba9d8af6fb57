"""AnchorGenerator and BoxCoder (minimtl/modeling/anchors.py, box_coder.py)."""

import importlib
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from minimtl.bench.ops import random_boxes
from minimtl.modeling.anchors import AnchorGenerator, cell_anchors
from minimtl.modeling.box_coder import BoxCoder


def test_cell_anchors_keep_the_area_and_the_ratio():
    anchors = cell_anchors((32, 64), (0.5, 1.0, 2.0))  # (6, 4), ratio-major
    w, h = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    sizes = torch.tensor([32.0, 64, 32, 64, 32, 64])
    ratios = torch.tensor([0.5, 0.5, 1, 1, 2, 2])
    torch.testing.assert_close(w * h, sizes**2, rtol=0.05, atol=0)  # rounding to whole pixels
    torch.testing.assert_close(h / w, ratios, rtol=0.05, atol=0)
    torch.testing.assert_close(anchors[:, :2], -anchors[:, 2:])  # centred on (0, 0)
    assert anchors[2].tolist() == [-16, -16, 16, 16]


def test_anchors_sit_on_the_stride_grid_in_head_order():
    gen = AnchorGenerator(((32,), (64,)), ((0.5, 1.0, 2.0),) * 2)
    per_level = gen((64, 96), [(8, 12), (4, 6)], torch.float32, "cpu")
    assert [a.shape for a in per_level] == [(8 * 12 * 3, 4), (4 * 6 * 3, 4)]
    for anchors, (h, w), stride in zip(per_level, [(8, 12), (4, 6)], [8, 16], strict=True):
        centres = ((anchors[:, :2] + anchors[:, 2:]) / 2).view(h, w, 3, 2)  # cell by cell, 3 per cell
        expected_x = torch.arange(w) * stride
        expected_y = torch.arange(h) * stride
        torch.testing.assert_close(centres[..., 0], expected_x[None, :, None].expand(h, w, 3).float())
        torch.testing.assert_close(centres[..., 1], expected_y[:, None, None].expand(h, w, 3).float())
    assert gen((64, 96), [(8, 12), (4, 6)], torch.float32, "cpu") is per_level  # cached per size


def test_anchors_match_torchvision():
    tv = importlib.import_module("torchvision.models.detection.anchor_utils")
    from torchvision.models.detection.image_list import ImageList

    sizes, ratios = ((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5
    shapes = [(50, 34), (25, 17), (13, 9), (7, 5), (4, 3)]
    features = [torch.zeros(1, 1, h, w) for h, w in shapes]
    expected = tv.AnchorGenerator(sizes, ratios)(ImageList(torch.zeros(1, 3, 200, 136), [(200, 130)]), features)[0]
    ours = torch.cat(AnchorGenerator(sizes, ratios)((200, 136), shapes, torch.float32, "cpu"))
    torch.testing.assert_close(ours, expected, atol=0, rtol=0)


def test_anchor_generator_rejects_mismatched_levels():
    with pytest.raises(ValueError, match="one aspect-ratio tuple per level"):
        AnchorGenerator(((32,), (64,)), ((1.0,),))
    with pytest.raises(ValueError, match="2 levels configured, got 1 maps"):
        AnchorGenerator(((32,), (64,)), ((1.0,),) * 2)((64, 64), [(8, 8)], torch.float32, "cpu")


@given(st.integers(0, 50), st.sampled_from([(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]))
def test_decode_inverts_encode(n, weights):
    g = torch.Generator().manual_seed(n)
    coder = BoxCoder(weights)
    # sides in [11, 110]: a size ratio of 10 at most, well inside the decoder's clamp (62.5)
    references = random_boxes(n, torch.float64, generator=g) + torch.tensor([0.0, 0, 10, 10], dtype=torch.float64)
    targets = random_boxes(n, torch.float64, generator=g) + torch.tensor([0.0, 0, 10, 10], dtype=torch.float64)
    deltas = coder.encode(targets, references)
    assert deltas.shape == (n, 4)
    torch.testing.assert_close(coder.decode(deltas, references), targets)


def test_decode_clamps_the_size_change_and_handles_classes():
    coder = BoxCoder()
    ref = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    huge = coder.decode(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), ref)
    assert huge[0, 2] - huge[0, 0] == pytest.approx(10 * 1000 / 16)  # exp(log(1000/16)) times 10
    per_class = coder.decode(torch.zeros(1, 12), ref)  # 3 classes, zero deltas: the reference itself
    assert per_class.shape == (1, 12) and per_class.view(3, 4).eq(ref).all()
    assert coder.clip == pytest.approx(math.log(1000 / 16))


def test_box_coder_matches_torchvision():
    tv = importlib.import_module("torchvision.models.detection._utils")
    g = torch.Generator().manual_seed(1)
    refs, targets = random_boxes(100, generator=g), random_boxes(100, generator=g)
    ours, theirs = BoxCoder((10.0, 10.0, 5.0, 5.0)), tv.BoxCoder((10.0, 10.0, 5.0, 5.0))
    torch.testing.assert_close(ours.encode(targets, refs), theirs.encode_single(targets, refs), atol=0, rtol=0)
    deltas = torch.randn(100, 8, generator=g)
    torch.testing.assert_close(ours.decode(deltas, refs), theirs.decode_single(deltas, refs), atol=0, rtol=0)
