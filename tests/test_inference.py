"""minimtl.engine.inference: streamed predictions (iter_predictions), the one-pass evaluation
(evaluate_dataset) against the list path (evaluate(*predict(...)), mean_iou), and predict's output."""

import numpy as np
import pytest
import torch

from minimtl import models
from minimtl.data import ShapesDataset
from minimtl.engine import evaluate_dataset, iter_predictions, predict
from minimtl.evaluation import evaluate, evaluate_curves, mean_iou, per_class_ap
from minimtl.models.multitask import MultiTaskConfig, MultiTaskRCNN

# untrained and tiny; score threshold 0 so that every image has its 100 detections, with masks
TINY = dict(min_size=64, max_size=64, backbone_width=8, fpn_channels=16, representation_size=32,
            mask_layers=(16,), mask_dim_reduced=16, box_score_thresh=0.0)  # fmt: skip


def tiny_mask_rcnn():
    torch.manual_seed(0)
    return models.maskrcnn_resnet18_fpn(4, **TINY)


def tiny_multitask(**heads):
    torch.manual_seed(0)
    return MultiTaskRCNN(MultiTaskConfig(num_classes=4, backbone="resnet18", semantic_channels=16, **TINY, **heads))


def test_iter_predictions_streams_bool_masks_in_dataset_order():
    model, dataset = tiny_mask_rcnn(), ShapesDataset(5, 64, seed=1)
    stream = list(iter_predictions(model, dataset, batch_size=2))
    assert [index for index, _, _ in stream] == list(range(5))
    probabilities, _ = predict(model, dataset, batch_size=2, mask_threshold=None)  # the model's own output
    for (index, pred, target), soft in zip(stream, probabilities, strict=True):
        assert torch.equal(target["boxes"], dataset[index][1]["boxes"])
        assert pred["boxes"].device.type == "cpu" and len(pred["boxes"]) == 100
        assert pred["masks"].dtype == torch.bool and pred["masks"].shape == (100, 64, 64)  # (D, H, W), image size
        assert soft["masks"].dtype == torch.float32 and soft["masks"].shape == (100, 1, 64, 64)
        assert torch.equal(pred["masks"], soft["masks"][:, 0] > 0.5)
        torch.testing.assert_close(pred["scores"], soft["scores"], rtol=0, atol=0)
    predictions, targets = predict(model, dataset, batch_size=2)  # the same dicts, in lists
    for (_, pred, target), listed, listed_target in zip(stream, predictions, targets, strict=True):
        assert pred.keys() == listed.keys() and all(torch.equal(pred[k], listed[k]) for k in pred)
        assert torch.equal(target["masks"], listed_target["masks"])


def test_evaluate_dataset_equals_the_list_path():
    model, dataset = tiny_mask_rcnn(), ShapesDataset(6, 64, seed=1)
    results, kept = evaluate_dataset(model, dataset, batch_size=4, keep=3)
    predictions, targets = predict(model, dataset, batch_size=4)
    for iou_type in ("bbox", "segm"):
        assert results[iou_type]["stats"] == evaluate(predictions, targets, iou_type), iou_type
        precision, recall, categories = evaluate_curves(predictions, targets, iou_type)
        np.testing.assert_array_equal(results[iou_type]["precision"], precision)
        np.testing.assert_array_equal(results[iou_type]["recall"], recall)
        assert results[iou_type]["categories"] == categories
        assert results[iou_type]["per_class"] == per_class_ap(precision, categories)
    assert results["bbox"]["stats"]["AP50"] > 0  # not a vacuous comparison: something matched
    assert results["num_images"] == 6 and "semantic" not in results
    assert len(kept) == 3
    for i, (image, pred, target) in enumerate(kept):
        assert torch.equal(image, dataset[i][0]) and torch.equal(target["labels"], dataset[i][1]["labels"])
        assert torch.equal(pred["masks"], predictions[i]["masks"])


@pytest.mark.parametrize("num_semantic_classes", [4, None, 6])
def test_evaluate_dataset_semantic_confusion_equals_mean_iou(num_semantic_classes):
    model, dataset = tiny_multitask(masks=True), ShapesDataset(5, 64, seed=1)
    results, _ = evaluate_dataset(
        model, dataset, iou_types=("bbox",), batch_size=2, num_semantic_classes=num_semantic_classes
    )
    predictions, targets = predict(model, dataset, batch_size=2)
    labels, truth = [p["semantic"] for p in predictions], [t["semantic"] for t in targets]
    seen = int(max(torch.cat(labels).max(), torch.cat(truth).max())) + 1
    expected = mean_iou(labels, truth, num_semantic_classes or seen)
    assert results["semantic"].keys() == expected.keys()
    np.testing.assert_array_equal(results["semantic"]["IoU"], expected["IoU"])  # nan where a class never occurs
    assert results["semantic"]["mIoU"] == expected["mIoU"] and expected["mIoU"] > 0
    assert results["semantic"]["pixel_accuracy"] == expected["pixel_accuracy"]
    assert results["bbox"]["stats"] == evaluate(predictions, targets, "bbox")


def test_evaluate_dataset_semantic_only_and_bad_settings():
    model, dataset = tiny_multitask(detection=False), ShapesDataset(3, 64, seed=1)
    results, kept = evaluate_dataset(model, dataset, iou_types=(), keep=0)
    assert set(results) == {"semantic", "num_images"} and kept == []
    with pytest.raises(ValueError, match=r"labels must be in \[0, 1\)"):
        evaluate_dataset(model, dataset, iou_types=(), num_semantic_classes=1)
    with pytest.raises(ValueError, match=r"predictions\[0\] is missing \['masks'\]"):
        evaluate_dataset(tiny_multitask(masks=False, semantic=False), dataset)
    no_labels = [(image, {k: v for k, v in target.items() if k != "semantic"}) for image, target in dataset]
    with pytest.raises(ValueError, match=r"'semantic' label maps but targets\[0\] has none"):
        evaluate_dataset(model, no_labels, iou_types=())
