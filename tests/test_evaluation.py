"""minimtl.evaluation: COCO AP/AR against pycocotools, hand-checkable cases, the streamed CocoEvaluator (its
mask forms, its memory), and semantic mIoU."""

import contextlib
import importlib
import io
import tracemalloc

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minimtl.data.masks import rle_encode
from minimtl.evaluation import STAT_NAMES, CocoEvaluator, evaluate, evaluate_curves, mean_iou, per_class_ap


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
    return dict(zip(STAT_NAMES, pycocotools_eval(predictions, targets, iou_type).stats.tolist(), strict=True))


def pycocotools_eval(predictions, targets, iou_type):
    """pycocotools' COCOeval after evaluate, accumulate and summarize (categories 1..4)."""
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
    return e


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


# --- CocoEvaluator: streamed, one image at a time ----------------------------------------------------------------


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("seed", range(3))
def test_evaluator_streamed_equals_lists_and_pycocotools(iou_type, seed):
    predictions, targets = random_scene(seed)
    evaluator = CocoEvaluator(iou_type)
    for pred, target in zip(predictions, targets, strict=True):
        evaluator.add(pred, target)
    assert evaluator.num_images == len(predictions)
    assert evaluator.summarize() == evaluate(predictions, targets, iou_type)
    precision, recall, categories = evaluator.curves()
    for ours, theirs in zip((precision, recall), evaluate_curves(predictions, targets, iou_type), strict=False):
        np.testing.assert_array_equal(ours, theirs)
    # the whole curves, not only the 12 means, against pycocotools (its categories are 1..4)
    coco = pycocotools_eval(predictions, targets, iou_type).eval
    for k, label in enumerate(categories):
        np.testing.assert_allclose(precision[:, :, k], coco["precision"][:, :, label - 1], atol=1e-12)
        np.testing.assert_allclose(recall[:, k], coco["recall"][:, label - 1], atol=1e-12)
    missing = sorted(set(range(1, 5)) - set(categories))  # never seen: pycocotools has -1 there
    assert (coco["precision"][:, :, [c - 1 for c in missing]] == -1).all()


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_per_class_equals_pycocotools(iou_type):
    predictions, targets = random_scene(4, num_images=20)
    evaluator = CocoEvaluator(iou_type)
    for pred, target in zip(predictions, targets, strict=True):
        evaluator.add(pred, target)
    per_class = evaluator.per_class()
    assert per_class == per_class_ap(*evaluate_curves(predictions, targets, iou_type)[::2])
    coco = pycocotools_eval(predictions, targets, iou_type).eval["precision"]  # (T, R, K, A, M)

    def mean(p):
        return float(np.mean(p[p > -1])) if (p > -1).any() else -1.0

    assert set(per_class) == {1, 2, 3, 4}  # class 4 only among the detections: AP undefined
    for label, ap in per_class.items():
        p = coco[:, :, label - 1, 0, -1]  # (T, R): all areas, 100 detections
        assert ap["AP"] == pytest.approx(mean(p), abs=1e-12)
        assert ap["AP50"] == pytest.approx(mean(p[0]), abs=1e-12)
        assert ap["AP75"] == pytest.approx(mean(p[5]), abs=1e-12)
    assert per_class[4] == {"AP": -1.0, "AP50": -1.0, "AP75": -1.0}


def mask_forms(masks: torch.Tensor) -> dict:
    """One (K, H, W) bool mask stack in every form `add` takes."""
    mask_utils = importlib.import_module("pycocotools.mask")
    h, w = masks.shape[-2:]
    probabilities = torch.where(masks, 0.5 + 0.5 * torch.rand(masks.shape), 0.5 * torch.rand(masks.shape))
    return {
        "bool": masks,
        "uint8": masks.to(torch.uint8),
        "float": probabilities,  # > 0.5 is foreground; exactly 0.5 is not
        "float (K, 1, H, W)": probabilities[:, None],
        "numpy bool": masks.numpy(),
        "RLE str": [
            {"size": [h, w], "counts": r["counts"].decode("ascii")}
            for r in (mask_utils.encode(np.asfortranarray(m.numpy().astype(np.uint8))) for m in masks)
        ],
        "RLE list": [{"size": [h, w], "counts": rle_encode(m.numpy())} for m in masks],
    }


def test_mask_forms_give_equal_results():
    torch.manual_seed(0)
    predictions, targets = random_scene(7, num_images=6)
    expected = evaluate(predictions, targets, "segm")
    assert expected["AP"] > 0
    forms = [mask_forms(p["masks"]) for p in predictions], [mask_forms(t["masks"]) for t in targets]
    for name in forms[0][0]:
        evaluator = CocoEvaluator("segm")
        for pred, target, pred_forms, target_forms in zip(predictions, targets, *forms, strict=True):
            evaluator.add({**pred, "masks": pred_forms[name]}, {**target, "masks": target_forms[name]})
        assert evaluator.summarize() == expected, name


