"""minimtl.data: the shapes dataset, mask decoding (against pycocotools), COCO-format loading, augmentation."""

import importlib
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minimtl.data import (
    CocoDataset,
    Compose,
    RandomHorizontalFlip,
    ShapesDataset,
    decode_segmentation,
    default_train_transforms,
    make_loader,
    polygon_to_mask,
    rle_decode,
    rle_encode,
)
from minimtl.data.masks import rle_counts_from_string, rle_counts_to_string


def test_shapes_items_are_consistent_and_deterministic():
    dataset = ShapesDataset(20, image_size=96, seed=3)
    for i in range(20):
        image, target = dataset[i]
        assert image.shape == (3, 96, 96) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
        k = len(target["labels"])
        assert 1 <= k <= 4 and target["masks"].shape == (k, 96, 96) and target["boxes"].shape == (k, 4)
        assert ((target["labels"] >= 1) & (target["labels"] <= 3)).all()
        for box, mask, label in zip(target["boxes"], target["masks"], target["labels"], strict=True):
            ys, xs = torch.where(mask > 0)
            assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
            assert (target["semantic"][mask > 0] == label).all()  # the visible part is this object's class
        union = target["masks"].sum(0)
        assert union.max() <= 1  # visible parts do not overlap
        assert torch.equal(target["semantic"] > 0, union > 0)
        assert torch.equal(target["area"], target["masks"].flatten(1).sum(1).float())
    a, b = ShapesDataset(20, 96, seed=3)[7], dataset[7]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["masks"], b[1]["masks"])
    assert not torch.equal(ShapesDataset(20, 96, seed=4)[7][0], a[0])


def test_shapes_augmentation_varies_with_the_salt_only():
    dataset = ShapesDataset(5, 64, seed=0, transforms=default_train_transforms())
    assert torch.equal(dataset[(2, 0)][0], dataset[(2, 0)][0])
    assert any(not torch.equal(dataset[(2, 0)][0], dataset[(2, s)][0]) for s in range(1, 5))
    with pytest.raises(IndexError, match="index 5 out of range for 5 images"):
        dataset[5]
    with pytest.raises(ValueError, match="ShapesDataset: need"):
        ShapesDataset(10, image_size=8)


def test_flip_moves_boxes_masks_and_semantic_together():
    image, target = ShapesDataset(3, 64, seed=1)[0]
    flip = Compose([RandomHorizontalFlip(p=1.0)])
    flipped_image, flipped = flip(image, target, torch.Generator())
    assert torch.equal(flipped_image, image.flip(-1))
    for box, mask in zip(flipped["boxes"], flipped["masks"], strict=True):
        ys, xs = torch.where(mask > 0)
        assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
    assert torch.equal(flipped["semantic"], target["semantic"].flip(-1))
    again, back = flip(flipped_image, flipped, torch.Generator())
    assert torch.equal(again, image) and torch.equal(back["boxes"], target["boxes"])


@settings(max_examples=200)
@given(
    h=st.integers(1, 50),
    w=st.integers(1, 50),
    points=st.lists(st.tuples(st.floats(-10, 60), st.floats(-10, 60)), min_size=3, max_size=10),
    whole=st.booleans(),
)
def test_polygons_rasterise_like_pycocotools(h, w, points, whole):
    mask_utils = importlib.import_module("pycocotools.mask")
    polygon = [round(v) if whole else v for p in points for v in p]
    expected = mask_utils.decode(mask_utils.frPyObjects([polygon], h, w))[:, :, 0].astype(bool)
    assert np.array_equal(polygon_to_mask(polygon, h, w), expected)


@settings(max_examples=100)
@given(h=st.integers(1, 30), w=st.integers(1, 30), density=st.floats(0, 1), seed=st.integers(0, 1000))
def test_rle_round_trips_and_matches_pycocotools(h, w, density, seed):
    mask_utils = importlib.import_module("pycocotools.mask")
    mask = np.random.default_rng(seed).random((h, w)) < density
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    counts = rle_encode(mask)
    assert np.array_equal(rle_decode(counts, h, w), mask)
    assert rle_counts_to_string(counts) == encoded["counts"].decode()
    assert rle_counts_from_string(encoded["counts"]) == counts
    assert np.array_equal(decode_segmentation({"size": [h, w], "counts": encoded["counts"].decode()}, h, w), mask)
    assert np.array_equal(decode_segmentation({"size": [h, w], "counts": counts}, h, w), mask)


