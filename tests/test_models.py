"""Faster/Mask R-CNN end to end (minimtl/models): torchvision's detections reproduced from its weights,
a small Mask R-CNN that overfits one batch, and the errors a user meets first."""

import dataclasses
import importlib

import pytest
import torch

from minimtl import models, ops

SMALL = dict(min_size=128, max_size=128, backbone_width=16, fpn_channels=64, representation_size=256,
             mask_layers=(64, 64), mask_dim_reduced=64, rpn_batch_size_per_image=64, box_batch_size_per_image=64,
             anchor_sizes=((16,), (32,), (64,), (128,), (256,)), rpn_pre_nms_top_n_train=200,
             rpn_post_nms_top_n_train=100, norm="gn")  # fmt: skip


def scene(num_images=2, size=128):
    """Coloured rectangles on a dark background: three objects per image, classes 1-3."""
    images, targets = [], []
    for i in range(num_images):
        image = torch.rand(3, size, size) * 0.2
        boxes, masks, labels = [], [], []
        for x, y, w, h, c in [(10 + 40 * i, 15, 40, 30, 1), (70, 60 + 10 * i, 35, 50, 2), (20, 80, 30, 30, 3)]:
            mask = torch.zeros(size, size, dtype=torch.uint8)
            mask[y : y + h, x : x + w] = 1
            image[c - 1, y : y + h, x : x + w] = 0.9
            boxes.append([x, y, x + w, y + h])
            masks.append(mask)
            labels.append(c)
        images.append(image)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
                        "masks": torch.stack(masks)})  # fmt: skip
    return images, targets


def assert_same_detections(ours, theirs):
    for a, b in zip(ours, theirs, strict=True):
        assert a["boxes"].shape == b["boxes"].shape and len(a["boxes"]) > 0
        torch.testing.assert_close(a["boxes"], b["boxes"], atol=1e-3, rtol=0)
        assert torch.equal(a["labels"], b["labels"])
        torch.testing.assert_close(a["scores"], b["scores"], atol=1e-5, rtol=0)
        if "masks" in b:
            torch.testing.assert_close(a["masks"], b["masks"], atol=1e-3, rtol=0)


@pytest.mark.parametrize("masks", [True, False], ids=["mask_rcnn", "faster_rcnn"])
def test_reproduces_torchvision_from_its_weights(masks):
    detection = importlib.import_module("torchvision.models.detection")
    torch.manual_seed(0)
    build_tv = detection.maskrcnn_resnet50_fpn if masks else detection.fasterrcnn_resnet50_fpn
    theirs = build_tv(weights=None, weights_backbone=None, num_classes=3, min_size=256, max_size=320).eval()
    build = models.maskrcnn_resnet50_fpn if masks else models.fasterrcnn_resnet50_fpn
    # channels_last=False: the same convolution algorithms as torchvision, hence the same bits. (With
    # random weights all scores are nearly equal, and the channels-last convolutions' other rounding
    # can reorder them.)
    ours = build(3, min_size=256, max_size=320, channels_last=False).eval()
    ours.load_state_dict(models.convert_torchvision_state_dict(theirs.state_dict()), strict=True)
    images = [torch.rand(3, 240, 300), torch.rand(3, 200, 260)]
    with torch.no_grad():
        assert_same_detections(ours(images), theirs(images))


def test_converter_understands_old_layouts_and_refuses_unknown_keys():
    old = {"backbone.fpn.inner_blocks.0.weight": torch.zeros(1), "rpn.head.conv.weight": torch.zeros(1),
           "roi_heads.mask_head.mask_fcn1.bias": torch.zeros(1)}  # fmt: skip
    assert set(models.convert_torchvision_state_dict(old)) == {
        "fpn.lateral_convs.0.weight", "rpn.head.conv.weight", "roi_heads.mask_head.convs.convs.0.bias"}  # fmt: skip
    with pytest.raises(KeyError, match="no minimtl parameter corresponds to torchvision's 'roi_heads.keypoint"):
        models.convert_torchvision_state_dict({"roi_heads.keypoint_head.0.weight": torch.zeros(1)})


