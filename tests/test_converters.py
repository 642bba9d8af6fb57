"""minimtl.data.convert: Pascal VOC, instance label images and YOLO files -> COCO, and tiling, on
small files the tests write. Each result is loaded by minimtl's CocoDataset and by pycocotools'
COCO (the oracle for the file and its masks); a shapes scene written as a label map and as VOC
converts back to its own boxes and masks."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from pycocotools.coco import COCO

from minimtl.data import (
    CocoDataset,
    ShapesDataset,
    convert_to_coco,
    default_train_transforms,
    encode_rle,
    labelmap_to_coco,
    make_loader,
    read_image,
    tile_coco,
    voc_to_coco,
    write_coco_json,
    yolo_to_coco,
)
from minimtl.data.convert.labelmap import instances
from minimtl.data.convert.tiles import tile_starts
from minimtl.data.masks import rle_counts_to_string

SHAPES = list(ShapesDataset.classes[1:])  # circle, square, triangle


def rgb(path, width, height, seed=0):
    """An RGB image of random pixels (PNG, or JPEG by the suffix)."""
    pixels = (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def voc_xml(filename, width, height, objects) -> str:
    """objects: (name, xmin, ymin, xmax, ymax[, difficult]) in VOC's 1-based inclusive pixels."""
    parts = [f"<annotation><filename>{filename}</filename>",
             f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"]  # fmt: skip
    for name, *box in objects:
        difficult = box[4] if len(box) > 4 else 0
        xmin, ymin, xmax, ymax = box[:4]
        parts.append(f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin>"
                     f"<ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")  # fmt: skip
    return "\n".join(parts + ["</annotation>"])


def folders(tmp_path):
    (tmp_path / "ann").mkdir()
    (tmp_path / "images").mkdir()
    return tmp_path / "ann", tmp_path / "images"


def written(coco, path):
    """Write the dict, and read it back with pycocotools (it must accept the file)."""
    write_coco_json(coco, path)
    return COCO(str(path))


# --- Pascal VOC -------------------------------------------------------------------------------------


@pytest.mark.parametrize("difficult", ["crowd", "keep", "drop"])
def test_voc_boxes_are_one_based_and_inclusive_and_difficult_is_a_choice(tmp_path, difficult):
    ann, images = folders(tmp_path)
    rgb(images / "a.jpg", 40, 30)
    rgb(images / "b.png", 20, 10)
    # the first pixel to the 10th column and 5th row: x 0..10, y 0..5 in minimtl's continuous pixels
    (ann / "a.xml").write_text(voc_xml("a.jpg", 40, 30, [("dog", 1, 1, 10, 5), ("cat", 21, 11, 40, 30, 1)]))
    (ann / "b.xml").write_text(voc_xml("b.png", 20, 10, [("cat", 3, 4, 3, 4)]))  # one pixel: column 2, row 3
    coco = voc_to_coco(ann, images, difficult=difficult)
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog"]  # found, sorted
    assert [(i["file_name"], i["width"], i["height"]) for i in coco["images"]] == [("a.jpg", 40, 30), ("b.png", 20, 10)]
    boxes = [(a["bbox"], a["category_id"], a["iscrowd"], a["difficult"]) for a in coco["annotations"]]
    expected = [([0, 0, 10, 5], 2, 0, 0), ([20, 10, 20, 20], 1, int(difficult == "crowd"), 1), ([2, 3, 1, 1], 1, 0, 0)]
    assert boxes == [e for e in expected if not (difficult == "drop" and e[3])]
    oracle = written(coco, tmp_path / "ann.json")
    assert len(oracle.getAnnIds()) == len(boxes)
    train = CocoDataset(tmp_path / "ann.json", images, train=True)
    assert train.masks is False and train.num_crowd == int(difficult == "crowd")
    _, target = train[0]
    assert target["boxes"].tolist() == ([[0, 0, 10, 5]] if difficult != "keep" else [[0, 0, 10, 5], [20, 10, 40, 30]])


def test_voc_finds_the_image_by_filename_then_by_stem_and_checks_its_size(tmp_path):
    ann, images = folders(tmp_path)
    rgb(images / "photo.png", 16, 12)
    rgb(images / "b.jpg", 16, 12)
    (ann / "a.xml").write_text(voc_xml("photo.png", 16, 12, [("x", 1, 1, 2, 2)]))  # by <filename>
    (ann / "b.xml").write_text(voc_xml("renamed.jpg", 0, 0, [("x", 1, 1, 2, 2)]))  # by stem; 0 x 0: not checked
    coco = voc_to_coco(ann, images)
    assert [i["file_name"] for i in coco["images"]] == ["photo.png", "b.jpg"]
    (ann / "b.xml").write_text(voc_xml("b.jpg", 12, 16, []))
    with pytest.raises(ValueError, match=r"b.xml: <size> says 12 x 16 .*b.jpg is 16 x 12"):
        voc_to_coco(ann, images)


BOX = "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>4</xmax><ymax>4</ymax></bndbox>"
GOOD_OBJECT = f"<object><name>dog</name>{BOX}</object>"


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        ("<annotation><object>", r"a.xml: not valid XML at line 1, column \d+"),
        ("<voc></voc>", r"a.xml: the root element is <voc>, a VOC file's is <annotation>"),
        (f"<annotation>{GOOD_OBJECT}<object><bndbox/></object></annotation>", r"a.xml: object 2 has no <name>"),
        ("<annotation><object><name>dog</name></object></annotation>", r"a.xml: object 1 \('dog'\) has no <bndbox>"),
        (
            "<annotation><object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>4</xmax></bndbox></object>"
            "</annotation>",
            r"a.xml: object 1 \('dog'\): <bndbox> has no <ymax>",
        ),
        (voc_xml("a.png", 20, 10, [("dog", "one", 1, 4, 4)]), r"a.xml: object 1 \('dog'\): xmin must be a finite num"),
        (
            voc_xml("a.png", 20, 10, [("dog", 1, 1, 4, 4), ("cat", 5, 1, 4, 4)]),
            r"a.xml: object 2 \('cat'\): xmin 5, xmax 4 must satisfy 0 <= xmin <= xmax <= width \(20",
        ),
        (voc_xml("a.png", 20, 10, [("dog", 1, 1, 4, 11)]), r"object 1 \('dog'\): ymin 1, ymax 11 must satisfy"),
        (voc_xml("a.png", 20, 10, [("dog", 1, 1, 4, 4, 2)]), r"object 1 \('dog'\): <difficult> must be 0 or 1"),
        (voc_xml("gone.png", 20, 10, []), r"a.xml: its image is missing: .*images has no gone.png nor a\.\*"),
    ],
)
def test_voc_bad_input_names_the_file_and_the_object(tmp_path, xml, message):
    ann, images = folders(tmp_path)
    rgb(images / "other.png", 20, 10)
    if "gone.png" not in xml:
        rgb(images / "a.png", 20, 10)
    (ann / "a.xml").write_text(xml)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        voc_to_coco(ann, images)


