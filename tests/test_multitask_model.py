"""Hypercolumns, the semantic heads and MultiTaskRCNN (minimtl/modeling/hypercolumn.py,
semantic_head.py, minimtl/models/multitask.py), and the trainer's multi-task path."""

import pytest
import torch
import torch.nn.functional as F
from conftest import requires_cuda

from minimtl.data import ShapesDataset
from minimtl.engine import TrainConfig, Trainer
from minimtl.modeling.hypercolumn import HypercolumnHead, HypercolumnRoIPooler
from minimtl.modeling.semantic_head import IGNORE, SemanticFPNHead, semantic_labels, semantic_predictions
from minimtl.modeling.transform import ImageTransform
from minimtl.models import RCNN, RCNNConfig
from minimtl.models.multitask import MultiTaskConfig, MultiTaskRCNN

SMALL = dict(min_size=128, max_size=128, backbone_width=16, fpn_channels=32, representation_size=128,
             mask_layers=(32,), mask_dim_reduced=32, rpn_batch_size_per_image=64, box_batch_size_per_image=64,
             anchor_sizes=((16,), (32,), (64,), (128,), (256,)), rpn_pre_nms_top_n_train=200,
             rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50,
             norm="gn", backbone="resnet18", semantic_channels=32)  # fmt: skip
DETECTION_TERMS = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}


def shapes_batch(n=2, seed=0):
    data = ShapesDataset(n, 128, seed=seed)
    images, targets = zip(*[data[i] for i in range(n)], strict=True)
    return list(images), list(targets)


def levels(generator, channels=(8, 16, 32, 64), size=32):
    return [torch.randn(2, c, size >> i, size >> i, generator=generator) for i, c in enumerate(channels)]


def test_hypercolumn_is_a_linear_classifier_on_the_concatenated_upsampled_levels():
    # Hariharan et al. section 3.2: 1x1 convs per level, upsampled and summed, equal one 1x1 conv on
    # the concatenation of the upsampled levels (upsampling and a per-pixel linear map commute).
    g = torch.Generator().manual_seed(0)
    features = levels(g)
    head = HypercolumnHead([f.shape[1] for f in features], num_classes=3, channels=5)
    up = [F.interpolate(f, size=(32, 32), mode="bilinear", align_corners=False) for f in features]
    concatenated = torch.cat(up, dim=1)  # (N, sum C_l, 32, 32): the hypercolumn of every pixel
    weight = torch.cat([p.weight for p in head.projections], dim=1)  # (5, sum C_l, 1, 1)
    bias = sum(p.bias for p in head.projections)
    torch.testing.assert_close(head.hypercolumns(features), F.conv2d(concatenated, weight, bias), atol=1e-5, rtol=1e-5)
    assert head(features).shape == (2, 3, 32, 32)


def test_hypercolumn_roi_pooler_pools_every_level():
    g = torch.Generator().manual_seed(1)
    features = levels(g, channels=(6, 6, 6, 6))
    pooler = HypercolumnRoIPooler(6, 4, output_size=7)
    boxes = [torch.tensor([[0.0, 0.0, 64.0, 64.0], [10.0, 20.0, 50.0, 90.0]]), torch.zeros(0, 4)]
    out = pooler(features, boxes, [(128, 128), (128, 128)])
    assert out.shape == (2, 6, 7, 7) and (out >= 0).all()
    # a level's projection changes the output: every level takes part
    with torch.no_grad():
        pooler.projections[3].bias += 1.0
    assert not torch.equal(pooler(features, boxes, [(128, 128)] * 2), out)


def test_semantic_fpn_head_brings_every_level_to_stride_4():
    g = torch.Generator().manual_seed(2)
    features = levels(g, channels=(16, 16, 16, 16), size=40)  # 40, 20, 10, 5
    head = SemanticFPNHead(16, num_classes=4, channels=8)
    assert head(features).shape == (2, 4, 40, 40)
    assert [sum(isinstance(m, torch.nn.Upsample) for m in stage) for stage in head.stages] == [0, 1, 2, 3]


def test_semantic_labels_pad_with_ignore_and_predictions_crop_the_padding():
    targets = [{"semantic": torch.ones(3, 5, dtype=torch.int64)}, {"semantic": torch.full((4, 4), 2)}]
    labels = semantic_labels(targets, (8, 8))
    assert labels.shape == (2, 8, 8)
    assert (labels[0, :3, :5] == 1).all() and (labels[0, 3:] == IGNORE).all() and (labels[0, :, 5:] == IGNORE).all()
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 2, 0, 0] = 5.0  # class 2 top-left, class 0 elsewhere
    (whole,) = semantic_predictions(logits, (8, 8), [(8, 8)], [(8, 8)])  # an image filling the batch
    assert whole.shape == (8, 8) and whole.dtype == torch.int64
    assert whole[0, 0] == 2 and whole[-1, -1] == 0
    # an image of 4 x 4 in the batch's top-left corner (the rest padding), originally 8 x 8: only its
    # corner of the logits counts, resized to the original size
    (cropped,) = semantic_predictions(logits, (8, 8), [(4, 4)], [(8, 8)])
    assert cropped.shape == (8, 8) and (cropped == 2).all()


