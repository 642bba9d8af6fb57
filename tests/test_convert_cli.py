"""`python -m minimtl data convert` as a user types it (called in-process through minimtl.cli.main):
the summary it prints, and the one-line errors, checked before any file is read."""

import json

import numpy as np
import pytest
from PIL import Image

from minimtl.cli import main


def convert(*args) -> int:
    return main(["data", "convert", *map(str, args)])


def user_error(capsys, *args) -> str:
    """A user's mistake: exit status 2 and one line, `minimtl: error: ...`."""
    with pytest.raises(SystemExit) as exit:
        convert(*args)
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("minimtl: error: "), err
    return err


@pytest.fixture
def voc(tmp_path):
    """Two VOC files (one object difficult) and their images."""
    (tmp_path / "xml").mkdir()
    (tmp_path / "jpg").mkdir()
    for stem, objects in (("a", [("dog", 1, 1, 10, 8, 0), ("cat", 5, 5, 20, 16, 1)]), ("b", [("dog", 2, 2, 6, 6, 0)])):
        Image.fromarray(np.zeros((16, 24, 3), np.uint8)).save(tmp_path / "jpg" / f"{stem}.jpg")
        parts = [f"<annotation><filename>{stem}.jpg</filename><size><width>24</width><height>16</height></size>"]
        for name, x1, y1, x2, y2, difficult in objects:
            parts.append(f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin>"
                         f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")  # fmt: skip
        (tmp_path / "xml" / f"{stem}.xml").write_text("".join(parts) + "</annotation>")
    return tmp_path


def test_voc_converts_and_prints_what_it_wrote(voc, capsys):
    out = voc / "coco" / "ann.json"
    assert convert("--from", "voc", "--input", voc / "xml", "--images", voc / "jpg", "--out", out) == 0
    stdout = capsys.readouterr().out
    assert f"Pascal VOC XML files -> {out}: 2 images; 3 objects (cat 1, dog 2), boxes only" in stdout
    assert "VOC's difficult objects (1): written as crowd regions" in stdout
    assert f"--coco-annotations {out} --coco-images {voc / 'jpg'}" in stdout
    coco = json.loads(out.read_text())
    assert [a["iscrowd"] for a in coco["annotations"]] == [0, 1, 0]
    # shell-expanded files, classes fixed, difficult kept, tiled
    files = sorted(str(p) for p in (voc / "xml").glob("*.xml"))
    args = ["--images", voc / "jpg", "--out", out, "--classes", "dog,cat", "--difficult", "keep"]
    assert convert("--from", "voc", "--input", *files, *args, "--tile", 16, "--overlap", 4) == 0
    stdout = capsys.readouterr().out
    assert "2 images with 3 objects, cut into 4 tiles of at most 16 x 16 pixels (overlap 4)" in stdout
    assert "; 0 objects in no tile at all." in stdout
    coco = json.loads(out.read_text())
    assert [c["name"] for c in coco["categories"]] == ["dog", "cat"]
    assert [i["file_name"] for i in coco["images"]] == ["a_0_0.png", "a_8_0.png", "b_0_0.png", "b_8_0.png"]
    assert (out.parent / "images" / "b_8_0.png").is_file()


def test_bad_flags_are_one_line_before_any_work(voc, capsys):
    base = ["--input", voc / "xml", "--images", voc / "jpg", "--out", voc / "ann.json"]
    cases = [
        (["--from", "cvat", *base], "--from cvat: unknown format; choose one of voc, labelmap, yolo, coco"),
        (["--from", "voc", *base, "--overlap", 8], "--overlap needs --tile SIZE"),
        (["--from", "voc", *base, "--min-fraction", 0.3], "--min-fraction needs --tile SIZE"),
        (["--from", "voc", *base, "--tile", 16, "--overlap", 16], "--overlap 16: must be at least 0 and less than"),
        (["--from", "voc", *base, "--tile", 0], "--tile 0: the tile size must be a positive number"),
        (["--from", "voc", *base, "--tile", 16, "--min-fraction", 1.5], "--min-fraction 1.5: must be in (0, 1]"),
        (["--from", "voc", *base, "--classes", "dog,,cat"], "--classes: expected distinct non-empty names"),
        (["--from", "voc", *base, "--classes", "dog,cat,dog"], "--classes: dog given twice"),
        (["--from", "yolo", *base, "--difficult", "keep"], "--difficult is for --from voc, not --from yolo"),
        (["--from", "voc", *base, "--difficult", "ignore"], "--difficult ignore: choose one of crowd, keep, drop"),
        (["--from", "voc", *base, "--label-suffix", "_m"], "--label-suffix is for --from labelmap, not --from voc"),
    ]
    for args, message in cases:
        assert message in user_error(capsys, *args), args
    assert not (voc / "ann.json").exists()
    message = user_error(
        capsys, "--from", "voc", "--input", voc / "nothing", "--images", voc / "jpg", "--out", "x.json"
    )
    assert "input " in message and "nothing: no VOC XML files there" in message
    message = user_error(capsys, "--from", "labelmap", *base)
    assert "no label images there (looked for .png, .tif, .tiff)" in message


def test_bad_files_name_the_file_and_the_object(voc, capsys):
    common = ["--images", voc / "jpg", "--out", voc / "o.json"]
    message = user_error(capsys, "--from", "voc", "--input", voc / "xml", *common, "--classes", "dog")
    assert "a.xml: object 2 ('cat'): the class 'cat' is not in the classes (dog)" in message
    xml = voc / "xml" / "b.xml"
    xml.write_text(xml.read_text().replace("<xmax>6</xmax>", "<xmax>60</xmax>"))
    message = user_error(capsys, "--from", "voc", "--input", voc / "xml", *common)
    assert "b.xml: object 1 ('dog'): xmin 2, xmax 60 must satisfy 0 <= xmin <= xmax <= width (24" in message
    (voc / "txt").mkdir()
    (voc / "txt" / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n0 0.5 0.5 0.1\n")
    message = user_error(capsys, "--from", "yolo", "--input", voc / "txt", *common)
    assert "a.txt line 2: expected 'class x_centre y_centre width height'" in message
    assert not (voc / "o.json").exists()


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # the tiles: over the lowered limit's half
def test_a_coco_file_of_images_too_large_to_train_on_is_tiled(tmp_path, capsys, monkeypatch):
    from coco_files import write_coco

    from minimtl.data import CocoDataset
    from minimtl.data.images import ImageFileError

    # Pillow's guard lowered (it refuses over twice MAX_IMAGE_PIXELS, here 2,000 pixels): the 64 x 64
    # images are "too large" to train on, their 32 x 32 tiles are not.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    source = write_coco(tmp_path / "big", 3, seed=5, name="ann.json")
    tiles = r"data convert --from coco --input .*big/ann.json --images .*big --out .*big/tiled/ann.json --tile 1024\)"
    with pytest.raises(ImageFileError, match=r"is 64 x 64 = 4,096 pixels, .* \(2,000: .*" + tiles + "; 2 more"):
        CocoDataset(source, tmp_path / "big").check_image_files()
    out = tmp_path / "tiled" / "ann.json"
    args = ("--from", "coco", "--input", source, "--images", tmp_path / "big", "--out", out)
    assert convert(*args, "--tile", 32, "--min-fraction", 0.3) == 0
    stdout = capsys.readouterr().out
    assert f"COCO files -> {out}: 3 images with" in stdout and "cut into 12 tiles of at most 32 x 32" in stdout
    tiled = CocoDataset(out, out.parent / "images")
    tiled.check_image_files()
    assert len(tiled) == 12 and tiled.masks
    original = json.loads(source.read_text())
    assert {c["name"] for c in json.loads(out.read_text())["categories"]} == {c["name"] for c in original["categories"]}
    image, target = tiled[0]
    assert image.shape == (3, 32, 32) and len(target["boxes"]) == len(target["masks"])
    # --from coco is for tiling, and takes its classes from the file
    assert "give --tile SIZE" in user_error(capsys, *args)
    assert "names its own categories" in user_error(capsys, *args, "--tile", 32, "--classes", "a,b")


def test_label_images_named_after_their_images_with_a_suffix(tmp_path, capsys):
    (tmp_path / "raw").mkdir()
    (tmp_path / "masks").mkdir()
    for stem in ("cells_1", "cells_2"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "raw" / f"{stem}.png")
        label = np.zeros((8, 8), np.uint16)
        label[1:4, 2:6], label[5:7, 5:8] = 1, 2
        Image.fromarray(label).save(tmp_path / "masks" / f"{stem}_cp_masks.png")
    out = tmp_path / "a.json"
    args = ("--from", "labelmap", "--input", tmp_path / "masks", "--images", tmp_path / "raw", "--out", out)
    assert "(--label-suffix) would take cells_1.png" in user_error(capsys, *args)
    assert convert(*args, "--label-suffix", "_cp_masks", "--classes", "cell") == 0
    assert "label image files -> " in capsys.readouterr().out
    coco = json.loads(out.read_text())
    assert [i["file_name"] for i in coco["images"]] == ["cells_1.png", "cells_2.png"] and len(coco["annotations"]) == 4