def test_voc_classes_fix_the_order_and_refuse_other_names(tmp_path):
    ann, images = folders(tmp_path)
    rgb(images / "a.png", 20, 10)
    (ann / "a.xml").write_text(voc_xml("a.png", 20, 10, [("dog", 1, 1, 4, 4), ("cat", 1, 1, 4, 4)]))
    coco = voc_to_coco(ann, images, classes="dog,cat,bird")
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [(1, "dog"), (2, "cat"), (3, "bird")]
    assert [a["category_id"] for a in coco["annotations"]] == [1, 2]
    with pytest.raises(ValueError, match=r"a.xml: object 2 \('cat'\): the class 'cat' is not in the classes \(dog\)"):
        voc_to_coco(ann, images, classes=["dog"])
    with pytest.raises(ValueError, match=r"classes: dog given twice"):
        voc_to_coco(ann, images, classes="dog,cat,dog")
    with pytest.raises(FileNotFoundError, match=r"input .*nothing\*.xml: no VOC XML files there"):
        voc_to_coco(tmp_path / "nothing*.xml", images)


# --- instance label images ---------------------------------------------------------------------------


@given(h=st.integers(1, 24), w=st.integers(1, 24), values=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_instances_give_the_rle_encode_rle_writes_and_tight_boxes(h, w, values, seed):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, values + 1, size=(h, w)) * (rng.random((h, w)) < 0.7)
    found = instances(label)
    assert sorted(found) == sorted(set(np.unique(label).tolist()) - {0})
    for value, (box, runs, area) in found.items():
        mask = label == value
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        assert box == (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1) and area == mask.sum()
        assert rle_counts_to_string(runs) == encode_rle(mask)["counts"]


