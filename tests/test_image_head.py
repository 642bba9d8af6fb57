"""Multi-label image classification: the head (minimtl/modeling/image_head.py), its task in
MultiTaskRCNN (minimtl/models/multitask.py), its metrics (minimtl/evaluation/classification.py) and
its place in the run's evaluation (minimtl/app/run.py)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_multitask_model import SMALL, shapes_batch

from minimtl.app.run import evaluate, flat_metrics
from minimtl.data import ShapesDataset
from minimtl.engine.inference import evaluate_dataset
from minimtl.evaluation import average_precision, multilabel_metrics
from minimtl.modeling.image_head import ImageClassificationHead, image_loss, image_targets, masked_average
from minimtl.models.multitask import MultiTaskConfig, MultiTaskRCNN

IMAGE = dict(image_classification=True, image_channels=32)
FOUR_TASKS = ["detection", "instance", "semantic", "image"]


def test_head_gives_one_logit_per_foreground_class():
    g = torch.Generator().manual_seed(0)
    features = [torch.randn(2, 8, 32 >> i, 32 >> i, generator=g) for i in range(4)]  # P2..P5, stride 4..32
    head = ImageClassificationHead(8, num_classes=3, hidden=16)
    assert head.fc.in_features == 4 * 8  # the four levels' averages, concatenated
    assert head(features).shape == (2, 3)
    assert head(features, [(128, 128), (100, 60)], (128, 128)).shape == (2, 3)
    with pytest.raises(ValueError, match="expected 4 levels, got 3"):
        head(features[:3])


def test_average_leaves_the_padding_out():
    # Batch 128 x 128; the second image is 63 x 96 in its top-left corner. At stride 4 (a 32 x 32 map) it
    # covers ceil(63 / 4) = 16 rows and 96 / 4 = 24 columns: 1 there, 100 in the padding.
    feature = torch.full((2, 3, 32, 32), 100.0)
    feature[0] = 2.0
    feature[1, :, :16, :24] = 1.0
    pooled = masked_average(feature, [(128, 128), (63, 96)], (128, 128))
    torch.testing.assert_close(pooled, torch.tensor([[2.0] * 3, [1.0] * 3]))
    torch.testing.assert_close(masked_average(feature), feature.mean(dim=(-2, -1)))  # no sizes: whole maps


def test_average_of_a_large_float16_map_does_not_overflow():
    # 300 x 300 ones sum to 90000, past float16's 65504: the sum is taken in float32
    feature = torch.ones(1, 2, 300, 300, dtype=torch.float16)
    for pooled in (masked_average(feature), masked_average(feature, [(1200, 1200)], (1200, 1200))):
        assert pooled.dtype == torch.float32 and torch.equal(pooled, torch.ones(1, 2))


def test_mixed_precision_keeps_the_image_loss_and_scores_in_float32():
    torch.manual_seed(0)
    model = MultiTaskRCNN(MultiTaskConfig(num_classes=4, detection=False, masks=False, **SMALL, **IMAGE))
    images, targets = shapes_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(images, targets)
    assert losses["loss_image"].dtype == torch.float32 and torch.isfinite(losses["loss_image"])
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(images)
    assert all(out["image_scores"].dtype == torch.float32 for out in outputs)


def test_targets_are_the_multi_hot_of_the_labels():
    targets = [
        {"labels": torch.tensor([2, 2, 3])},  # class 2 twice: present once
        {"labels": torch.tensor([1, 4]), "iscrowd": torch.tensor([0, 1])},  # the crowd of class 4 left out
        {"labels": torch.zeros(0, dtype=torch.int64)},  # no object: nothing present
    ]
    expected = torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])  # classes 1..4
    torch.testing.assert_close(image_targets(targets, num_classes=5), expected)
    with pytest.raises(ValueError, match=r"targets\[0\]\['labels'\] must be in \[1, 5\), got \[0, 5\]"):
        image_targets([{"labels": torch.tensor([0, 5])}], num_classes=5)


def test_loss_is_binary_cross_entropy_mean_over_classes_and_images():
    logits = torch.tensor([[2.0, -1.0, 0.0], [0.0, 0.0, 0.0]])
    targets = [{"labels": torch.tensor([1, 3, 3])}, {"labels": torch.zeros(0, dtype=torch.int64)}]
    # image 0, present [1, 0, 1]: log(1 + e^-2) = 0.126928, log(1 + e^-1) = 0.313262, log 2 = 0.693147
    # image 1, present [0, 0, 0]: log 2 three times = 2.079442
    # mean over the 6 terms: (1.133337 + 2.079442) / 6 = 0.535463
    expected = F.binary_cross_entropy_with_logits(logits, torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(image_loss(logits, targets), expected)
    assert image_loss(logits, targets).item() == pytest.approx(0.535463, abs=1e-6)


def test_average_precision_and_exact_match_by_hand():
    scores = torch.tensor(
        [  # class 1, 2, 3
            [0.9, 0.2, 0.6],
            [0.8, 0.7, 0.1],
            [0.3, 0.6, 0.2],
            [0.1, 0.55, 0.3],
        ]
    )
    present = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 1, 0]], dtype=torch.bool)
    # class 1: ranked images 0 (+), 1 (-), 2 (+), 3 (-): precision 1/1 and 2/3 at the positives,
    #          AP = (1 + 2/3) / 2 = 5/6
    # class 2: ranked 1 (+), 2 (+), 3 (+), 0 (-): every positive first, AP = 1
    # class 3: in no image: left out of the mean, counted absent
    # mAP = (5/6 + 1) / 2 = 11/12
    # exact match at 0.5 (score > 0.5 means present): image 0 says class 3 (wrong), image 1 class 1
    # (wrong), image 2 misses class 1 (wrong), image 3 says {2} = truth {2}: 1 of 4 = 0.25
    metrics = multilabel_metrics(scores, present)
    assert metrics["AP"][:2] == pytest.approx([5 / 6, 1.0]) and math.isnan(metrics["AP"][2])
    assert metrics["mAP"] == pytest.approx(11 / 12)
    assert metrics["num_absent"] == 1 and metrics["num_images"] == 4
    assert metrics["exact_match"] == pytest.approx(0.25)
    # tied scores are one threshold, whatever their order: precision 1/2 at recall 1, AP = 0.5
    assert average_precision(torch.tensor([0.5, 0.5]), torch.tensor([True, False])) == pytest.approx(0.5)
    assert average_precision(torch.tensor([0.5, 0.5]), torch.tensor([False, True])) == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"must both be \(N, K\), got \(4, 3\) and \(4, 2\)"):
        multilabel_metrics(scores, present[:, :2])


def test_the_flag_adds_the_image_task_and_nothing_else():
    off = MultiTaskRCNN(MultiTaskConfig(num_classes=4, **SMALL))  # the default: image_classification=False
    assert off.config.tasks == ["detection", "instance", "semantic"] and off.image_head is None
    keys_off = set(off.state_dict())
    assert not any("image" in k for k in keys_off)  # the state dict of the three tasks, as before the image head
    assert off.loss_weighting.fixed_weights.shape == (3,)
    on = MultiTaskRCNN(MultiTaskConfig(num_classes=4, **SMALL, **IMAGE))
    assert on.config.tasks == FOUR_TASKS
    assert {k for k in set(on.state_dict()) - keys_off} == {
        "image_head.fc.weight",
        "image_head.fc.bias",
        "image_head.classifier.weight",
        "image_head.classifier.bias",
    }
    assert on.image_head.classifier.out_features == 3  # classes 1..3; the background has no logit
    # the head reads P2..P5: the pyramid stays even where no other head needs it
    alone = MultiTaskRCNN(
        MultiTaskConfig(num_classes=4, detection=False, semantic_head="hypercolumn", **SMALL, **IMAGE)
    )
    assert alone.fpn is not None
    with pytest.raises(ValueError, match="image_channels must be an int >= 1"):
        MultiTaskConfig(num_classes=4, image_channels=0)


@pytest.mark.parametrize("strategy", ["fixed", "uncertainty", "dwa", "gradnorm"])
def test_four_tasks_train_with_every_loss_strategy(strategy):
    torch.manual_seed(0)
    options = {"dwa_period": 1} if strategy == "dwa" else {}  # period 1: DWA's weights move from step 3
    config = MultiTaskConfig(num_classes=4, loss_strategy=strategy, loss_options=options, **SMALL, **IMAGE)
    model = MultiTaskRCNN(config)
    images, targets = shapes_batch(2, seed=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(3):
        losses = model(images, targets)
        assert "loss_image" in losses and list(model.task_losses(losses)) == FOUR_TASKS
        total = model.total_loss(losses)
        assert torch.isfinite(total) and all(torch.isfinite(v) for v in losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert model.image_head.classifier.weight.grad.abs().sum() > 0
    weights = model.loss_weights()
    assert list(weights) == FOUR_TASKS
    assert all(math.isfinite(w) and w > 0 for w in weights.values())
    if strategy == "gradnorm":  # the image loss reaches GradNorm's shared layer (C5), through the FPN
        assert model.loss_weighting._shared_gradient_norm(model(images, targets)["loss_image"]) > 0
    if strategy != "fixed":
        assert list(weights.values()) != [1.0] * 4  # learned or adapted: the weights move
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    for out in outputs:
        assert out["image_scores"].shape == (3,) and out["image_scores"].dtype == torch.float32
        assert ((out["image_scores"] > 0) & (out["image_scores"] < 1)).all()
        assert {"boxes", "masks", "semantic"} <= set(out)
    scores = torch.stack([out["image_scores"] for out in outputs])
    torch.testing.assert_close(model.classify(images), scores)  # the head alone gives the same scores


def test_image_only_and_no_scores_without_the_head():
    torch.manual_seed(0)
    model = MultiTaskRCNN(MultiTaskConfig(num_classes=4, detection=False, semantic=False, **SMALL, **IMAGE))
    images, targets = shapes_batch(2)
    losses = model(images, targets)
    assert set(losses) == {"loss_image"} and torch.isfinite(model.total_loss(losses))
    with pytest.raises(ValueError, match=r"targets\[0\]\['labels'\] must be in \[1, 4\)"):
        model(images, [{"labels": torch.tensor([4])}, {"labels": torch.tensor([1])}])
    without = MultiTaskRCNN(MultiTaskConfig(num_classes=4, detection=False, masks=False, **SMALL)).eval()
    with torch.no_grad():
        assert all("image_scores" not in out for out in without(images))
    with pytest.raises(ValueError, match="has no image head"):
        without.classify(images)


def test_run_evaluation_reports_the_image_task_beside_the_others():
    torch.manual_seed(0)
    model = MultiTaskRCNN(MultiTaskConfig(num_classes=4, **SMALL, **IMAGE))
    dataset = ShapesDataset(3, 128, seed=5)
    report = evaluate(model, dataset, "cpu", classes=list(ShapesDataset.classes), batch_size=2)
    assert {"box", "mask", "semantic", "image"} <= set(report)
    image = report["image"]
    assert image["num_images"] == 3 and set(image["per_class"]) == set(ShapesDataset.classes[1:])
    assert 0 <= image["exact_match"] <= 1 and (math.isnan(image["mAP"]) or 0 <= image["mAP"] <= 1)
    flat = flat_metrics(report)
    assert flat["image.mAP"] == image["mAP"] or math.isnan(flat["image.mAP"])
    # The scores come from the evaluation's one pass: the same as the image head run on its own.
    images, targets = zip(*[dataset[i] for i in range(3)], strict=True)
    alone = multilabel_metrics(torch.cat([model.classify(list(images[:2])), model.classify(list(images[2:]))]),
                               image_targets(list(targets), 4))  # fmt: skip
    alone["per_class"] = dict(zip(ShapesDataset.classes[1:], alone.pop("AP"), strict=True))
    np.testing.assert_equal(image, alone)  # NaN (a class absent from every image) equals NaN here
    with pytest.raises(ValueError, match=r"'image_scores': give num_classes"):
        evaluate_dataset(model, dataset, iou_types=())
    empty = evaluate(model, ShapesDataset(0, 128, seed=5), "cpu", classes=list(ShapesDataset.classes))["image"]
    assert empty["num_images"] == 0 and set(empty["per_class"]) == set(ShapesDataset.classes[1:])
    assert flat["image.exact_match"] == image["exact_match"] and "box.AP" in flat and "semantic.mIoU" in flat