def test_bad_segmentations():
    with pytest.raises(ValueError, match="RLE runs sum to 5, not height \\* width = 6"):
        rle_decode([2, 3], 2, 3)
    with pytest.raises(ValueError, match="a polygon needs at least 3"):
        decode_segmentation([[0, 0, 1, 1]], 4, 4)
    with pytest.raises(ValueError, match="RLE of size 3 x 3 for an image of 4 x 4"):
        decode_segmentation({"size": [3, 3], "counts": [9]}, 4, 4)
    with pytest.raises(ValueError, match="segmentation must be a list of polygons or an RLE dict, got str"):
        decode_segmentation("oops", 4, 4)


@pytest.fixture()
def coco_dir(tmp_path):
    """Two images, polygons, compressed and uncompressed RLE, a crowd, category ids 7 and 3."""
    from PIL import Image

    mask_utils = importlib.import_module("pycocotools.mask")
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray((rng.random((40, 50, 3)) * 255).astype(np.uint8)).save(tmp_path / name)
    blob = np.zeros((40, 50), dtype=np.uint8)
    blob[5:20, 10:30] = 1
    compressed = mask_utils.encode(np.asfortranarray(blob))
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 40, "width": 50},
                   {"id": 2, "file_name": "b.png", "height": 40, "width": 50}],
        "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 7, "bbox": [2, 3, 20, 10], "iscrowd": 0,
             "segmentation": [[2, 3, 22, 3, 22, 13, 2, 13]], "area": 200},
            {"id": 11, "image_id": 1, "category_id": 3, "bbox": [10, 5, 20, 15], "iscrowd": 1,
             "segmentation": {"size": [40, 50], "counts": compressed["counts"].decode()}, "area": 300},
            {"id": 12, "image_id": 2, "category_id": 3, "bbox": [10, 5, 20, 15], "iscrowd": 0,
             "segmentation": {"size": [40, 50], "counts": rle_encode(blob.astype(bool))}, "area": 300},
            {"id": 13, "image_id": 2, "category_id": 7, "bbox": [1, 1, 0, 5], "iscrowd": 0,
             "segmentation": [[1, 1, 1, 6, 2, 6]], "area": 0},
        ],
    }  # fmt: skip
    (tmp_path / "ann.json").write_text(json.dumps(data))
    return tmp_path, data, blob


def test_coco_dataset(coco_dir):
    root, data, blob = coco_dir
    dataset = CocoDataset(root / "ann.json", root)
    assert len(dataset) == 2 and dataset.categories == ["background", "dog", "cat"]  # ids 3, 7 -> labels 1, 2
    assert dataset.skipped_boxes == 1  # the zero-width box of annotation 13
    image, target = dataset[0]
    assert image.shape == (3, 40, 50) and target["image_id"] == 1
    assert target["boxes"].tolist() == [[2, 3, 22, 13], [10, 5, 30, 20]] and target["labels"].tolist() == [2, 1]
    assert target["iscrowd"].tolist() == [0, 1]
    assert target["masks"].shape == (2, 40, 50) and torch.equal(target["masks"][1], torch.from_numpy(blob))
    assert target["masks"][0].sum() == 200  # the polygon's 20 x 10 rectangle
    _, target = dataset[1]
    assert len(target["boxes"]) == 1 and torch.equal(target["masks"][0], torch.from_numpy(blob))
    batches = list(make_loader(dataset, batch_size=2, num_workers=2))
    assert len(batches) == 1 and len(batches[0][0]) == 2 and batches[0][1][1]["image_id"] == 2


def test_coco_dataset_errors_name_the_file_and_annotation(coco_dir):
    root, data, _ = coco_dir
    (root / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"broken.json is not valid JSON"):
        CocoDataset(root / "broken.json", root)
    with pytest.raises(FileNotFoundError, match=r"annotation file .*nothing.json does not exist"):
        CocoDataset(root / "nothing.json", root)
    bad = json.loads(json.dumps(data))
    bad["annotations"][1]["category_id"] = 99
    (root / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"bad.json: annotation 11 has the unknown category id 99"):
        CocoDataset(root / "bad.json", root)
    bad = json.loads(json.dumps(data))
    bad["images"][1]["file_name"] = "missing.png"
    (root / "bad2.json").write_text(json.dumps(bad))
    with pytest.raises(FileNotFoundError, match=r"image .*missing.png \(image id 2\) does not exist"):
        CocoDataset(root / "bad2.json", root)[1]
    bad = json.loads(json.dumps(data))
    bad["annotations"][0]["segmentation"] = [[1, 2]]
    (root / "bad3.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"bad3.json: annotation 10: a polygon needs at least 3"):
        CocoDataset(root / "bad3.json", root)[0]