def test_transform_resizes_semantic_maps_with_nearest_neighbour():
    transform = ImageTransform(min_size=64, max_size=64)
    semantic = torch.zeros(32, 32, dtype=torch.int64)
    semantic[8:24, 8:24] = 3
    _, sizes, (t,) = transform([torch.rand(3, 32, 32)], [{"boxes": torch.zeros(0, 4), "semantic": semantic}])
    assert sizes == [(64, 64)] and t["semantic"].dtype == torch.int64
    assert set(t["semantic"].unique().tolist()) == {0, 3} and (t["semantic"] == 3).sum() == 4 * (16 * 16)


@pytest.mark.parametrize(
    "heads, terms",
    [
        (dict(masks=False, semantic=False), DETECTION_TERMS),
        (dict(masks=True, semantic=False), DETECTION_TERMS | {"loss_mask"}),
        (dict(detection=False, masks=False, semantic=True), {"loss_semantic"}),
        (dict(detection=False, semantic_head="hypercolumn"), {"loss_semantic"}),
        (dict(masks=True, semantic_head="hypercolumn"), DETECTION_TERMS | {"loss_mask", "loss_semantic"}),
        (dict(masks=True, mask_features="hypercolumn"), DETECTION_TERMS | {"loss_mask", "loss_semantic"}),
    ],
    ids=[
        "detection",
        "mask_rcnn",
        "semantic",
        "semantic_hypercolumn",
        "joint_hypercolumn_semantic",
        "joint_hypercolumn_masks",
    ],
)
def test_every_head_switches_on_and_off(heads, terms):
    torch.manual_seed(0)
    model = MultiTaskRCNN(MultiTaskConfig(num_classes=4, **SMALL, **heads))
    images, targets = shapes_batch()
    losses = model(images, targets)
    assert set(losses) == terms and all(torch.isfinite(v) for v in losses.values())
    total = model.total_loss(losses)
    total.backward()
    torch.testing.assert_close(total, sum(losses.values()))  # fixed weights 1
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    for out in outputs:
        assert ("boxes" in out) == model.config.detection and ("masks" in out) == model.config.masks
        assert ("semantic" in out) == model.config.semantic
        if model.config.semantic:
            assert out["semantic"].shape == (128, 128) and out["semantic"].dtype == torch.int64
    assert (model.rpn is None) == (not model.config.detection)
    fpn_needed = model.config.detection or model.config.semantic_head == "fpn"
    assert (model.fpn is not None) == fpn_needed


AUTOCAST = [
    pytest.param("cpu", torch.bfloat16, id="cpu-bfloat16"),
    pytest.param("cuda", torch.bfloat16, id="cuda-bfloat16", marks=[requires_cuda, pytest.mark.cuda]),
    pytest.param("cuda", torch.float16, id="cuda-float16", marks=[requires_cuda, pytest.mark.cuda]),
]


@pytest.mark.parametrize("device, dtype", AUTOCAST)
@pytest.mark.parametrize("heads", [dict(), dict(mask_features="hypercolumn", semantic_head="hypercolumn")],
                         ids=["fpn", "hypercolumn"])  # fmt: skip
def test_mixed_precision_keeps_geometry_and_losses_in_full_precision(device, dtype, heads):
    # Under autocast the convolutions run in 16 bits; anchors, boxes and losses must not
    # (minimtl/modeling/precision.py). Every head on: detection, masks, semantic.
    torch.manual_seed(0)
    model = MultiTaskRCNN(MultiTaskConfig(num_classes=4, masks=True, **SMALL, **heads)).to(device)
    images, targets = shapes_batch()
    images = [image.to(device) for image in images]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    torch.manual_seed(1)
    reference = model(images, targets)  # float32
    torch.manual_seed(1)  # the same anchors sampled: which ones depends on the targets only
    with torch.autocast(device, dtype=dtype):
        losses = model(images, targets)
    assert set(losses) == set(reference)
    for name, value in losses.items():
        assert value.dtype == torch.float32 and torch.isfinite(value), (name, value)
    for name in ("loss_objectness", "loss_rpn_box_reg"):  # same anchors, same targets: close
        torch.testing.assert_close(losses[name], reference[name], rtol=0.05, atol=1e-3)
    model.zero_grad()
    model.total_loss(losses).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and g.isfinite().all() for g in grads)

    model.eval()
    with torch.no_grad(), torch.autocast(device, dtype=dtype):
        outputs = model(images)
    for out in outputs:
        assert out["boxes"].dtype == out["scores"].dtype == out["masks"].dtype == torch.float32
        assert out["semantic"].dtype == torch.int64 and out["semantic"].shape == (128, 128)


