"""minimtl.data.stats: counts and sizes on a file written by hand, the anchors laid out as the model
lays them out (feature shapes from the real backbone, resizing from the real transform), best anchor
IoU against a brute-force search, and the anchor-size suggestion for small objects."""

import json
import re

import numpy as np
import pytest
import torch

from minimtl import models
from minimtl.data import CocoDataset
from minimtl.data.stats import best_anchor_iou, data_stats, feature_shapes, resized_size, suggest_anchor_sizes
from minimtl.modeling.anchors import AnchorGenerator
from minimtl.modeling.transform import ImageTransform
from minimtl.ops import reference

SIZES = ((32,), (64,), (128,), (256,), (512,))
RATIOS = ((0.5, 1.0, 2.0),) * 5


def write(tmp_path, boxes_per_image, size=(100, 200), crowd=(), polygons=True):
    """A COCO file: images of size (h, w), the boxes [x, y, w, h, category] of each, rectangles as polygons."""
    h, w = size
    images = [{"id": i + 1, "file_name": f"{i}.png", "height": h, "width": w} for i in range(len(boxes_per_image))]
    annotations = []
    for i, boxes in enumerate(boxes_per_image):
        for x, y, bw, bh, cat in boxes:
            ann = {"id": len(annotations) + 1, "image_id": i + 1, "category_id": cat, "bbox": [x, y, bw, bh],
                   "iscrowd": int(len(annotations) in crowd)}  # fmt: skip
            if polygons:
                ann["segmentation"] = [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]
            annotations.append(ann)
    categories = [{"id": 1, "name": "cell"}, {"id": 2, "name": "debris"}]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return CocoDataset(path, tmp_path)


def test_counts_sizes_and_coverage_by_hand(tmp_path):
    dataset = write(tmp_path, [[(0, 0, 20, 10, 1), (50, 50, 10, 40, 2)], [], [(0, 0, 200, 100, 1)]], crowd=(2,))
    stats = data_stats(dataset, SIZES, RATIOS, min_size=50, max_size=1000)  # 100 x 200 images -> 50 x 100
    assert stats.num_images == 3 and stats.num_crowd == 1
    assert stats.objects_per_image.tolist() == [2, 0, 0]  # the crowd is not an object
    assert stats.objects_per_class == [1, 1]
    np.testing.assert_array_equal(stats.sizes, [[20, 10], [10, 40]])
    np.testing.assert_allclose(stats.model_sizes, [[10, 5], [5, 20]])
    np.testing.assert_allclose(stats.aspect, [0.5, 4.0])
    # image 1: (200 + 400) of 20000 pixels; image 2: nothing; image 3: the crowd covers it all
    np.testing.assert_allclose(stats.mask_coverage, [600 / 20000, 0.0, 1.0])
    text = stats.summary()
    assert "3 images, 2 objects (1 crowd regions left out)" in text and "cell 1, debris 1" in text


def test_resizing_is_the_models(tmp_path):
    transform = ImageTransform(min_size=96, max_size=150)
    for h, w in [(100, 200), (333, 101), (64, 64), (50, 400)]:
        resized, _ = transform.resize(torch.zeros(3, h, w), None)
        assert resized_size(h, w, 96, 150) == tuple(resized.shape[-2:])


@pytest.mark.parametrize(("h", "w"), [(96, 150), (100, 64), (130, 97), (32, 33)])
def test_feature_shapes_are_the_models(h, w):
    config = models.RCNNConfig(num_classes=2, backbone="resnet18", backbone_width=8, fpn_channels=8, norm="gn")
    model = models.RCNN(config).eval()
    padded = model.transform.batch([torch.zeros(3, h, w)])
    with torch.no_grad():
        features = model.fpn(model.backbone(padded))
    assert feature_shapes(h, w) == [tuple(f.shape[-2:]) for f in features]


def test_best_anchor_iou_against_brute_force():
    generator = AnchorGenerator(SIZES, RATIOS)
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(30, 2, generator=g) * 150
    wh = torch.rand(30, 2, generator=g) * 120 + 2
    boxes = torch.cat([xy, xy + wh], 1)  # (30, 4), some beyond the image: the RPN's anchors are too
    anchors = torch.cat(generator((160, 224), feature_shapes(150, 200)))
    expected = reference.box_iou(boxes, anchors).amax(1)
    torch.testing.assert_close(best_anchor_iou(boxes, 150, 200, generator), expected)
    one = anchors[1234:1235]  # an anchor itself: IoU 1
    assert best_anchor_iou(one, 150, 200, generator).item() == 1.0
    assert best_anchor_iou(torch.zeros(0, 4), 150, 200, generator).shape == (0,)


