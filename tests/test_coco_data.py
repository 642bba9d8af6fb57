"""minimtl.data on users' COCO files: CocoDataset (masks, crowds, categories, semantic targets, bad
input), read_image (every pixel format) and encode_rle, with pycocotools as the oracle for masks."""

import importlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from minimtl.data import CocoDataset, encode_rle, read_image, rle_encode
from minimtl.modeling.semantic_head import semantic_loss

H, W = 30, 40


def square(x, y, size):
    """A square polygon and its bbox [x, y, w, h]."""
    return [[x, y, x + size, y, x + size, y + size, x, y + size]], [x, y, size, size]


def ann(id, segmentation=None, bbox=(2, 2, 10, 10), image_id=1, category_id=1, **extra):
    a = {"id": id, "image_id": image_id, "category_id": category_id, "bbox": list(bbox), "iscrowd": 0, **extra}
    if segmentation is not None:
        a["segmentation"] = segmentation
    return a


def write_coco(root, annotations, images=None, categories=None, name="ann.json", make_images=True):
    """Writes the JSON, and (make_images) an RGB PNG of random pixels for every image that has no file yet."""
    images = images if images is not None else [{"id": 1, "file_name": "1.png", "height": H, "width": W}]
    categories = categories if categories is not None else [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}]
    rng = np.random.default_rng(0)
    for image in images:
        path = root / image["file_name"]
        if make_images and not path.exists():
            pixels = (rng.random((image["height"], image["width"], 3)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(path)
    path = root / name
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def test_polygons_and_both_rles_decode_like_pycocotools(tmp_path):
    coco_api = importlib.import_module("pycocotools.coco")
    rng = np.random.default_rng(1)
    blob = rng.random((H, W)) < 0.3
    polygon, box = square(3.2, 4.7, 11.5)
    anns = [
        ann(1, polygon + [[20, 2, 35, 6, 28, 20]], box),  # two polygons of one object: their union
        ann(2, {"size": [H, W], "counts": rle_encode(blob)}, (0, 0, W, H)),  # uncompressed RLE
        ann(3, encode_rle(blob), (0, 0, W, H), iscrowd=1),  # compressed RLE
    ]
    dataset = CocoDataset(write_coco(tmp_path, anns), tmp_path)
    assert dataset.masks is True and dataset.num_crowd == 1
    _, target = dataset[0]
    oracle = coco_api.COCO(str(tmp_path / "ann.json"))
    expected = np.stack([oracle.annToMask(oracle.anns[i]) for i in (1, 2, 3)])  # (3, H, W) uint8
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (3, H, W)
    assert np.array_equal(target["masks"].numpy(), expected)
    assert np.array_equal(expected[2], blob) and target["iscrowd"].tolist() == [0, 0, 1]


def test_box_only_file_turns_masks_off(tmp_path):
    file = write_coco(tmp_path, [ann(1), ann(2, bbox=(5, 6, 7, 8), category_id=2)])
    dataset = CocoDataset(file, tmp_path)
    assert dataset.masks is False
    image, target = dataset[0]
    assert "masks" not in target and image.shape == (3, H, W)
    assert target["boxes"].tolist() == [[2, 2, 12, 12], [5, 6, 12, 14]] and target["labels"].tolist() == [1, 2]
    with pytest.raises(ValueError, match=r"ann.json: annotation 1 has no 'segmentation'.*no annotation has one"):
        CocoDataset(file, tmp_path, masks=True)
    with pytest.raises(ValueError, match=r"semantic=True paints instance masks, but masks are off for .*ann.json"):
        CocoDataset(file, tmp_path, semantic=True)


def test_masks_false_ignores_segmentations(tmp_path):
    polygon, box = square(2, 2, 5)
    file = write_coco(tmp_path, [ann(1, polygon, box), ann(2, [[1, 2]])])  # a bad polygon, never read
    dataset = CocoDataset(file, tmp_path, masks=False)
    assert dataset.masks is False and "masks" not in dataset[0][1] and len(dataset[0][1]["boxes"]) == 2


@pytest.mark.parametrize("empty", [None, []])
def test_a_file_where_only_some_objects_have_masks_is_an_error(tmp_path, empty):
    polygon, box = square(2, 2, 5)
    missing = ann(8, bbox=box) if empty is None else ann(8, empty, box)  # absent, or an empty list
    file = write_coco(tmp_path, [ann(7, polygon, box), missing])
    pattern = r"ann.json: annotation 8 has no 'segmentation' .*1 other annotations have one.*masks=False"
    for masks in (None, True):
        with pytest.raises(ValueError, match=pattern):
            CocoDataset(file, tmp_path, masks=masks)
    assert CocoDataset(file, tmp_path, masks=False).masks is False


def test_crowds_are_left_out_for_training_and_kept_for_evaluation(tmp_path):
    polygon, box = square(2, 2, 5)
    anns = [ann(1, polygon, box), ann(2, encode_rle(np.ones((H, W), bool)), (0, 0, W, H), iscrowd=1)]
    file = write_coco(tmp_path, anns)
    train = CocoDataset(file, tmp_path, train=True)
    _, target = train[0]
    assert train.num_crowd == 1 and target["iscrowd"].tolist() == [0] and target["masks"].shape == (1, H, W)
    evaluation = CocoDataset(file, tmp_path)
    _, target = evaluation[0]
    assert target["iscrowd"].tolist() == [0, 1] and target["boxes"][1].tolist() == [0, 0, W, H]
    assert target["masks"][1].all() and target["labels"].tolist() == [1, 1]


def test_a_crowd_without_segmentation_covers_its_box_and_does_not_decide_masks(tmp_path):
    polygon, box = square(2, 2, 5)
    file = write_coco(tmp_path, [ann(1, polygon, box), ann(2, bbox=(10.2, 3, 4.6, 2), iscrowd=1)])
    _, target = CocoDataset(file, tmp_path)[0]
    expected = np.zeros((H, W), bool)
    expected[3:5, 10:15] = True  # pixel centres 10.5 .. 14.5 lie in [10.2, 14.8)
    assert np.array_equal(target["masks"][1].numpy().astype(bool), expected)


def test_crowds_decide_masks_only_when_there_is_nothing_else(tmp_path):
    rle = encode_rle(np.ones((H, W), bool))
    only_crowd = write_coco(tmp_path, [ann(1, rle, (0, 0, W, H), iscrowd=1)], name="crowd.json")
    assert CocoDataset(only_crowd, tmp_path).masks is True
    boxes_and_crowd = write_coco(tmp_path, [ann(1), ann(2, rle, (0, 0, W, H), iscrowd=1)], name="boxes.json")
    assert CocoDataset(boxes_and_crowd, tmp_path).masks is False  # the objects have boxes only
    assert CocoDataset(write_coco(tmp_path, [], name="none.json"), tmp_path).masks is False


def test_images_without_annotations_are_kept_as_negatives(tmp_path):
    polygon, box = square(2, 2, 5)
    images = [
        {"id": 5, "file_name": "a.png", "height": H, "width": W},
        {"id": 9, "file_name": "b.png", "height": 20, "width": 10},
    ]
    dataset = CocoDataset(write_coco(tmp_path, [ann(1, polygon, box, image_id=5)], images), tmp_path, semantic=True)
    assert len(dataset) == 2 and dataset.image_ids == [5, 9] and dataset.image_sizes == [(H, W), (20, 10)]
    image, target = dataset[1]
    assert image.shape == (3, 20, 10) and target["image_id"] == 9
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64
    assert target["masks"].shape == (0, 20, 10) and target["area"].shape == (0,)
    assert target["semantic"].shape == (20, 10) and not target["semantic"].any()
    _, target = CocoDataset(tmp_path / "ann.json", tmp_path, masks=False)[1]
    assert target["boxes"].shape == (0, 4) and "masks" not in target


def test_category_ids_need_not_be_contiguous(tmp_path):
    categories = [{"id": 12, "name": "c"}, {"id": 3, "name": "a"}, {"id": 7, "name": "b"}]
    anns = [ann(1, category_id=12), ann(2, category_id=3), ann(3, category_id=7)]
    dataset = CocoDataset(write_coco(tmp_path, anns, categories=categories), tmp_path)
    assert dataset.category_ids == [3, 7, 12] and dataset.categories == ["background", "a", "b", "c"]
    assert dataset.label_of == {3: 1, 7: 2, 12: 3}
    labels = dataset[0][1]["labels"].tolist()
    assert labels == [3, 1, 2] and [dataset.category_ids[label - 1] for label in labels] == [12, 3, 7]


def test_semantic_target_smaller_object_on_top_crowd_ignored(tmp_path):
    small, small_box = square(10, 10, 4)
    big, big_box = square(5, 5, 15)
    crowd = np.zeros((H, W), bool)
    crowd[0:6, 30:40] = True
    anns = [
        ann(1, small, small_box, category_id=2),  # first in the file, yet painted last: it is the smaller
        ann(2, big, big_box, category_id=1),
        ann(3, encode_rle(crowd), (30, 0, 10, 6), iscrowd=1),
    ]
    file = write_coco(tmp_path, anns)
    for train in (False, True):  # training drops the crowd object, not the crowd's ignored pixels
        _, target = CocoDataset(file, tmp_path, semantic=True, train=train)[0]
        semantic = target["semantic"]
        assert semantic.dtype == torch.int64 and semantic.shape == (H, W)
        assert (semantic[10:14, 10:14] == 2).all()  # the small one wins where they overlap
        assert (semantic[5:20, 5:20] == 1).sum() == 15 * 15 - 4 * 4
        assert (semantic[0:6, 30:40] == 255).all() and (semantic == 255).sum() == crowd.sum()
        assert (semantic == 0).sum() == H * W - 15 * 15 - crowd.sum()
    # the loss counts every pixel but the crowd's 255s
    logits = torch.randn(1, 3, H, W)
    expected = F.cross_entropy(logits, semantic[None], ignore_index=255)
    torch.testing.assert_close(semantic_loss(logits, [target], (H, W)), expected)


@pytest.mark.parametrize(
    ("mode", "pixels", "expected"),
    [
        ("L", np.array([[0, 51], [255, 102]], np.uint8), [[0, 0.2], [1, 0.4]]),
        ("I;16", np.array([[0, 13107], [65535, 26214]], np.uint16), [[0, 0.2], [1, 0.4]]),
    ],
)
def test_greyscale_images_through_the_dataset(tmp_path, mode, pixels, expected):
    Image.fromarray(pixels).save(tmp_path / "grey.png")
    assert Image.open(tmp_path / "grey.png").mode == mode
    images = [{"id": 1, "file_name": "grey.png", "height": 2, "width": 2}]
    image, _ = CocoDataset(write_coco(tmp_path, [], images), tmp_path)[0]
    assert image.dtype == torch.float32 and image.shape == (3, 2, 2)
    torch.testing.assert_close(image, torch.tensor(expected).expand(3, 2, 2), atol=1e-6, rtol=0)


def test_read_image_modes(tmp_path):
    rgb = np.array([[[255, 0, 51], [0, 255, 102]]], np.uint8)  # (1, 2, 3)
    expected = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    torch.testing.assert_close(read_image(tmp_path / "rgb.png"), expected)
    rgba = np.concatenate([rgb, np.full((1, 2, 1), 7, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    torch.testing.assert_close(read_image(tmp_path / "rgba.png"), expected)  # alpha dropped, not composited
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")  # a palette that holds both colours exactly
    torch.testing.assert_close(read_image(tmp_path / "p.png"), expected)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.tif")
    torch.testing.assert_close(read_image(tmp_path / "cmyk.tif"), expected, atol=1 / 255, rtol=0)
    grey = np.array([[0, 51]], np.uint8)
    Image.fromarray(np.stack([grey, grey * 0 + 9], axis=2), "LA").save(tmp_path / "la.png")
    torch.testing.assert_close(read_image(tmp_path / "la.png"), torch.tensor([[[0, 0.2]]]).expand(3, 1, 2))
    sixteen = np.array([[0, 65535, 13107]], np.uint16)
    Image.frombytes("I;16B", (3, 1), sixteen.astype(">u2").tobytes()).save(tmp_path / "big.tif")
    Image.fromarray(sixteen.astype(np.int32)).save(tmp_path / "i.tif")
    for name in ("big.tif", "i.tif"):
        torch.testing.assert_close(read_image(tmp_path / name), torch.tensor([[[0, 1, 0.2]]]).expand(3, 1, 3))
    Image.fromarray(np.array([[-0.5, 0.25, 1.5, np.nan]], np.float32)).save(tmp_path / "f.tif")
    image = read_image(tmp_path / "f.tif")
    assert image.shape == (3, 1, 4) and image.dtype == torch.float32
    torch.testing.assert_close(image[1], torch.tensor([[0, 0.25, 1, 0]]))  # clamped; NaN -> 0


def test_read_image_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"read_image: .*nothing.png does not exist"):
        read_image(tmp_path / "nothing.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match=r"read_image: .*text.png is not an image file Pillow can read"):
        read_image(tmp_path / "text.png")
    Image.fromarray(np.zeros((50, 50, 3), np.uint8) + 9).save(tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:60])  # truncated
    with pytest.raises(ValueError, match=r"read_image: .*cut.png could not be read"):
        read_image(tmp_path / "cut.png")


def test_missing_images_in_images_beside_the_file_are_pointed_at(tmp_path):
    # minimtl's converters and `data fetch` write file_names relative to images/ beside the JSON
    images = [{"id": 1, "file_name": "a.png", "height": H, "width": W}]
    file = write_coco(tmp_path, [], images, make_images=False)
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp_path / "images" / "a.png")
    message = rf"image .*a.png .* does not exist; it is in {tmp_path / 'images'}: .*--coco-images"
    with pytest.raises(FileNotFoundError, match=message):
        CocoDataset(file, tmp_path).check_image_files()
    CocoDataset(file, tmp_path / "images").check_image_files()  # the folder given: found
    (tmp_path / "images" / "a.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"does not exist$"):  # nowhere: no hint
        CocoDataset(file, tmp_path).check_image_files()


def test_item_errors_name_the_image_file_and_id(tmp_path):
    images = [
        {"id": 1, "file_name": "gone.png", "height": H, "width": W},
        {"id": 2, "file_name": "text.png", "height": H, "width": W},
        {"id": 3, "file_name": "small.png", "height": H, "width": W},
    ]
    Image.fromarray(np.zeros((5, 6), np.uint8)).save(tmp_path / "small.png")  # 6 x 5, not 40 x 30
    (tmp_path / "text.png").write_text("not an image")
    file = write_coco(tmp_path, [], images, make_images=False)
    dataset = CocoDataset(file, tmp_path)  # the JSON is fine: images are read item by item
    with pytest.raises(FileNotFoundError, match=r"image .*gone.png \(image id 1\) does not exist"):
        dataset[0]
    with pytest.raises(ValueError, match=r"image id 2: read_image: .*text.png is not an image"):
        dataset[1]
    with pytest.raises(
        ValueError, match=r"small.png \(image id 3\) is 6 x 5 \(width x height\), .*ann.json says 40 x 30"
    ):
        dataset[2]


def test_zero_size_boxes_are_skipped_and_counted(tmp_path):
    file = write_coco(tmp_path, [ann(1, bbox=(1, 1, 0, 5)), ann(2, bbox=(1, 1, 5, 0)), ann(3)])
    dataset = CocoDataset(file, tmp_path)
    assert dataset.skipped_boxes == 2 and dataset[0][1]["boxes"].tolist() == [[2, 2, 12, 12]]


def good_file():
    polygon, box = square(2, 2, 5)
    return {
        "images": [{"id": 1, "file_name": "1.png", "height": H, "width": W}],
        "annotations": [ann(1, polygon, box), ann(2, {"size": [H, W], "counts": [H * W]}, box)],
        "categories": [{"id": 1, "name": "thing"}],
    }


def edit(change):
    data = good_file()
    change(data)
    return data


BAD_FILES = {  # name: (the file, what the error must say)
    "a list": ([], r"is not a COCO file: expected a JSON object, got list"),
    "no images": ({"annotations": [], "categories": []}, r"needs a list 'images', got nothing"),
    "annotations not a list": (edit(lambda d: d.update(annotations={})), r"needs a list 'annotations', got dict"),
    "image without size": (edit(lambda d: d["images"][0].pop("height")), r"images\[0\] is missing \['height'\]"),
    "image without file": (edit(lambda d: d["images"][0].pop("file_name")), r"images\[0\] is missing \['file_name'\]"),
    "negative width": (edit(lambda d: d["images"][0].update(width=-3)), r"image 1 has the width -3, expected an int"),
    "duplicate image": (
        edit(lambda d: d["images"].append(dict(d["images"][0], file_name="2.png"))),
        r"image id 1 appears twice: images\[0\] and \[1\]",
    ),
    "duplicate category": (
        edit(lambda d: d["categories"].append({"id": 1, "name": "again"})),
        r"category id 1 appears twice",
    ),
    "text image id": (
        edit(lambda d: d["images"][0].update(id="1")),
        r"images\[0\] has the id '1', expected an integer",
    ),
    "category without id": (
        edit(lambda d: d["categories"].append({"name": "nameless"})),
        r"categories\[1\] needs an integer 'id', got \{'name': 'nameless'\}",
    ),
    "annotation not an object": (
        edit(lambda d: d["annotations"].append(7)),
        r"annotation #2 must be an object, got int",
    ),
    "no image_id": (edit(lambda d: d["annotations"][1].pop("image_id")), r"annotation 2 is missing \['image_id'\]"),
    "no category_id": (
        edit(lambda d: d["annotations"][1].pop("category_id")),
        r"annotation 2 is missing \['category_id'\]",
    ),
    "no bbox": (edit(lambda d: d["annotations"][0].pop("bbox")), r"annotation 1 is missing \['bbox'\]"),
    "unknown image": (
        edit(lambda d: d["annotations"][1].update(image_id=4)),
        r"annotation 2 refers to the unknown image id 4",
    ),
    "unknown category": (
        edit(lambda d: d["annotations"][1].update(category_id=9)),
        r"annotation 2 has the unknown category id 9",
    ),
    "bbox of 3": (
        edit(lambda d: d["annotations"][0].update(bbox=[1, 2, 3])),
        r"annotation 1: bbox must be 4 finite numbers \[x, y, width, height\], got \[1, 2, 3\]",
    ),
    "bbox of text": (
        edit(lambda d: d["annotations"][0].update(bbox=[1, 2, "3", 4])),
        r"annotation 1: bbox must be 4 finite numbers",
    ),
    "negative bbox": (
        edit(lambda d: d["annotations"][1].update(bbox=[1, 2, 3, -4])),
        r"annotation 2: bbox \[1, 2, 3, -4\] has a negative width or height",
    ),
    "iscrowd 2": (
        edit(lambda d: d["annotations"][1].update(iscrowd=2)),
        r"annotation 2: iscrowd must be 0 or 1, got 2",
    ),
    "polygon of 2 points": (
        edit(lambda d: d["annotations"][0].update(segmentation=[[1, 1, 5, 5]])),
        r"annotation 1: a polygon needs at least 3 \(x, y\) points, got 4 numbers",
    ),
    "odd polygon": (
        edit(lambda d: d["annotations"][0].update(segmentation=[[1, 1, 5, 5, 1, 5, 9]])),
        r"annotation 1: a polygon needs at least 3 \(x, y\) points, got 7 numbers",
    ),
    "flat polygon": (
        edit(lambda d: d["annotations"][0].update(segmentation=[1, 1, 5, 5, 1, 5])),
        r"annotation 1: a polygon must be a list of numbers",
    ),
    "segmentation of text": (
        edit(lambda d: d["annotations"][0].update(segmentation="mask.png")),
        r"annotation 1: segmentation must be a list of polygons or an RLE dict, got str",
    ),
    "RLE of another size": (
        edit(lambda d: d["annotations"][1].update(segmentation={"size": [W, H], "counts": [H * W]})),
        r"annotation 2: RLE of size 40 x 30 for an image of 30 x 40",
    ),
    "RLE runs short": (
        edit(lambda d: d["annotations"][1].update(segmentation={"size": [H, W], "counts": [5, 6]})),
        r"annotation 2: RLE runs sum to 11, not height \* width = 1200",
    ),
    "negative RLE run": (
        edit(lambda d: d["annotations"][1].update(segmentation={"size": [H, W], "counts": [H * W + 1, -1]})),
        r"annotation 2: RLE runs must not be negative, got -1",
    ),
    "RLE counts of floats": (
        edit(lambda d: d["annotations"][1].update(segmentation={"size": [H, W], "counts": [H * W / 2, H * W / 2]})),
        r"annotation 2: an RLE's counts must be a string or a list of integers, got \[600.0, 600.0\]",
    ),
    "RLE size not a pair": (
        edit(lambda d: d["annotations"][1].update(segmentation={"size": H, "counts": [H * W]})),
        r"annotation 2: an RLE's size must be \[height, width\], got 30",
    ),
    "compressed RLE short": (
        edit(
            lambda d: d["annotations"][1].update(segmentation=encode_rle(np.ones((H, W - 1), bool)) | {"size": [H, W]})
        ),
        r"annotation 2: RLE runs sum to 1170, not height \* width = 1200",
    ),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_files_fail_at_construction_naming_file_and_item(tmp_path, name):
    data, message = BAD_FILES[name]
    write_coco(tmp_path, [], good_file()["images"])  # the image, so only the JSON can be at fault
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"CocoDataset: .*bad.json.*" + message):
        CocoDataset(tmp_path / "bad.json", tmp_path)


def test_good_file_is_good(tmp_path):  # so that each bad file above fails for its one change
    write_coco(tmp_path, [], good_file()["images"])
    (tmp_path / "good.json").write_text(json.dumps(good_file()))
    dataset = CocoDataset(tmp_path / "good.json", tmp_path)
    assert dataset.masks and len(dataset[0][1]["boxes"]) == 2


def test_masks_must_be_none_true_or_false(tmp_path):
    write_coco(tmp_path, [], good_file()["images"])
    (tmp_path / "good.json").write_text(json.dumps(good_file()))
    with pytest.raises(ValueError, match=r"CocoDataset: masks must be None, True or False, got 'yes'"):
        CocoDataset(tmp_path / "good.json", tmp_path, masks="yes")


def test_not_json_and_missing_file(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"CocoDataset: .*broken.json is not valid JSON"):
        CocoDataset(tmp_path / "broken.json", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"annotation file .*nothing.json does not exist"):
        CocoDataset(tmp_path / "nothing.json", tmp_path)


def check_encode_rle(mask: np.ndarray) -> None:
    mask_utils = importlib.import_module("pycocotools.mask")
    rle = encode_rle(mask)
    assert rle["size"] == list(mask.shape) and isinstance(rle["counts"], str)
    assert rle["counts"] == mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()
    decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    assert np.array_equal(decoded, mask)


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (1, 9), (9, 1), (64, 48)])
@pytest.mark.parametrize("fill", ["empty", "full", "one pixel"])
def test_encode_rle_edge_cases_match_pycocotools(shape, fill):
    mask = np.full(shape, fill == "full")
    if fill == "one pixel":
        mask[-1, 0] = True
    check_encode_rle(mask)


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 40), w=st.integers(1, 40), density=st.floats(0, 1), seed=st.integers(0, 2**16))
def test_encode_rle_matches_pycocotools(h, w, density, seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((h, w)) < density
    if seed % 2:  # blobs too: long runs, whose differences need several characters
        mask = np.zeros((h, w), bool)
        mask[rng.integers(h) :, : rng.integers(w) + 1] = True
    check_encode_rle(mask)


def test_encode_rle_bad_input():
    with pytest.raises(ValueError, match=r"encode_rle: mask must be an \(H, W\) array, got shape \(2, 2, 2\)"):
        encode_rle(np.zeros((2, 2, 2), bool))
    with pytest.raises(ValueError, match=r"encode_rle: mask must be a bool array \(e.g. probs > 0.5\), got float32"):
        encode_rle(np.zeros((2, 2), np.float32))