@pytest.fixture(scope="module")
def overfitted():
    """A small Mask R-CNN trained on one batch for 150 steps (about 6 s on 2 cores)."""
    torch.manual_seed(0)
    images, targets = scene()
    model = models.maskrcnn_resnet18_fpn(4, **SMALL)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    history = []
    for _ in range(150):
        losses = model(images, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        history.append({k: v.item() for k, v in losses.items()})
    return model.eval(), images, targets, history


def test_small_mask_rcnn_overfits_one_batch(overfitted):
    model, images, targets, history = overfitted
    first, last = history[0], history[-1]
    assert set(first) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    assert sum(last.values()) < sum(first.values()) / 10
    for name in ("loss_classifier", "loss_mask", "loss_objectness"):
        assert last[name] < first[name] / 5, name
    with torch.no_grad():
        detections = model(images)
    for det, target in zip(detections, targets, strict=True):
        assert det["masks"].shape[1:] == (1, 128, 128) and det["masks"].min() >= 0 and det["masks"].max() <= 1
        for box, label, mask in zip(target["boxes"], target["labels"], target["masks"], strict=True):
            same_class = det["labels"] == label
            iou = ops.box_iou(box[None], det["boxes"][same_class])
            assert iou.max() > 0.7, (box, det["boxes"][same_class][:3])
            best = torch.where(same_class)[0][iou.argmax()]
            predicted = det["masks"][best, 0] > 0.5
            mask_iou = (predicted & mask.bool()).sum() / (predicted | mask.bool()).sum()
            assert mask_iou > 0.7


def test_channels_last_does_not_change_a_trained_models_detections(overfitted):
    model, images, _, _ = overfitted
    plain = models.maskrcnn_resnet18_fpn(4, **{**SMALL, "channels_last": False}).eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        a, b = model(images), plain(images)
    for x, y in zip(a, b, strict=True):
        top = x["scores"] > 0.5
        torch.testing.assert_close(x["boxes"][top], y["boxes"][: top.sum()], atol=1e-2, rtol=0)
        assert torch.equal(x["labels"][top], y["labels"][: top.sum()])


def test_images_without_objects_train():
    torch.manual_seed(1)
    images, targets = scene()
    targets[1] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
                  "masks": torch.zeros(0, 128, 128, dtype=torch.uint8)}  # fmt: skip
    model = models.maskrcnn_resnet18_fpn(4, **SMALL)
    losses = model(images, targets)
    assert all(v.isfinite() for v in losses.values())
    sum(losses.values()).backward()
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
              "masks": torch.zeros(0, 128, 128, dtype=torch.uint8)}] * 2  # fmt: skip
    losses = model(images, empty)  # no object anywhere: nothing positive, still finite
    assert all(v.isfinite() for v in losses.values())


def test_clear_errors_for_bad_targets_and_settings():
    images, targets = scene()
    model = models.maskrcnn_resnet18_fpn(4, **SMALL)
    bad = [dict(t) for t in targets]
    bad[1]["boxes"] = bad[1]["boxes"].clone()
    bad[1]["boxes"][2] = torch.tensor([50.0, 50, 50, 80])
    with pytest.raises(
        ValueError, match=r"targets\[1\] has a degenerate box .* at index 2: \[50.0, 50.0, 50.0, 80.0\]"
    ):
        model(images, bad)
    bad = [dict(t) for t in targets]
    bad[0]["labels"] = torch.tensor([1, 2, 4])
    with pytest.raises(ValueError, match=r"targets\[0\]\['labels'\] must be in \[1, 4\), got \[1, 2, 4\]"):
        model(images, bad)
    with pytest.raises(ValueError, match="one target dict per image: 2 images, got None"):
        model(images)
    with pytest.raises(ValueError, match=r"targets\[0\] is missing \['masks'\]"):
        model(images, [{k: v for k, v in t.items() if k != "masks"} for t in targets])
    with pytest.raises(TypeError, match=r"unknown settings \['min_sise'\]"):
        models.maskrcnn_resnet18_fpn(4, min_sise=100)
    with pytest.raises(ValueError, match="num_classes counts the background too"):
        models.RCNNConfig(num_classes=1)


def test_eval_outputs_at_the_input_size():
    torch.manual_seed(2)
    for build, with_masks in [(models.maskrcnn_resnet18_fpn, True), (models.fasterrcnn_resnet18_fpn, False)]:
        model = build(4, **{**SMALL, "box_score_thresh": 0.0}).eval()
        with torch.no_grad():
            out = model([torch.rand(3, 100, 140), torch.rand(3, 64, 64)])
        assert len(out) == 2
        for det, (h, w) in zip(out, [(100, 140), (64, 64)], strict=True):
            assert set(det) == ({"boxes", "labels", "scores", "masks"} if with_masks else {"boxes", "labels", "scores"})
            # inside the input image (up to the float rounding of scaling back from the resized one)
            assert det["boxes"].shape[1] == 4
            assert (det["boxes"][:, 2] <= w + 1e-3).all() and (det["boxes"][:, 3] <= h + 1e-3).all()
            if with_masks:
                assert det["masks"].shape == (len(det["boxes"]), 1, h, w)
    assert dataclasses.asdict(models.RCNNConfig(num_classes=91))["rpn_pre_nms_top_n_test"] == 1000