def test_without_semantic_it_is_rcnn():
    settings = {k: v for k, v in SMALL.items() if k != "semantic_channels"}
    torch.manual_seed(0)
    rcnn = RCNN(RCNNConfig(num_classes=4, **settings))
    torch.manual_seed(0)
    multitask = MultiTaskRCNN(MultiTaskConfig(num_classes=4, semantic=False, **SMALL))
    ours_only = set(multitask.state_dict()) - set(rcnn.state_dict())
    assert all(k.startswith("loss_weighting.") for k in ours_only)  # the task weights; nothing else new
    missing, unexpected = multitask.load_state_dict(rcnn.state_dict(), strict=False)
    assert set(missing) == ours_only and not unexpected
    images, targets = shapes_batch()
    torch.manual_seed(1)
    ours = multitask(images, targets)
    torch.manual_seed(1)
    theirs = rcnn(images, targets)
    assert set(ours) == set(theirs)
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key])


def test_config_errors():
    with pytest.raises(ValueError, match="at least one of detection and semantic"):
        MultiTaskConfig(num_classes=4, detection=False, masks=False, semantic=False)
    with pytest.raises(ValueError, match="masks .* needs detection=True"):
        MultiTaskConfig(num_classes=4, detection=False, masks=True)
    assert MultiTaskConfig(num_classes=4, detection=False).masks is False  # masks follow detection by default
    assert MultiTaskConfig(num_classes=4).masks is True
    with pytest.raises(ValueError, match="semantic_head must be 'fpn' or 'hypercolumn', got 'aspp'"):
        MultiTaskConfig(num_classes=4, semantic_head="aspp")
    model = MultiTaskRCNN(MultiTaskConfig(num_classes=4, detection=False, masks=False, **SMALL))
    images, targets = shapes_batch(1)
    with pytest.raises(ValueError, match=r"targets\[0\] is missing 'semantic'"):
        model(images, [{"boxes": targets[0]["boxes"]}])
    with pytest.raises(ValueError, match=r"targets\[0\]\['semantic'\] must be int64 of the image's size"):
        model(images, [{"semantic": targets[0]["semantic"][:64]}])


def test_semantic_head_learns_one_batch():
    torch.manual_seed(0)
    model = MultiTaskRCNN(MultiTaskConfig(num_classes=4, detection=False, masks=False, **SMALL))
    images, targets = shapes_batch(2, seed=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        loss = model.total_loss(model(images, targets))
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first / 4
    model.eval()
    with torch.no_grad():
        predictions = model(images)
    accuracy = torch.stack(
        [(p["semantic"] == t["semantic"]).float().mean() for p, t in zip(predictions, targets, strict=True)]
    )
    assert accuracy.min() > 0.9


@pytest.mark.parametrize(
    "strategy, pcgrad",
    [("uncertainty", False), ("dwa", False), ("gradnorm", False), ("fixed", True), ("dwa", True)],
)
def test_trainer_backpropagates_the_weighted_loss_and_logs_the_weights(tmp_path, strategy, pcgrad):
    torch.manual_seed(0)
    config = MultiTaskConfig(num_classes=4, loss_strategy=strategy, loss_options={"dwa_period": 2}
                             if strategy == "dwa" else {}, **SMALL)  # fmt: skip
    model = MultiTaskRCNN(config)
    train = TrainConfig(steps=6, batch_size=2, lr=1e-3, optimizer="adamw", warmup_steps=1, log_every=1,
                        output_dir=str(tmp_path), progress=False, pcgrad=pcgrad)  # fmt: skip
    lines = Trainer(model, ShapesDataset(8, 128, seed=0), train, log=lambda *_: None).train()
    assert len(lines) == 6
    for line in lines:
        assert {"weight_detection", "weight_instance", "weight_semantic"} <= set(line)
        assert all(torch.isfinite(torch.tensor(line[k])) for k in line)
    weights = [[line[f"weight_{t}"] for t in ("detection", "instance", "semantic")] for line in lines]
    if strategy == "fixed":
        assert weights[0] == weights[-1] == [1.0, 1.0, 1.0]
    else:  # learned or adapted: the weights move
        assert weights[0] != weights[-1]


def test_pcgrad_needs_weights_that_backpropagation_does_not_learn(tmp_path):
    model = MultiTaskRCNN(MultiTaskConfig(num_classes=4, loss_strategy="uncertainty", **SMALL))
    expected = "pcgrad needs a multi-task model .* got MultiTaskRCNN with loss_strategy 'uncertainty'"
    with pytest.raises(ValueError, match=expected):
        Trainer(model, ShapesDataset(4, 128), TrainConfig(output_dir=str(tmp_path), pcgrad=True))