def test_small_objects_are_unreached_and_smaller_anchors_fix_it(tmp_path):
    tiny = [[(10 * k, 10 * k, 6, 6, 1) for k in range(1, 8)] for _ in range(2)]  # 6-pixel objects
    dataset = write(tmp_path, tiny, size=(128, 128))
    stats = data_stats(dataset, SIZES, RATIOS, min_size=128, max_size=128)
    assert stats.unreached(0.5).all()  # about 36 / (32 * 32) at best: nowhere near 0.5
    smallest = AnchorGenerator(SIZES, RATIOS).cell_anchors[0]  # P2's three anchors, (3, 4)
    area = ((smallest[:, 2] - smallest[:, 0]) * (smallest[:, 3] - smallest[:, 1])).min().item()
    assert stats.best_anchor_iou.max() <= 36 / area + 1e-6  # the box inside the smallest anchor
    suggestions = suggest_anchor_sizes(dataset, stats)
    best_sizes, unreached, _ = suggestions[0]
    assert best_sizes[0] == (8,) and unreached == 0.0  # a 6x6 box in an 8x8 anchor: 36/64 = 0.56 when aligned
    assert [u for _, u, _ in suggestions] == sorted(u for _, u, _ in suggestions)
    assert {len(sizes[0]) for sizes, _, _ in suggestions} == {1, 2}  # one and two scales per octave
    assert ((8, 11), (16, 23), (32, 45), (64, 91), (128, 181)) in [sizes for sizes, _, _ in suggestions]
    size_line = next(line for line in stats.summary().splitlines() if "0-16 px" in line)
    assert "14 objects" in size_line and "100.0% unreached" in size_line


def test_a_second_scale_per_octave_fits_objects_between_levels(tmp_path):
    # 23-pixel squares, between P2's 16-pixel and P3's 32-pixel anchors: the worst case of one scale.
    # Centred on an anchor, the best is 16^2 / 23^2 = 0.48 or 23^2 / 32^2 = 0.52, both
    # below the RPN's 0.7; a 23-pixel anchor on P2 (sizes s and s * sqrt(2), rounded to 24) fits them at 0.92.
    between = [[(4 * k - 11.5, 40 - 11.5, 23, 23, 1) for k in range(3, 10)]]  # centred on anchor centres
    dataset = write(tmp_path, between, size=(128, 128))
    one = data_stats(dataset, ((16,), (32,), (64,), (128,), (256,)), RATIOS, min_size=128, max_size=128)
    two = data_stats(dataset, ((16, 23), (32, 45), (64, 91), (128, 181), (256, 362)), RATIOS, 128, 128)
    assert one.best_anchor_iou.max() < 0.7 and one.unreached(0.7).all()
    assert (two.best_anchor_iou > 0.9).all() and not two.unreached(0.7).any()
    best_sizes, at_05, at_07 = suggest_anchor_sizes(dataset, one)[0]
    assert len(best_sizes[0]) == 2 and at_05 == 0.0 and at_07 == 0.0


def test_no_objects_and_no_masks(tmp_path):
    dataset = write(tmp_path, [[], []], polygons=False)
    stats = data_stats(dataset, SIZES, RATIOS, min_size=100, max_size=200)
    assert stats.mask_coverage is None and len(stats.labels) == 0
    assert "no objects" in stats.summary()
    assert suggest_anchor_sizes(dataset, stats)[0][1] == 0.0


def test_command_line(tmp_path, capsys):
    from minimtl.cli import main

    tiny = [[(10 * k, 10 * k, 6, 6, 1) for k in range(1, 8)]]
    write(tmp_path, tiny, size=(128, 128))
    assert main(["data", "stats", str(tmp_path / "ann.json"), "--set", "data.min_size=128"]) == 0
    out = capsys.readouterr().out
    assert "1 images, 7 objects" in out and "objects no anchor reaches at IoU >= 0.5: 100.0%" in out
    suggestions = out.split("anchor sizes to try")[1].splitlines()[1:]
    eights = r"  --set model.anchor_sizes=\[\[8\],\[16\],\[32\],\[64\],\[128\]\]"
    assert re.fullmatch(eights + r" +0.0% +\d+\.\d%", suggestions[0])  # the shares at IoU 0.5 and 0.7
    current = [line for line in suggestions if line.endswith("<- the current setting")]  # the small preset's
    assert len(current) == 1 and "=[[16],[32],[64],[128],[256]]" in current[0] and "100.0%" in current[0]
    smaller = ["--set", "model.anchor_sizes=[[8],[16],[32],[64],[128]]", "--set", "data.min_size=128"]
    plot = tmp_path / "stats.png"
    assert main(["data", "stats", str(tmp_path / "ann.json"), *smaller, "--plot", str(plot)]) == 0
    assert "objects no anchor reaches at IoU >= 0.5: 0.0%" in capsys.readouterr().out
    assert plot.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.json"], "does not exist"),
        (["ann.json", "--plot", "stats.txt"], "--plot stats.txt: expected a .png"),
        (["ann.json", "--set", "model.anchor_size=[[8]]"], "model.anchor_size: not a setting"),
    ],
)
def test_command_line_mistakes_are_one_line(tmp_path, capsys, monkeypatch, args, message):
    from minimtl.cli import main

    write(tmp_path, [[(0, 0, 20, 10, 1)]])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["data", "stats", *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minimtl: error: ") and message in err[0], err