def test_instances_on_the_first_and_last_pixel():  # RLE's edge cases: a leading 0-run of 0s, no trailing 0s
    label = np.array([[3, 0, 1], [0, 2, 3]])
    found = instances(label)
    assert found[3] == ((0.0, 0.0, 3.0, 2.0), [0, 1, 4, 1], 2) and found[1][1] == [4, 1, 1]


def test_labelmap_16bit_tiff_and_png_with_16bit_and_grey_images(tmp_path):
    ann, images = folders(tmp_path)
    label = np.zeros((12, 20), np.uint16)
    label[1:4, 2:9] = 300  # values above 255: a 16-bit label image
    label[6:12, 15:20] = 65535  # touches the last row and column
    label[0, 19] = 7  # one pixel
    Image.fromarray(label).save(ann / "a.tif")  # 16-bit TIFF
    Image.fromarray(label).save(ann / "b.png")  # 16-bit PNG, mode I;16
    Image.fromarray((np.arange(240).reshape(12, 20) * 250).astype(np.uint16)).save(images / "a.tif")  # 16-bit image
    Image.fromarray(np.arange(240, dtype=np.uint8).reshape(12, 20)).save(images / "b.png")  # single-channel 8-bit
    assert Image.open(ann / "b.png").mode == "I;16" and Image.open(images / "a.tif").mode == "I;16"
    coco = labelmap_to_coco(ann, images, classes=["cell"])  # no class files: one class for all
    assert [c["name"] for c in coco["categories"]] == ["cell"] and len(coco["annotations"]) == 6
    oracle = written(coco, tmp_path / "ann.json")
    dataset = CocoDataset(tmp_path / "ann.json", images)
    assert dataset.masks is True
    for index, expected_image in enumerate([np.arange(240).reshape(12, 20) * 250 / 65535, np.arange(240) / 255]):
        image, target = dataset[index]
        assert image.shape == (3, 12, 20) and image.dtype == torch.float32  # grey repeated to 3 channels, in [0, 1]
        expected_image = torch.tensor(expected_image, dtype=torch.float32).reshape(12, 20)
        torch.testing.assert_close(image, expected_image.expand(3, -1, -1))
        masks = target["masks"].numpy().astype(bool)
        assert [np.array_equal(m, label == v) for m, v in zip(masks, (7, 300, 65535), strict=True)] == [True] * 3
        assert target["boxes"].tolist() == [[19, 0, 20, 1], [2, 1, 9, 4], [15, 6, 20, 12]]
        assert target["area"].tolist() == [1, 21, 30]
        image_id = dataset.image_ids[index]
        pyco = np.stack([oracle.annToMask(a) for a in oracle.loadAnns(oracle.getAnnIds(imgIds=[image_id]))])
        assert np.array_equal(pyco, masks)
    assert torch.equal(read_image(images / "a.tif"), dataset[0][0])


