"""The detector's loss options (minimtl/modeling/rpn.py, roi_heads.py; RCNNConfig): focal objectness,
focal box classifier, the IoU-family box losses, their prior initialisation and inference, each checked
against a direct computation with minimtl.losses / torch.nn.functional on hand-built inputs."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from minimtl import models, ops
from minimtl.app.config import ConfigError, resolve
from minimtl.losses import ciou_loss, diou_loss, giou_loss, sigmoid_focal_loss
from minimtl.modeling.anchors import AnchorGenerator
from minimtl.modeling.box_coder import BoxCoder
from minimtl.modeling.poolers import MultiScaleRoIAlign
from minimtl.modeling.roi_heads import FastRCNNPredictor, RoIHeads, TwoMLPHead
from minimtl.modeling.rpn import RegionProposalNetwork, RPNHead

BOX_LOSSES = ["smooth_l1", "giou", "diou", "ciou"]
IOU_LOSSES = {"giou": giou_loss, "diou": diou_loss, "ciou": ciou_loss}

TINY = dict(min_size=64, max_size=64, backbone_width=8, fpn_channels=16, representation_size=32,
            rpn_batch_size_per_image=32, box_batch_size_per_image=32,
            anchor_sizes=((8,), (16,), (32,), (64,), (128,)), rpn_pre_nms_top_n_train=50,
            rpn_post_nms_top_n_train=30, rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=30, norm="gn")  # fmt: skip


@pytest.fixture
def one_thread():
    """A tiny model's ops are too small to share between threads: on a busy machine the threads only wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_rpn(**kwargs):
    anchors = AnchorGenerator(((16,), (32,), (64,)), ((0.5, 1.0, 2.0),) * 3)
    return RegionProposalNetwork(anchors, RPNHead(8, 3), **kwargs)


def small_roi_heads(num_classes=4, **kwargs):
    return RoIHeads(MultiScaleRoIAlign(7, 2), TwoMLPHead(8 * 7 * 7, 32), FastRCNNPredictor(32, num_classes), **kwargs)


# Hand-built RPN case: 10 anchors, three images. IoU with [0, 0, 10, 10]: a0 1, a1 and a2 0.91, a3 0.82
# (positive, >= 0.7), a4 0.5 (ignored, in [0.3, 0.7)); with [50, 50, 70, 70]: a5 1, a6 0.95, a9 0.25.
ANCHORS = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 11], [0, 0, 11, 10], [1, 0, 11, 10], [0, 0, 10, 20],
                        [50, 50, 70, 70], [50, 50, 70, 71], [80, 80, 90, 90], [20, 20, 30, 30],
                        [60, 60, 70, 70]])  # fmt: skip
