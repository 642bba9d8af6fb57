"""minimtl.evaluation: COCO AP/AR against pycocotools, hand-checkable cases, and semantic mIoU."""

import contextlib
import importlib
import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minimtl.evaluation import STAT_NAMES, evaluate, mean_iou


def random_scene(seed: int, num_images: int = 12, size=(96, 128)):
    """Random ground truth (all three size ranges, some crowds, some empty images) and noisy detections."""
    rng = np.random.default_rng(seed)
    h, w = size
    predictions, targets = [], []
    for _ in range(num_images):
        g = int(rng.integers(0, 6))
        sides = rng.choice([8, 20, 40, 70, 90], size=(g, 2)) * rng.uniform(0.8, 1.2, size=(g, 2))
        xy = rng.uniform(0, 1, size=(g, 2)) * (np.array([w, h]) - sides)
        boxes = np.concatenate([xy, xy + sides], axis=1).round()
        masks = np.zeros((g, h, w), dtype=bool)
        for k, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
            masks[k, y1:y2, x1:x2] = True
            masks[k, y1 : (y1 + y2) // 2, x1 : (x1 + x2) // 2] = rng.random() < 0.5  # an L-shape, sometimes
        labels = rng.integers(1, 4, size=g)
        crowd = rng.random(g) < 0.15
        # detections: jittered copies of the ground truth (some with a wrong label) and random ones
        d_boxes, d_masks, d_labels = [], [], []
        for k in range(g):
            if rng.random() < 0.8:
                jitter = rng.normal(0, 3, size=4)
                d_boxes.append(boxes[k] + jitter)
                d_masks.append(np.roll(masks[k], int(rng.integers(-3, 4)), axis=1))
                d_labels.append(labels[k] if rng.random() < 0.85 else rng.integers(1, 4))
        for _ in range(int(rng.integers(0, 5))):
            x1, y1 = rng.uniform(0, w - 10), rng.uniform(0, h - 10)
            box = [x1, y1, x1 + rng.uniform(3, w - x1), y1 + rng.uniform(3, h - y1)]
            d_boxes.append(np.array(box))
            m = np.zeros((h, w), dtype=bool)
            m[int(box[1]) : int(box[3]), int(box[0]) : int(box[2])] = True
            d_masks.append(m)
            d_labels.append(rng.integers(1, 5))  # class 4 exists only in detections
        d = len(d_boxes)
        scores = np.round(rng.random(d), 2)  # rounded: ties happen
        area = masks.sum(axis=(1, 2)).astype(np.float64)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        "labels": torch.tensor(labels, dtype=torch.int64), "masks": torch.tensor(masks),
                        "iscrowd": torch.tensor(crowd), "area": torch.tensor(area)})  # fmt: skip
        predictions.append({"boxes": torch.tensor(np.array(d_boxes), dtype=torch.float32).reshape(-1, 4),
                            "labels": torch.tensor(np.array(d_labels), dtype=torch.int64).reshape(-1),
                            "scores": torch.tensor(scores, dtype=torch.float32),
                            "masks": torch.tensor(np.array(d_masks)).reshape(d, h, w)})  # fmt: skip
    return predictions, targets