def test_labelmap_classes_from_csv_files(tmp_path):
    ann, images = folders(tmp_path)
    label = np.zeros((8, 10), np.uint8)
    label[0:2, 0:2], label[4:6, 4:9], label[7, 0] = 1, 2, 5
    for stem in ("a", "b"):
        Image.fromarray(label).save(ann / f"{stem}.png")
        rgb(images / f"{stem}.jpg", 10, 8)
    # 9: not in the image, allowed; the byte-order mark Excel writes is not part of the header
    (ann / "a.csv").write_text("\ufefflabel,class\n1,nucleus\n2,cell\n5,cell\n9,cell\n", encoding="utf-8")
    (ann / "b.csv").write_text("# a comment\n5,nucleus\n2,nucleus\n1,cell\n")
    coco = labelmap_to_coco(ann, images)
    assert [c["name"] for c in coco["categories"]] == ["cell", "nucleus"]
    assert [a["category_id"] for a in coco["annotations"]] == [2, 1, 1, 1, 2, 2]  # in order of value per image
    coco = labelmap_to_coco(ann, images, classes="nucleus,cell,other")
    assert [a["category_id"] for a in coco["annotations"]] == [1, 2, 2, 2, 1, 1]
    with pytest.raises(ValueError, match=r"a.csv line 2 \(instance 1 of a.png\): the class 'nucleus' is not in the"):
        labelmap_to_coco(ann, images, classes="cell")
    (ann / "b.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"b.png: no class file .*b.csv beside it, but .*a.csv exists"):
        labelmap_to_coco(ann, images)
    (ann / "a.csv").unlink()
    assert {c["name"] for c in labelmap_to_coco(ann, images)["categories"]} == {"object"}
    with pytest.raises(ValueError, match=r"no class files .* one class, but classes gives 2: a, b"):
        labelmap_to_coco(ann, images, classes="a,b")


@pytest.mark.parametrize(
    ("csv", "message"),
    [
        ("1,cell\n2\n", r"a.csv line 2: expected value,class, got '2'"),
        ("1,cell\n2.5,cell\n", r"a.csv line 2: the value '2.5' is not an integer"),
        ("1,cell\n0,cell\n", r"a.csv line 2: the value 0 is not an instance"),
        ("1,cell\n1,dog\n", r"a.csv line 2: the value 1 is already on line 1"),
        ("1,cell\n", r"a.png: instance 2 has no line in .*a.csv"),
    ],
)
def test_labelmap_bad_class_files_name_the_line(tmp_path, csv, message):
    ann, images = folders(tmp_path)
    Image.fromarray(np.array([[0, 1, 2]], np.uint8)).save(ann / "a.png")
    rgb(images / "a.png", 3, 1)
    (ann / "a.csv").write_text(csv)
    with pytest.raises(ValueError, match=message):
        labelmap_to_coco(ann, images)


def test_labelmap_bad_images(tmp_path):
    ann, images = folders(tmp_path)
    rgb(images / "a.png", 3, 2)
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(ann / "a.png")
    with pytest.raises(ValueError, match=r"a.png: a label image has one channel of integers .* this one is RGB"):
        labelmap_to_coco(ann, images)
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(ann / "a.png")
    with pytest.raises(ValueError, match=r"ann/a.png is 3 x 3 \(width x height\), its image .*a.png is 3 x 2"):
        labelmap_to_coco(ann, images)
    Image.fromarray(np.array([[0, -4]], np.int32)).save(ann / "a.tif")
    with pytest.raises(ValueError, match=r"a.tif: label values must be >= 0"):
        labelmap_to_coco(ann / "a.tif", images)
    with pytest.raises(ValueError, match=r"a.png: the label image is its own image"):
        labelmap_to_coco(images, images)


def test_labelmap_label_suffix_finds_images_named_like_cellpose_writes_them(tmp_path):
    ann, images = folders(tmp_path)
    rgb(images / "a.png", 3, 2)
    rgb(images / "a_1.png", 3, 2, seed=1)
    for stem, value in (("a_cp_masks", 1), ("a_1_cp_masks", 2)):
        Image.fromarray(np.array([[0, value, value], [0, 0, value]], np.uint8)).save(ann / f"{stem}.png")
    with pytest.raises(FileNotFoundError, match=r"a_1_cp_masks.png: its image is missing.*label_suffix '_cp_masks' "
                       r"\(--label-suffix\) would take a_1.png"):  # fmt: skip
        labelmap_to_coco(ann, images)  # the longer stem that begins the label's (a_1, not a)
    coco = labelmap_to_coco(ann, images, label_suffix="_cp_masks")
    assert [i["file_name"] for i in coco["images"]] == ["a_1.png", "a.png"]  # label files in sorted order
    assert [a["bbox"] for a in coco["annotations"]] == [[1, 0, 2, 2], [1, 0, 2, 2]]
    with pytest.raises(ValueError, match=r"a_1_cp_masks.png: its name does not end in the label suffix '_seg' before"):
        labelmap_to_coco(ann, images, label_suffix="_seg")
    with pytest.raises(ValueError, match=r"label_suffix: expected a string"):
        labelmap_to_coco(ann, images, label_suffix=None)


# --- YOLO ----------------------------------------------------------------------------------------------


def test_yolo_boxes_with_classes_txt(tmp_path):
    ann, images = folders(tmp_path)
    rgb(images / "a.png", 40, 20)
    rgb(images / "b.jpg", 10, 10)
    (ann / "classes.txt").write_text("cat\ndog\nbird\n")
    (ann / "a.txt").write_text("1 0.5 0.5 0.5 0.5\n\n0 0.125 0.25 0.25 0.5\n")
    (ann / "b.txt").write_text("")  # an image without objects
    coco = yolo_to_coco(ann, images)
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [(1, "cat"), (2, "dog"), (3, "bird")]
    assert [(a["bbox"], a["category_id"]) for a in coco["annotations"]] == [([10, 5, 20, 10], 2), ([0, 0, 10, 10], 1)]
    assert len(coco["images"]) == 2 and written(coco, tmp_path / "ann.json").getImgIds() == [1, 2]
    (ann / "classes.txt").unlink()
    assert [c["name"] for c in yolo_to_coco(ann, images)["categories"]] == ["0", "1"]  # the indices, 0..max
    assert [c["name"] for c in yolo_to_coco(ann, images, classes="x,y")["categories"]] == ["x", "y"]
    with pytest.raises(ValueError, match=r"a.txt line 1: class 1, but classes names 1 \(0..0\)"):
        yolo_to_coco(ann, images, classes="x")


def test_yolo_polygons_become_coco_polygons(tmp_path):
    ann, images = folders(tmp_path)
    rgb(images / "a.png", 20, 10)
    (ann / "a.txt").write_text("0 0.1 0.2 0.6 0.2 0.6 0.8 0.1 0.8\n2 0.5 0 1 0 1 1.005\n")  # 1.005: clipped to 1
    coco = yolo_to_coco(ann, images, classes="a,b,c")
    first, second = coco["annotations"]
    assert first["segmentation"] == [[2, 2, 12, 2, 12, 8, 2, 8]] and first["bbox"] == [2, 2, 10, 6]
    assert second["segmentation"] == [[10, 0, 20, 0, 20, 10]] and second["category_id"] == 3
    oracle = written(coco, tmp_path / "ann.json")
    _, target = CocoDataset(tmp_path / "ann.json", images)[0]
    expected = np.stack([oracle.annToMask(a) for a in oracle.loadAnns([1, 2])])
    assert np.array_equal(target["masks"].numpy(), expected) and first["area"] == expected[0].sum() == 60


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0 0.5 0.5 0.2\n", r"a.txt line 1: expected 'class x_centre y_centre width height' or a polygon .*got 4"),
        ("0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2 0.9\n", r"a.txt line 2: expected .* got 6 values"),
        ("\n\ncat 0.5 0.5 0.2 0.2\n", r"a.txt line 3: the class must be an index 0, 1, ..., got 'cat'"),
        ("0 0.5 0.5 nan 0.2\n", r"a.txt line 1: a coordinate must be a finite number, got 'nan'"),
        ("0 0.5 0.5 -0.2 0.2\n", r"a.txt line 1: the width and height must not be negative"),
        ("0 0.9 0.5 0.4 0.2\n", r"a.txt line 1: the box reaches 1.1, outside \[0, 1\]"),
        ("0 0.1 0.1 12 0.1 0.5 0.5\n", r"a.txt line 1: the coordinate 12, outside \[0, 1\]"),
        ("0 0.5 0.5 0.2 0.2\n1 0.1 0.1 0.2 0.1 0.2 0.2\n", r"a.txt line 1 is a box but .*a.txt line 2 is a polygon"),
    ],
)
def test_yolo_bad_lines_are_named(tmp_path, text, message):
    ann, images = folders(tmp_path)
    rgb(images / "a.png", 20, 10)
    (ann / "a.txt").write_text(text)
    with pytest.raises(ValueError, match=message):
        yolo_to_coco(ann, images)