RPN_TARGETS = [
    {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([1])},
    {"boxes": torch.tensor([[50.0, 50, 70, 70]]), "labels": torch.tensor([1])},
    {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # an image without objects
]
RPN_LABELS = torch.tensor([[1.0, 1, 1, 1, -1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1, 1, 0, 0, 0], [0] * 10])  # (N, R)
RPN_MATCHED = torch.tensor([[0.0, 0, 10, 10]] * 4 + [[50.0, 50, 70, 70]] * 2)  # of the 6 positives, in order


def rpn_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    objectness = torch.randn(3, 10, generator=g, requires_grad=True)  # (N, R)
    deltas = (0.2 * torch.randn(3, 10, 4, generator=g)).requires_grad_()  # (N, R, 4)
    return objectness, deltas


def test_hand_built_rpn_case_matches_as_labelled():
    """The labels the other RPN tests rely on: matched (>= 0) is 1, between the thresholds (-2) ignored."""
    rpn = small_rpn()
    for target, label in zip(RPN_TARGETS, RPN_LABELS, strict=True):
        matches = rpn.matcher(ops.box_iou(target["boxes"], ANCHORS))
        assert torch.equal(torch.where(matches == -2, -1.0, (matches >= 0).float()), label)


def test_default_rpn_losses_are_bce_and_smooth_l1_on_the_sampled_anchors():
    rpn = small_rpn(batch_size_per_image=4)  # 4 of 10 anchors: the sample matters
    objectness, deltas = rpn_inputs()
    torch.manual_seed(7)
    losses = rpn.losses(ANCHORS, objectness, deltas, RPN_TARGETS)
    torch.manual_seed(7)  # the same sample: the sampler's draws, image by image
    masks = [rpn.sampler(label) for label in RPN_LABELS]
    pos = torch.cat([p for p, _ in masks])  # over N * R
    sampled = torch.cat([torch.where(pos)[0], torch.where(torch.cat([n for _, n in masks]))[0]])
    expected_objectness = F.binary_cross_entropy_with_logits(
        objectness.flatten()[sampled], RPN_LABELS.flatten()[sampled]
    )
    matched = torch.cat([t["boxes"].expand(10, 4) for t in RPN_TARGETS[:2]] + [torch.zeros(10, 4)])  # (N * R, 4)
    target_deltas = BoxCoder((1.0, 1.0, 1.0, 1.0)).encode(matched[pos], ANCHORS.repeat(3, 1)[pos])
    expected_box = F.smooth_l1_loss(deltas.reshape(-1, 4)[pos], target_deltas, beta=1 / 9, reduction="sum") / 12
    assert len(sampled) == 12 and pos.sum() == 4  # 2 + 2, 2 + 2, 0 + 4
    torch.testing.assert_close(losses["loss_objectness"], expected_objectness, atol=0, rtol=0)
    torch.testing.assert_close(losses["loss_rpn_box_reg"], expected_box, atol=0, rtol=0)


@pytest.mark.parametrize("name", ["giou", "diou", "ciou"])
def test_rpn_iou_box_losses_on_the_decoded_anchors(name):
    rpn = small_rpn(box_loss=name)  # 256 per image: every anchor not ignored is sampled (29)
    objectness, deltas = rpn_inputs(1)
    loss = rpn.losses(ANCHORS, objectness, deltas, RPN_TARGETS)["loss_rpn_box_reg"]
    pos = RPN_LABELS.flatten() == 1
    decoded = BoxCoder((1.0, 1.0, 1.0, 1.0)).decode(deltas.reshape(-1, 4)[pos], ANCHORS.repeat(3, 1)[pos])
    expected = IOU_LOSSES[name](decoded.reshape(-1, 4), RPN_MATCHED, reduction="sum") / 29
    torch.testing.assert_close(loss, expected, atol=0, rtol=1e-6)
    loss.backward()
    assert deltas.grad[RPN_LABELS == 1].abs().sum() > 0 and (deltas.grad[RPN_LABELS != 1] == 0).all()


def test_focal_objectness_without_focusing_is_bce_over_every_anchor_not_ignored():
    rpn = small_rpn(batch_size_per_image=4, objectness_loss="focal", focal_gamma=0.0, focal_alpha=-1.0)
    objectness, deltas = rpn_inputs(2)
    loss = rpn.losses(ANCHORS, objectness, deltas, RPN_TARGETS)["loss_objectness"]
    valid = RPN_LABELS >= 0  # 29 anchors: no sampling of 4
    bce = F.binary_cross_entropy_with_logits(objectness[valid], RPN_LABELS[valid], reduction="sum")
    torch.testing.assert_close(loss, bce / 6, atol=0, rtol=1e-6)  # 6 positive anchors
    loss.backward()
    assert objectness.grad[0, 4] == 0 and (objectness.grad[valid] != 0).all()  # the ignored anchor only


def test_focal_objectness_is_retinanets_loss():
    """With the paper's α and γ: sigmoid_focal_loss summed over the anchors not ignored, / max(1, positives)."""
    rpn = small_rpn(objectness_loss="focal")
    objectness, deltas = rpn_inputs(3)
    loss = rpn.losses(ANCHORS, objectness, deltas, RPN_TARGETS)["loss_objectness"]
    valid = RPN_LABELS >= 0
    expected = sigmoid_focal_loss(objectness[valid], RPN_LABELS[valid], alpha=0.25, gamma=2.0, reduction="sum") / 6
    torch.testing.assert_close(loss, expected, atol=0, rtol=1e-6)
    empty = [RPN_TARGETS[2]] * 3  # no positives anywhere: divided by 1, still finite
    loss = rpn.losses(ANCHORS, objectness, deltas, empty)["loss_objectness"]
    torch.testing.assert_close(loss, sigmoid_focal_loss(objectness, torch.zeros(3, 10), reduction="sum"))


# Hand-built box head case: two images, 3 + 2 sampled RoIs, C = 4 classes; image 1 has no objects.
ROI_PROPOSALS = [torch.tensor([[10.0, 10, 40, 50], [60, 5, 90, 30], [5, 60, 35, 95]]),
                 torch.tensor([[0.0, 0, 20, 20], [30, 30, 80, 80]])]  # fmt: skip
ROI_LABELS = [torch.tensor([2, 0, 1]), torch.tensor([0, 0])]
ROI_MATCHED = [torch.tensor([1, 0, 0]), torch.tensor([0, 0])]
ROI_TARGETS = [
    {"boxes": torch.tensor([[8.0, 58, 36, 90], [12, 8, 44, 52]]), "labels": torch.tensor([1, 2])},
    {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
]


def roi_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    class_logits = torch.randn(5, 4, generator=g, requires_grad=True)  # (K, C)
    deltas = torch.randn(5, 16, generator=g, requires_grad=True)  # (K, 4C)
    return class_logits, deltas


def roi_losses(heads, class_logits, deltas):
    return heads.losses(class_logits, deltas, ROI_PROPOSALS, ROI_MATCHED, ROI_LABELS, ROI_TARGETS)


def true_class_deltas_and_gt(deltas):
    """The foreground RoIs (0 and 2): their true class's deltas (2, 4), proposals (2, 4), ground truth (2, 4)."""
    pos_deltas = torch.stack([deltas[0, 8:12], deltas[2, 4:8]])  # classes 2 and 1
    proposals = torch.stack([ROI_PROPOSALS[0][0], ROI_PROPOSALS[0][2]])
    gt = ROI_TARGETS[0]["boxes"][[1, 0]]
    return pos_deltas, proposals, gt


def test_default_box_head_losses_are_cross_entropy_and_smooth_l1():
    class_logits, deltas = roi_inputs()
    losses = roi_losses(small_roi_heads(), class_logits, deltas)
    labels = torch.cat(ROI_LABELS)
    torch.testing.assert_close(losses["loss_classifier"], F.cross_entropy(class_logits, labels), atol=0, rtol=0)
    pos_deltas, proposals, gt = true_class_deltas_and_gt(deltas)
    target_deltas = BoxCoder((10.0, 10.0, 5.0, 5.0)).encode(gt, proposals)
    expected = F.smooth_l1_loss(pos_deltas, target_deltas, beta=1 / 9, reduction="sum") / 5
    torch.testing.assert_close(losses["loss_box_reg"], expected, atol=0, rtol=0)


@pytest.mark.parametrize("name", ["giou", "diou", "ciou"])
def test_box_head_iou_losses_on_the_decoded_true_class_boxes(name):
    class_logits, deltas = roi_inputs(1)
    loss = roi_losses(small_roi_heads(box_loss=name), class_logits, deltas)["loss_box_reg"]
    pos_deltas, proposals, gt = true_class_deltas_and_gt(deltas)
    decoded = BoxCoder((10.0, 10.0, 5.0, 5.0)).decode(pos_deltas, proposals).reshape(-1, 4)
    torch.testing.assert_close(loss, IOU_LOSSES[name](decoded, gt, reduction="sum") / 5, atol=0, rtol=1e-6)


@pytest.mark.parametrize("name", BOX_LOSSES)
def test_box_loss_weight_scales_the_box_term_of_both_stages_only(name):
    """box_loss_weight w: the box term is w times the unweighted one, the other terms and the gradients of
    the classification logits unchanged; w = 0 leaves the box deltas without gradient."""
    objectness, deltas = rpn_inputs(2)
    torch.manual_seed(3)
    plain = small_rpn(box_loss=name).losses(ANCHORS, objectness, deltas, RPN_TARGETS)
    torch.manual_seed(3)  # the same sample
    scaled = small_rpn(box_loss=name, box_loss_weight=10.0).losses(ANCHORS, objectness, deltas, RPN_TARGETS)
    torch.testing.assert_close(scaled["loss_rpn_box_reg"], 10 * plain["loss_rpn_box_reg"], atol=0, rtol=1e-6)
    torch.testing.assert_close(scaled["loss_objectness"], plain["loss_objectness"], atol=0, rtol=0)
    class_logits, roi_deltas = roi_inputs(3)
    plain = roi_losses(small_roi_heads(box_loss=name), class_logits, roi_deltas)
    scaled = roi_losses(small_roi_heads(box_loss=name, box_loss_weight=12.0), class_logits, roi_deltas)
    torch.testing.assert_close(scaled["loss_box_reg"], 12 * plain["loss_box_reg"], atol=0, rtol=1e-6)
    torch.testing.assert_close(scaled["loss_classifier"], plain["loss_classifier"], atol=0, rtol=0)
    off = roi_losses(small_roi_heads(box_loss=name, box_loss_weight=0.0), class_logits, roi_deltas)
    assert off["loss_box_reg"] == 0
    sum(off.values()).backward()
    assert (roi_deltas.grad == 0).all() and class_logits.grad.abs().sum() > 0


def test_box_loss_weights_reach_both_stages_from_the_config():
    model = models.fasterrcnn_resnet18_fpn(3, **TINY, rpn_box_loss_weight=0.5, box_loss_weight=10)
    assert (model.rpn.box_loss_weight, model.roi_heads.box_loss_weight) == (0.5, 10)
    with pytest.raises(ValueError, match="^rpn: box_loss_weight must be a finite number >= 0, got -1.0$"):
        small_rpn(box_loss_weight=-1.0)
    with pytest.raises(ValueError, match="^roi_heads: box_loss_weight must be a finite number >= 0, got inf$"):
        small_roi_heads(box_loss_weight=math.inf)


def test_focal_classifier_is_one_vs_all_over_the_foreground_classes():
    class_logits, deltas = roi_inputs(2)
    one_hot = torch.tensor([[0.0, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]])  # classes 1..3; background 0s
    loss = roi_losses(small_roi_heads(classifier_loss="focal"), class_logits, deltas)["loss_classifier"]
    expected = sigmoid_focal_loss(class_logits[:, 1:], one_hot, alpha=0.25, gamma=2.0, reduction="sum") / 2
    torch.testing.assert_close(loss, expected, atol=0, rtol=1e-6)  # / 2 foreground RoIs
    loss.backward()
    assert (class_logits.grad[:, 0] == 0).all() and (class_logits.grad[:, 1:] != 0).all()  # column 0 unused
    heads = small_roi_heads(classifier_loss="focal", focal_gamma=0.0, focal_alpha=-1.0)
    loss = roi_losses(heads, class_logits, deltas)["loss_classifier"]
    bce = F.binary_cross_entropy_with_logits(class_logits[:, 1:], one_hot, reduction="sum")
    torch.testing.assert_close(loss, bce / 2, atol=0, rtol=1e-6)
    background_only = [torch.zeros(3, dtype=torch.int64), torch.zeros(2, dtype=torch.int64)]
    loss = heads.losses(class_logits, deltas, ROI_PROPOSALS, ROI_MATCHED, background_only, ROI_TARGETS)
    expected = F.binary_cross_entropy_with_logits(class_logits[:, 1:], torch.zeros(5, 3), reduction="sum")
    torch.testing.assert_close(loss["loss_classifier"], expected)  # no foreground: / 1


def test_detect_with_focal_scores_each_class_by_its_sigmoid():
    class_logits = torch.tensor([[5.0, 2.0, -1.0, -4.0], [0.0, -3.0, 0.5, 1.5], [-2.0, 0.2, -5.0, -2.5]])
    proposals = [torch.tensor([[0.0, 0, 20, 20], [40, 40, 60, 70], [5, 70, 30, 95]])]  # disjoint: no NMS between
    deltas = torch.zeros(3, 16)  # every class's box is its proposal
    heads = small_roi_heads(classifier_loss="focal").eval()
    (det,) = heads.detect(class_logits, deltas, proposals, [(100, 100)])
    expected = {}  # (proposal, class) -> 1 / (1 + exp(-logit)), for the foreground classes above 0.05
    for k, c in itertools.product(range(3), range(1, 4)):
        score = 1 / (1 + math.exp(-class_logits[k, c].item()))
        if score > 0.05:
            expected[(k, c)] = score
    assert len(expected) == 6 and len(det["scores"]) == 6  # sigmoid(-4), sigmoid(-3), sigmoid(-5) are below
    assert ((det["scores"] > 0) & (det["scores"] < 1)).all()
    assert (det["scores"][:-1] >= det["scores"][1:]).all()  # best first
    for box, label, score in zip(det["boxes"], det["labels"], det["scores"], strict=True):
        k = next(i for i, p in enumerate(proposals[0]) if torch.equal(p, box))
        assert score.item() == pytest.approx(expected[(k, label.item())], rel=1e-6)
    # the softmax head scores the same logits otherwise: the class-0 logit takes its share
    (softmax_det,) = small_roi_heads().eval().detect(class_logits, deltas, proposals, [(100, 100)])
    softmax = F.softmax(class_logits, -1)[:, 1:].flatten()
    torch.testing.assert_close(softmax_det["scores"], softmax[softmax > 0.05].sort(descending=True).values)
    assert len(softmax_det["scores"]) == 4


def test_focal_starts_at_the_prior_probability(one_thread):
    torch.manual_seed(0)
    plain = models.fasterrcnn_resnet18_fpn(3, **TINY)
    torch.manual_seed(0)
    focal = models.fasterrcnn_resnet18_fpn(3, **TINY, rpn_objectness_loss="focal", box_classifier_loss="focal")
    rpn_bias, cls = focal.rpn.head.objectness.bias, focal.roi_heads.box_predictor.cls_score
    torch.testing.assert_close(torch.sigmoid(rpn_bias), torch.full_like(rpn_bias, 0.01))
    torch.testing.assert_close(torch.sigmoid(cls.bias[1:]), torch.full((2,), 0.01))
    assert rpn_bias[0].item() == pytest.approx(-math.log(99))  # -log((1 - π) / π)
    # the weights, and the unused background bias, as without focal
    assert torch.equal(cls.bias[0], plain.roi_heads.box_predictor.cls_score.bias[0])
    assert torch.equal(cls.weight, plain.roi_heads.box_predictor.cls_score.weight)
    assert torch.equal(focal.rpn.head.objectness.weight, plain.rpn.head.objectness.weight)
    assert (plain.rpn.head.objectness.bias == 0).all()
    # a fresh model's probabilities: the RPN's weights (std 0.01) barely move them off π; the box
    # classifier's (nn.Linear's default initialisation) spread them around it
    focal.eval()
    with torch.no_grad():
        batch, sizes, _, _ = focal.batch_images([torch.rand(3, 64, 64), torch.rand(3, 64, 64)], None)
        features = focal.fpn(focal.backbone(batch))
        objectness, _ = focal.rpn.head(features)
        p = torch.cat([o.flatten() for o in objectness]).sigmoid()
        assert p.min() > 0.009 and p.max() < 0.011
        proposals, _ = focal.rpn(tuple(batch.shape[-2:]), sizes, features)
        logits, _ = focal.roi_heads.box_predictor(focal.roi_heads.box_head(focal.roi_heads.box_pooler(
            features[:4], proposals, sizes)))  # fmt: skip
        assert 0.005 < logits[:, 1:].sigmoid().median() < 0.02
    other = models.fasterrcnn_resnet18_fpn(3, **TINY, box_classifier_loss="focal", focal_prior=0.1)
    torch.testing.assert_close(torch.sigmoid(other.roi_heads.box_predictor.cls_score.bias[1:]), torch.full((2,), 0.1))
    assert (other.rpn.head.objectness.bias == 0).all()  # the RPN's objectness is still BCE


def tiny_batch():
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    targets = [{"boxes": torch.tensor([[5.0, 8, 30, 40], [35, 30, 60, 58]]), "labels": torch.tensor([1, 2])},
               {"boxes": torch.tensor([[20.0, 20, 50, 44]]), "labels": torch.tensor([2])}]  # fmt: skip
    return images, targets


@pytest.mark.parametrize(
    "rpn_objectness_loss, box_classifier_loss, rpn_box_loss, box_loss",
    list(itertools.product(["bce", "focal"], ["ce", "focal"], BOX_LOSSES, BOX_LOSSES)),
)
def test_every_option_combination_trains(rpn_objectness_loss, box_classifier_loss, rpn_box_loss, box_loss, one_thread):
    torch.manual_seed(0)
    options = dict(rpn_objectness_loss=rpn_objectness_loss, box_classifier_loss=box_classifier_loss,
                   rpn_box_loss=rpn_box_loss, box_loss=box_loss)  # fmt: skip
    model = models.fasterrcnn_resnet18_fpn(3, **TINY, **options)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    images, targets = tiny_batch()
    for _ in range(2):  # the second step after an update
        losses = model(images, targets)
        assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
        assert all(v.isfinite() for v in losses.values()), losses
        optimizer.zero_grad()
        sum(losses.values()).backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert all(g.isfinite().all() for g in grads)
        assert model.rpn.head.objectness.weight.grad.abs().sum() > 0
        assert model.roi_heads.box_predictor.cls_score.weight.grad.abs().sum() > 0
        assert model.roi_heads.box_predictor.bbox_pred.weight.grad.abs().sum() > 0
        optimizer.step()
    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert all(((d["scores"] > 0) & (d["scores"] <= 1)).all() for d in detections)


def test_focal_and_iou_losses_without_objects_are_finite(one_thread):
    torch.manual_seed(1)
    model = models.maskrcnn_resnet18_fpn(3, **TINY, mask_layers=(16,), mask_dim_reduced=16,
                                         rpn_objectness_loss="focal", box_classifier_loss="focal",
                                         rpn_box_loss="ciou", box_loss="diou")  # fmt: skip
    images, _ = tiny_batch()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
             "masks": torch.zeros(0, 64, 64, dtype=torch.uint8)}  # fmt: skip
    losses = model(images, [empty, empty])
    assert all(v.isfinite() for v in losses.values()), losses
    assert losses["loss_rpn_box_reg"] == 0 and losses["loss_box_reg"] == 0
    sum(losses.values()).backward()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("rpn_box_loss", "iou", "rpn_box_loss must be 'smooth_l1', 'giou', 'diou' or 'ciou', got 'iou'"),
        ("box_loss", "l2", "box_loss must be 'smooth_l1', 'giou', 'diou' or 'ciou', got 'l2'"),
        ("rpn_objectness_loss", "ce", "rpn_objectness_loss must be 'bce' or 'focal', got 'ce'"),
        ("box_classifier_loss", "bce", "box_classifier_loss must be 'ce' or 'focal', got 'bce'"),
        ("focal_alpha", 1.5, r"focal_alpha must be in \[0, 1\] \(or negative to disable it\), got 1.5"),
        ("focal_gamma", -1.0, "focal_gamma must be >= 0, got -1.0"),
        ("focal_prior", 0.0, r"focal_prior must be in \(0, 1\), got 0.0"),
        ("focal_prior", 1.0, r"focal_prior must be in \(0, 1\), got 1.0"),
        ("focal_prior", float("nan"), r"focal_prior must be in \(0, 1\), got nan"),
        ("box_loss_weight", -0.5, "box_loss_weight must be a finite number >= 0, got -0.5"),
        ("rpn_box_loss_weight", float("nan"), "rpn_box_loss_weight must be a finite number >= 0, got nan"),
        ("box_loss_weight", float("inf"), "box_loss_weight must be a finite number >= 0, got inf"),
    ],
)
def test_bad_loss_settings_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        models.RCNNConfig(num_classes=3, **{field: value})
    with pytest.raises(ConfigError, match=f"^model: {message}$"):  # as `--set model.{field}=...` meets it
        resolve({"model": {field: value}})