def pycocotools_stats(predictions, targets, iou_type):
    coco_mod = importlib.import_module("pycocotools.coco")
    cocoeval = importlib.import_module("pycocotools.cocoeval")
    mask_utils = importlib.import_module("pycocotools.mask")

    def xywh(boxes):
        b = boxes.double().numpy()
        return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)

    def rle(mask):
        return mask_utils.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))

    images, annotations, results = [], [], []
    for i, (p, t) in enumerate(zip(predictions, targets, strict=True)):
        h, w = t["masks"].shape[-2:]
        images.append({"id": i + 1, "height": int(h), "width": int(w)})
        for k, box in enumerate(xywh(t["boxes"])):
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(t["labels"][k]),
                                "bbox": box.tolist(), "area": float(t["area"][k]), "iscrowd": int(t["iscrowd"][k]),
                                "segmentation": rle(t["masks"][k])})  # fmt: skip
        for k, box in enumerate(xywh(p["boxes"])):
            result = {"image_id": i + 1, "category_id": int(p["labels"][k]), "score": float(p["scores"][k])}
            result.update({"bbox": box.tolist()} if iou_type == "bbox" else {"segmentation": rle(p["masks"][k])})
            results.append(result)
    gt = coco_mod.COCO()
    gt.dataset = {"images": images, "annotations": annotations, "categories": [{"id": c} for c in range(1, 5)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes(results)
        e = cocoeval.COCOeval(gt, dt, iou_type)
        e.evaluate()
        e.accumulate()
        e.summarize()
    return dict(zip(STAT_NAMES, e.stats.tolist(), strict=True))


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("seed", range(6))
def test_equals_pycocotools(iou_type, seed):
    predictions, targets = random_scene(seed)
    ours = evaluate(predictions, targets, iou_type)
    theirs = pycocotools_stats(predictions, targets, iou_type)
    for name in STAT_NAMES:
        assert ours[name] == pytest.approx(theirs[name], abs=1e-6), (name, ours, theirs)
    assert ours["APs"] != -1 or theirs["APs"] == -1


@settings(max_examples=25)
@given(seed=st.integers(0, 10**6), num_images=st.integers(1, 5), iou_type=st.sampled_from(["bbox", "segm"]))
def test_equals_pycocotools_property(seed, num_images, iou_type):
    predictions, targets = random_scene(seed, num_images)
    if sum(len(p["scores"]) for p in predictions) == 0:
        return  # pycocotools cannot load an empty result list; nothing to compare
    ours = evaluate(predictions, targets, iou_type)
    theirs = pycocotools_stats(predictions, targets, iou_type)
    for name in STAT_NAMES:
        assert ours[name] == pytest.approx(theirs[name], abs=1e-6), name


def box_target(boxes, labels):
    return {"boxes": torch.as_tensor(boxes, dtype=torch.float32), "labels": torch.as_tensor(labels)}


def test_hand_example():
    # One image, two objects of class 1; three detections: a perfect one (0.9), a false positive
    # (0.8), then a match for the second object at IoU 0.6 (0.7).
    target = box_target([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1])
    pred = {**box_target([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 34]], [1, 1, 1]),
            "scores": torch.tensor([0.9, 0.8, 0.7])}  # fmt: skip
    stats = evaluate([pred], [target])
    # AP50: precision 1 up to recall 0.5, then 2/3 at recall 1 (the envelope lifts the dip at rank 2):
    # 51 recall levels at 1 (0 ... 0.50) and 50 at 2/3 (0.51 ... 1.00).
    assert stats["AP50"] == pytest.approx((51 * 1 + 50 * 2 / 3) / 101)
    # At IoU >= 0.75 (the third detection has IoU 100 / 140 = 0.71) only the first matches: recall 0.5.
    assert stats["AP75"] == pytest.approx(51 / 101)
    assert stats["AR1"] == pytest.approx(0.5)  # one detection per image: one object found, at every t
    assert stats["APs"] == stats["AP"] and stats["APm"] == -1 and stats["APl"] == -1  # all objects are small


def test_crowds_and_empty_images():
    # A detection on a crowd region is neither a hit nor a miss; an image without objects only adds
    # false positives; a category without objects is left out of the mean.
    target = {**box_target([[0, 0, 40, 40], [60, 0, 100, 40]], [1, 1]), "iscrowd": torch.tensor([0, 1])}
    pred = {**box_target([[0, 0, 40, 40], [62, 2, 80, 20]], [1, 1]), "scores": torch.tensor([0.9, 0.95])}
    empty = box_target(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    nothing = {**empty, "scores": torch.zeros(0)}
    assert evaluate([pred], [target])["AP50"] == pytest.approx(1.0)
    false_positive = {**box_target([[5, 5, 20, 20]], [2]), "scores": torch.tensor([0.99])}
    assert evaluate([pred, false_positive], [target, empty])["AP50"] == pytest.approx(1.0)  # class 2 has no objects
    worse = {**box_target([[5, 5, 20, 20]], [1]), "scores": torch.tensor([0.99])}
    assert evaluate([pred, worse], [target, empty])["AP50"] < 1.0
    assert evaluate([nothing], [empty])["AP"] == -1  # nothing to average


def test_bad_input():
    with pytest.raises(ValueError, match="iou_type must be 'bbox' or 'segm', got 'keypoints'"):
        evaluate([], [], "keypoints")
    with pytest.raises(ValueError, match="2 predictions but 1 targets"):
        evaluate([{}, {}], [{}])
    with pytest.raises(ValueError, match=r"predictions\[0\] is missing \['scores'\]"):
        evaluate([box_target([[0, 0, 1, 1]], [1])], [box_target([[0, 0, 1, 1]], [1])])
    with pytest.raises(ValueError, match=r"targets\[0\] is missing \['masks'\]"):
        pred = {**box_target([[0, 0, 1, 1]], [1]), "scores": torch.ones(1), "masks": torch.ones(1, 2, 2)}
        evaluate([pred], [box_target([[0, 0, 1, 1]], [1])], "segm")


def test_mean_iou():
    target = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 0, 2, 0]])
    result = mean_iou([pred], [target], num_classes=3)
    # class 0: TP 3, FN 1 (predicted 1), FP 0 -> 3/4; class 1: TP 2, FP 1, FN 1 -> 2/4; class 2: FP 1 -> 0
    assert result["IoU"] == pytest.approx([0.75, 0.5, 0.0])
    assert result["mIoU"] == pytest.approx((0.75 + 0.5 + 0.0) / 3)
    assert result["pixel_accuracy"] == pytest.approx(5 / 7)  # the 255 pixel is ignored
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\) or 255"):
        mean_iou([pred], [target + 3 * (target == 1)], num_classes=3)