def test_yolo_files_that_are_not_text(tmp_path):
    ann, images = folders(tmp_path)
    rgb(images / "a.png", 20, 10)
    (ann / "a.txt").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ValueError, match=r"a.txt is not a text file"):
        yolo_to_coco(ann, images)
    (ann / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (ann / "classes.txt").write_text("cat\ncat\n")
    with pytest.raises(ValueError, match=r"classes.txt: classes: cat given twice"):
        yolo_to_coco(ann, images)


def test_a_missing_or_ambiguous_image_is_named(tmp_path):
    ann, images = folders(tmp_path)
    (ann / "a.txt").write_text("")
    with pytest.raises(FileNotFoundError, match=r"a.txt: its image is missing: .*images has no a\.\*"):
        yolo_to_coco(ann, images)
    rgb(images / "a.png", 4, 4)
    rgb(images / "a.jpg", 4, 4)
    with pytest.raises(ValueError, match=r"a.txt: its image is ambiguous, .*images has a.jpg, a.png"):
        yolo_to_coco(ann, images)


# --- the round trip: a shapes scene as a label map and as VOC, converted back -----------------------------


def test_shapes_scenes_round_trip_through_label_maps_and_voc(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    (tmp_path / "voc").mkdir()
    shapes = ShapesDataset(3, 64, seed=4, max_objects=5)
    for i in range(len(shapes)):
        image, target = shapes[i]
        pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"images/{i}.png")
        masks = target["masks"].numpy().astype(bool)  # the visible parts: disjoint
        label = np.zeros((64, 64), np.uint16)
        for k, mask in enumerate(masks):
            label[mask] = 10 * (k + 1)  # not consecutive, on purpose
        Image.fromarray(label).save(tmp_path / f"labels/{i}.png")
        names = [SHAPES[int(c) - 1] for c in target["labels"]]
        lines = [f"{10 * (k + 1)},{name}" for k, name in enumerate(names)]
        (tmp_path / f"labels/{i}.csv").write_text("\n".join(lines))
        voc = [(name, int(x1) + 1, int(y1) + 1, int(x2), int(y2)) for name, (x1, y1, x2, y2) in
               zip(names, target["boxes"].tolist(), strict=True)]  # fmt: skip
        (tmp_path / f"voc/{i}.xml").write_text(voc_xml(f"{i}.png", 64, 64, voc))
    for source in ("labelmap", "voc"):
        folder = tmp_path / ("labels" if source == "labelmap" else "voc")
        out = tmp_path / f"{source}.json"
        convert_to_coco(source, folder, tmp_path / "images", out, classes=SHAPES)
        dataset = CocoDataset(out, tmp_path / "images")
        assert dataset.masks is (source == "labelmap") and dataset.categories == list(ShapesDataset.classes)
        for i in range(len(shapes)):
            image, target = dataset[i]
            original_image, original = shapes[i]
            torch.testing.assert_close(image, original_image, atol=0.5 / 255, rtol=0)  # 8-bit PNG
            assert torch.equal(target["boxes"], original["boxes"]) and torch.equal(target["labels"], original["labels"])
            if source == "labelmap":
                assert torch.equal(target["masks"], original["masks"]) and torch.equal(target["area"], original["area"])


# --- tiling ------------------------------------------------------------------------------------------------


def test_tile_starts():
    assert tile_starts(1000, 256, 32) == [0, 224, 448, 672, 744]
    assert tile_starts(100, 50, 10) == [0, 40, 50] and tile_starts(100, 50, 0) == [0, 50]
    assert tile_starts(30, 50, 10) == [0] and tile_starts(50, 50, 10) == [0]


def test_tiling_cuts_masks_clips_boxes_and_drops_small_pieces(tmp_path):
    ann, images = folders(tmp_path)
    h, w = 60, 100  # tiles of 50, overlap 10: x at 0, 40, 50 and y at 0, 10
    label = np.zeros((h, w), np.uint8)
    label[5:15, 30:55] = 1  # 25 columns: 20 (80%) in x 0..50, 15 in x 40..90 (60%), 5 in x 50..100 (20%)
    label[50:60, 95:100] = 2  # in the bottom-right corner: wholly inside the tiles at x 50
    Image.fromarray(label).save(ann / "big.png")
    pixels = (np.random.default_rng(0).integers(0, 65536, size=(h, w))).astype(np.uint16)
    Image.fromarray(pixels).save(images / "big.png")  # 16-bit greyscale: the tiles keep it
    coco = labelmap_to_coco(ann, images)
    tiled = tile_coco(coco, images, tmp_path / "out/images", 50, overlap=10, min_fraction=0.5)
    assert [(i["file_name"], i["tile"], i["width"], i["height"]) for i in tiled["images"]] == [
        (f"big_{x}_{y}.png", [x, y], 50, 50) for y in (0, 10) for x in (0, 40, 50)
    ]
    assert tiled["info"]["tiling"] == {"size": 50, "overlap": 10, "min_fraction": 0.5, "source_images": 1,
                                       "source_objects": 2, "tiles": 6, "dropped": 4, "lost": 0}  # fmt: skip
    pieces = {}
    for a in tiled["annotations"]:
        pieces.setdefault(tuple(tiled["images"][a["image_id"] - 1]["tile"]), []).append(a["bbox"])
    assert pieces == {
        (0, 0): [[30, 5, 20, 10]],  # object 1: 200 of its 250 pixels (80%)
        (40, 0): [[0, 5, 15, 10]],  # 150 (60%); dropped: 50 at (50, 0), 100 at (0, 10), 75 at (40, 10), 25 at (50, 10)
        (50, 10): [[45, 40, 5, 10]],  # object 2, whole
    }
    strict = tile_coco(coco, images, tmp_path / "strict", 50, overlap=10, min_fraction=0.9)["info"]["tiling"]
    assert (strict["dropped"], strict["lost"]) == (6, 1)  # object 1 is never 90% inside a tile
    write_coco_json(tiled, tmp_path / "out/ann.json")
    COCO(str(tmp_path / "out/ann.json"))
    dataset = CocoDataset(tmp_path / "out/ann.json", tmp_path / "out/images")
    for index, info in enumerate(tiled["images"]):
        x, y = info["tile"]
        image, target = dataset[index]
        assert Image.open(tmp_path / "out/images" / info["file_name"]).mode == "I;16"
        torch.testing.assert_close(image[0], torch.from_numpy(pixels[y : y + 50, x : x + 50] / 65535).float())
        for mask, box in zip(target["masks"].numpy().astype(bool), target["boxes"].tolist(), strict=True):
            value = label[y : y + 50, x : x + 50][mask][0]
            full = label == value
            assert np.array_equal(mask, full[y : y + 50, x : x + 50])  # the mask, cut
            assert mask.sum() >= 0.5 * full.sum()
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            assert box == [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]


def test_convert_to_coco_tiles_beside_the_output_and_the_result_trains(tmp_path):
    ann, images = folders(tmp_path)
    label = np.zeros((40, 70), np.uint8)
    label[2:12, 3:20], label[25:38, 40:66] = 1, 2
    Image.fromarray(label).save(ann / "slide.png")
    rgb(images / "slide.png", 70, 40)
    out = tmp_path / "out" / "ann.json"
    coco = convert_to_coco("labelmap", ann, images, out, classes="cell", tile=32, overlap=4)
    assert json.loads(out.read_text()) == coco and not (out.parent / "ann.json.tmp").exists()
    assert [i["file_name"] for i in coco["images"]] == [f"slide_{x}_{y}.png" for y in (0, 8) for x in (0, 28, 38)]
    assert all((out.parent / "images" / i["file_name"]).is_file() for i in coco["images"])
    dataset = CocoDataset(out, out.parent / "images", transforms=default_train_transforms(), train=True)
    images_batch, targets = next(iter(make_loader(dataset, batch_size=3, shuffle=True)))
    assert len(images_batch) == 3 and all(i.shape == (3, 32, 32) for i in images_batch)
    assert all(t["masks"].shape[1:] == (32, 32) and t["labels"].eq(1).all() for t in targets)
    with pytest.raises(ValueError, match=r"the tiles would go among the images in .*images: write .* in another"):
        convert_to_coco("labelmap", ann, images, tmp_path / "ann.json", tile=32)
    with pytest.raises(ValueError, match=r"an overlap \(4\) needs a tile size"):
        convert_to_coco("labelmap", ann, images, out, overlap=4)
    with pytest.raises(ValueError, match=r"overlap must be a number of pixels in \[0, tile size 32\), got 32"):
        convert_to_coco("labelmap", ann, images, out, tile=32, overlap=32)
    with pytest.raises(ValueError, match=r"unknown format 'cvat': choose one of voc, labelmap, yolo, coco"):
        convert_to_coco("cvat", ann, images, out)
    with pytest.raises(ValueError, match=r"a COCO file is COCO already: converting one is for cutting its images"):
        convert_to_coco("coco", ann, images, out)