def test_evaluator_memory_grows_with_detections_not_pixels():
    # Streaming N images of 256 x 256 with 50 detections each (ten images, cycled, so that the worst
    # single image is the same in both runs): the evaluator keeps about 90 bytes a detection, plus one
    # image's matching temporaries, whereas lists of the masks would hold N * 50 * 256 * 256 bytes
    # even as bool, 10x more for 100 images than for 10. tracemalloc sees numpy's allocations.
    def image(i: int, size=256, num_dt=50, num_gt=6):
        rng = np.random.default_rng(i)
        corners = rng.integers(0, size - 64, size=(num_gt, 2))
        sides = rng.integers(8, 64, size=(num_gt, 2))
        gt_boxes = np.concatenate([corners, corners + sides], axis=1)
        which = rng.integers(0, num_gt, size=num_dt)
        dt_boxes = np.clip(gt_boxes[which] + rng.integers(-4, 5, size=(num_dt, 4)), 0, size)
        labels = rng.integers(1, 4, size=num_gt)

        def masks(boxes):
            out = np.zeros((len(boxes), size, size), dtype=bool)
            for k, (x1, y1, x2, y2) in enumerate(boxes):
                out[k, y1:y2, x1:x2] = True
            return out

        pred = {"boxes": dt_boxes, "labels": labels[which], "scores": rng.random(num_dt), "masks": masks(dt_boxes)}
        return pred, {"boxes": gt_boxes, "labels": labels, "masks": masks(gt_boxes)}

    def stream(num_images: int):
        tracemalloc.start()
        try:
            evaluator = CocoEvaluator("segm")
            for i in range(num_images):
                evaluator.add(*image(i % 10))
            stats = evaluator.summarize()
            retained, peak = tracemalloc.get_traced_memory()  # bytes
        finally:
            tracemalloc.stop()
        return stats, retained, peak

    stream(2)  # warm-up: one-time allocations (imports, numpy caches) stay out of the numbers below
    stats_10, retained_10, peak_10 = stream(10)
    stats_100, retained_100, peak_100 = stream(100)
    assert stats_10["AP50"] > 0.5 and stats_100["AP50"] == pytest.approx(stats_10["AP50"])
    assert peak_100 < 1.5 * peak_10, (peak_10, peak_100)
    assert peak_10 > 50 * 256 * 256  # at least one image's masks: the measurement sees numpy
    assert (retained_100 - retained_10) / (90 * 50) < 200, (retained_10, retained_100)  # bytes a detection


def test_evaluator_bad_input():
    with pytest.raises(ValueError, match="CocoEvaluator: iou_type must be 'bbox' or 'segm', got 'keypoints'"):
        CocoEvaluator("keypoints")
    target = {**box_target([[0, 0, 2, 2]], [1]), "masks": torch.ones(1, 4, 4, dtype=torch.bool)}
    pred = {**box_target([[0, 0, 2, 2]], [1]), "scores": torch.ones(1)}
    evaluator = CocoEvaluator("segm")
    with pytest.raises(ValueError, match=r"predictions\[0\]\['masks'\] must be \(K, H, W\) or \(K, 1, H, W\)"):
        evaluator.add({**pred, "masks": torch.ones(1, 2, 4, 4)}, target)
    with pytest.raises(ValueError, match=r"predictions\[0\]\['masks'\] are \(4, 5\) \(H, W\), targets\[0\]"):
        evaluator.add({**pred, "masks": torch.ones(1, 4, 5)}, target)
    with pytest.raises(ValueError, match=r"targets\[0\]\['masks'\]: a list of masks must hold COCO RLE dicts"):
        evaluator.add({**pred, "masks": torch.ones(1, 4, 4)}, {**target, "masks": [[0, 0, 1, 1, 2, 2]]})
    rles = [{"size": [4, 4], "counts": [16]}, {"size": [2, 8], "counts": [16]}]
    with pytest.raises(ValueError, match=r"share one size, got \[\(2, 8\), \(4, 4\)\]"):
        evaluator.add({**pred, "masks": rles}, target)
    assert evaluator.num_images == 0  # nothing half-added
    with pytest.raises(ValueError, match=r"CocoEvaluator.add: predictions\[0\] is missing \['scores'\]"):
        CocoEvaluator("bbox").add(box_target([[0, 0, 1, 1]], [1]), box_target([[0, 0, 1, 1]], [1]))
