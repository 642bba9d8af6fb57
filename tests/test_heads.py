"""RPN, box head, mask head and image transform (minimtl/modeling/rpn.py, roi_heads.py, mask_head.py,
transform.py), each against torchvision's counterpart where one exists."""

import importlib

import pytest
import torch

from minimtl import ops
from minimtl.bench.ops import random_boxes
from minimtl.modeling.anchors import AnchorGenerator
from minimtl.modeling.mask_head import paste_masks_in_image, project_masks_on_boxes
from minimtl.modeling.rpn import RegionProposalNetwork, RPNHead, flatten_anchor_outputs
from minimtl.modeling.transform import ImageTransform


def small_rpn(**kwargs):
    anchors = AnchorGenerator(((16,), (32,), (64,)), ((0.5, 1.0, 2.0),) * 3)
    return RegionProposalNetwork(anchors, RPNHead(8, 3), pre_nms_top_n=(100, 50), post_nms_top_n=(60, 30), **kwargs)


def features(g):
    return [torch.randn(2, 8, 32 // 2**i, 48 // 2**i, generator=g) for i in range(3)]  # strides 4, 8, 16


def test_flatten_anchor_outputs_order():
    x = torch.arange(2 * 3 * 4 * 5 * 6).float().view(2, 3 * 4, 5, 6)  # N=2, A=3, V=4, H=5, W=6
    flat = flatten_anchor_outputs(x, 4)  # (2, 5*6*3, 4)
    assert flat.shape == (2, 90, 4)
    n, a, v, y, xx = 1, 2, 3, 4, 5  # anchor a of cell (y, x), value v
    assert flat[n, (y * 6 + xx) * 3 + a, v] == x[n, a * 4 + v, y, xx]


def test_rpn_proposals_and_losses():
    g = torch.Generator().manual_seed(0)
    rpn = small_rpn()
    targets = [
        {"boxes": torch.tensor([[10.0, 20, 60, 90], [100, 40, 150, 120]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]  # an image without objects
    proposals, losses = rpn((128, 192), [(128, 190), (100, 150)], features(g), targets)
    assert [p.shape[1] for p in proposals] == [4, 4] and all(len(p) <= 60 for p in proposals)
    assert (proposals[1][:, 2] <= 150).all() and (proposals[1][:, 3] <= 100).all()  # clipped to its own size
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg"} and all(v.isfinite() for v in losses.values())
    sum(losses.values()).backward()
    assert rpn.head.objectness.weight.grad.abs().sum() > 0
    rpn.eval()
    proposals, losses = rpn((128, 192), [(128, 190), (100, 150)], features(g))
    assert losses == {} and all(len(p) <= 30 for p in proposals)


def test_rpn_giou_loss_and_bad_option():
    rpn = small_rpn(box_loss="giou")
    targets = [{"boxes": torch.tensor([[10.0, 20, 60, 90]]), "labels": torch.tensor([1])}] * 2
    _, losses = rpn((128, 192), [(128, 192)] * 2, features(torch.Generator().manual_seed(1)), targets)
    assert losses["loss_rpn_box_reg"].isfinite() and losses["loss_rpn_box_reg"] > 0
    with pytest.raises(ValueError, match="box_loss must be 'smooth_l1', 'giou', 'diou' or 'ciou', got 'l2'"):
        small_rpn(box_loss="l2")


def test_rpn_matches_torchvision_in_eval():
    tv = importlib.import_module("torchvision.models.detection")
    from torchvision.models.detection.image_list import ImageList

    g = torch.Generator().manual_seed(2)
    sizes, ratios = ((16,), (32,), (64,)), ((0.5, 1.0, 2.0),) * 3
    theirs = tv.rpn.RegionProposalNetwork(tv.anchor_utils.AnchorGenerator(sizes, ratios), tv.rpn.RPNHead(8, 3),
                                          0.7, 0.3, 256, 0.5, {"training": 100, "testing": 50},
                                          {"training": 60, "testing": 30}, 0.7).eval()  # fmt: skip
    ours = small_rpn().eval()
    with torch.no_grad():
        ours.head.conv.weight.copy_(theirs.head.conv[0][0].weight)
        ours.head.conv.bias.copy_(theirs.head.conv[0][0].bias)
        for mine, tvs in [(ours.head.objectness, theirs.head.cls_logits), (ours.head.deltas, theirs.head.bbox_pred)]:
            mine.weight.normal_(generator=g)
            tvs.weight.copy_(mine.weight)
        feats = features(g)
        expected, _ = theirs(ImageList(torch.zeros(2, 3, 128, 192), [(128, 190), (100, 150)]),
                             {str(i): f for i, f in enumerate(feats)})  # fmt: skip
        got, _ = ours((128, 192), [(128, 190), (100, 150)], feats)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_project_and_paste_masks_match_torchvision():
    roi_heads = importlib.import_module("torchvision.models.detection.roi_heads")
    g = torch.Generator().manual_seed(3)
    gt = (torch.rand(3, 60, 80, generator=g) > 0.5).to(torch.uint8)
    boxes = random_boxes(10, size=60, max_side=40, generator=g)
    matched = torch.randint(0, 3, (10,), generator=g)
    torch.testing.assert_close(project_masks_on_boxes(gt, boxes, matched, 28),
                               roi_heads.project_masks_on_boxes(gt, boxes, matched, 28), atol=0, rtol=0)  # fmt: skip
    masks = torch.rand(10, 1, 28, 28, generator=g)
    boxes = torch.cat([boxes, torch.tensor([[-20.0, -5, 30, 200]])])  # one box beyond the image
    masks = torch.cat([masks, torch.rand(1, 1, 28, 28, generator=g)])
    pasted = paste_masks_in_image(masks, boxes, (60, 80))
    assert pasted.shape == (11, 1, 60, 80)
    torch.testing.assert_close(pasted, roi_heads.paste_masks_in_image(masks, boxes, (60, 80)), atol=0, rtol=0)
    assert paste_masks_in_image(masks[:0], boxes[:0], (60, 80)).shape == (0, 1, 60, 80)


def test_transform_resizes_pads_and_maps_back():
    transform = ImageTransform(min_size=100, max_size=160).eval()
    images = [torch.rand(3, 50, 60), torch.rand(3, 80, 200)]
    targets = [
        {"boxes": torch.tensor([[10.0, 5, 30, 25]]), "masks": torch.ones(1, 50, 60, dtype=torch.uint8)},
        {"boxes": torch.tensor([[0.0, 0, 200, 80]]), "masks": torch.ones(1, 80, 200, dtype=torch.uint8)},
    ]
    batch, sizes, resized = transform(images, targets)
    assert sizes == [(100, 120), (64, 160)]  # shorter side to 100, unless the longer exceeds 160
    assert batch.shape == (2, 3, 128, 160)  # padded to multiples of 32
    assert resized[0]["boxes"].tolist() == [[20.0, 10.0, 60.0, 50.0]] and resized[0]["masks"].shape == (1, 100, 120)
    assert targets[0]["boxes"].tolist() == [[10.0, 5, 30, 25]]  # the caller's targets are untouched
    assert (batch[1, :, 64:] == 0).all()  # the padding
    back = transform.postprocess([{"boxes": resized[1]["boxes"].clone()}], [sizes[1]], [(80, 200)])
    torch.testing.assert_close(back[0]["boxes"], targets[1]["boxes"])
    tv = importlib.import_module("torchvision.models.detection.transform")
    theirs = tv.GeneralizedRCNNTransform(100, 160, transform.image_mean, transform.image_std).eval()
    image_list, _ = theirs(images)
    torch.testing.assert_close(batch, image_list.tensors, atol=0, rtol=0)
    assert image_list.image_sizes == sizes


def test_transform_rejects_bad_images():
    transform = ImageTransform()
    with pytest.raises(ValueError, match=r"images\[1\] must be a Tensor\[3, H, W\], got shape \(1, 8, 8\)"):
        transform([torch.rand(3, 8, 8), torch.rand(1, 8, 8)])
    with pytest.raises(TypeError, match=r"images\[0\] must be floating point with values in \[0, 1\], got torch.uint8"):
        transform([torch.zeros(3, 8, 8, dtype=torch.uint8)])


def test_clip_and_remove_small_boxes():
    boxes = torch.tensor([[-5.0, -5, 10, 10], [5, 5, 500, 300], [3, 3, 3.0005, 10]], dtype=torch.float64)
    clipped = ops.clip_boxes_to_image(boxes, (100, 200))
    assert clipped.tolist() == [[0, 0, 10, 10], [5, 5, 200, 100], [3, 3, 3.0005, 10]]
    assert ops.remove_small_boxes(clipped, 1e-3).tolist() == [0, 1]