def test_good_settings_reach_the_config_from_the_command_line_layer():
    config = models.RCNNConfig(num_classes=3, focal_alpha=-1.0, focal_gamma=0.0, focal_prior=0.5)
    assert (config.rpn_objectness_loss, config.box_classifier_loss) == ("bce", "ce")  # the defaults
    settings = {"box_classifier_loss": "focal", "rpn_objectness_loss": "focal", "box_loss": "ciou",
                "rpn_box_loss": "diou", "focal_alpha": 0, "focal_gamma": 1}  # fmt: skip
    run = resolve({"model": settings})
    config = run.model.config(num_classes=3, min_size=64, max_size=64, masks=False)
    assert (config.box_classifier_loss, config.rpn_box_loss, config.focal_alpha) == ("focal", "diou", 0.0)
    with pytest.raises(ValueError, match="rpn: objectness_loss must be 'bce' or 'focal', got 'x'"):
        small_rpn(objectness_loss="x")
    with pytest.raises(ValueError, match="roi_heads: classifier_loss must be 'ce' or 'focal', got 'x'"):
        small_roi_heads(classifier_loss="x")
    with pytest.raises(ValueError, match="roi_heads: box_loss must be 'smooth_l1', 'giou', 'diou' or 'ciou'"):
        small_roi_heads(box_loss="iou")
    with pytest.raises(ValueError, match="classifier_loss 'focal' initialises box_predictor.cls_score"):
        RoIHeads(MultiScaleRoIAlign(7), torch.nn.Identity(), torch.nn.Identity(), classifier_loss="focal")
