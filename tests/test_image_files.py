"""Image files as users bring them: broken, too large, and phone photos with an EXIF orientation.

open_image is the one door every Pillow read goes through (minimtl.data.images): its errors name the
file; CocoDataset.check_image_files reads every header before a run; a file found broken mid-run is
one line on the command line; photos are turned upright exactly when the annotation file's sizes
say the annotation tool saw them upright."""

import json

import numpy as np
import pytest
import torch
from coco_files import write_coco
from PIL import Image

from minimtl.cli import image_error
from minimtl.data import CocoDataset, read_image
from minimtl.data.convert import tile_coco, voc_to_coco, write_coco_json, yolo_to_coco
from minimtl.data.convert.common import image_size
from minimtl.data.convert.labelmap import read_label_image
from minimtl.data.images import ImageFileError, exif_orientation, open_image, turns_size

# A 2 x 3 image whose pixels are all different, so that any turn or flip shows.
PIXELS = (np.arange(6, dtype=np.uint8).reshape(2, 3) * 40)[..., None].repeat(3, axis=2)  # (H, W, 3)


def save_with_orientation(path, orientation: int, pixels=PIXELS):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif.tobytes())
    return path


def truncate(path, keep: int = 60):
    path.write_bytes(path.read_bytes()[:keep])
    return path


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_read_image_turns_upright_only_when_asked(tmp_path, suffix):
    # Orientation -> where the stored top-left pixel goes once upright, checked against Pillow's own
    # exif_transpose (another implementation of the EXIF table).
    from PIL import ImageOps

    for orientation in range(1, 9):
        path = save_with_orientation(tmp_path / f"o{orientation}{suffix}", orientation)
        with open_image(path, decode=False) as im:
            assert exif_orientation(im) == orientation
        stored, upright = read_image(path), read_image(path, orient=True)
        assert stored.shape == (3, 2, 3)
        assert upright.shape == ((3, 3, 2) if turns_size(orientation) else (3, 2, 3))
        with Image.open(path) as im:
            expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"), dtype=np.float32) / 255
        torch.testing.assert_close(upright, torch.from_numpy(expected.transpose(2, 0, 1).copy()))
    assert [turns_size(o) for o in range(1, 9)] == [False] * 4 + [True] * 4


def test_broken_files_are_image_file_errors_naming_the_file(tmp_path):
    (tmp_path / "text.png").write_text("not an image")
    noise = np.random.default_rng(0).integers(0, 255, (50, 40), dtype=np.uint8)  # grey: a label image too
    Image.fromarray(noise).save(tmp_path / "cut.png")
    truncate(tmp_path / "cut.png", keep=200)
    for reader in (read_image, read_label_image):
        with pytest.raises(ImageFileError, match=r"text.png is not an image file Pillow can read"):
            reader(tmp_path / "text.png")
        with pytest.raises(ImageFileError, match=r"cut.png could not be read"):
            reader(tmp_path / "cut.png")
    with pytest.raises(FileNotFoundError, match=r"nothing.png does not exist"):
        image_size(tmp_path / "nothing.png")
    assert image_size(tmp_path / "cut.png") == (40, 50)  # the header is whole: the size is known
    assert issubclass(ImageFileError, ValueError)  # what the API's callers caught before


def test_pillow_pixel_limit_is_one_error_and_converters_lift_it(tmp_path, monkeypatch):
    # Pillow refuses images over twice MAX_IMAGE_PIXELS ("decompression bombs"); a limit of 100 pixels
    # stands in for the real 89.5 million, so that a 30 x 20 image is over it.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(path)
    with pytest.raises(
        ImageFileError, match=r"big.png is 30 x 20 = 600 pixels, .* \(200: twice .* cut it into tiles first"
    ):
        read_image(path)
    assert Image.MAX_IMAGE_PIXELS == 100  # restored after the error
    # The converters read files the user asked to cut: any size.
    assert image_size(path) == (30, 20)
    coco = {"images": [{"id": 1, "file_name": "big.png", "height": 20, "width": 30}], "annotations": [],
            "categories": [{"id": 1, "name": "thing"}]}  # fmt: skip
    tiles = tile_coco(coco, tmp_path, tmp_path / "tiles", 10)
    assert len(tiles["images"]) == 6
    assert Image.MAX_IMAGE_PIXELS == 100
    label = tmp_path / "label.png"
    Image.fromarray(np.ones((20, 30), np.uint8)).save(label)
    assert read_label_image(label).shape == (20, 30)
    assert Image.MAX_IMAGE_PIXELS == 100


def coco_of(root, entries):
    """A COCO file over (file_name, width, height) entries, one 1 x 1 box each."""
    images = [{"id": i + 1, "file_name": f, "width": w, "height": h} for i, (f, w, h) in enumerate(entries)]
    anns = [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [0, 0, 1, 1], "iscrowd": 0}
            for i in range(len(entries))]  # fmt: skip
    path = root / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]}))
    return path


def test_photos_are_turned_upright_when_the_file_says_the_turned_size(tmp_path):
    save_with_orientation(tmp_path / "side.jpg", 6)  # stored 3 x 2 (W x H), upright 2 x 3
    save_with_orientation(tmp_path / "raw.jpg", 6)
    save_with_orientation(tmp_path / "half.jpg", 3)  # a half turn: same size either way
    save_with_orientation(tmp_path / "plain.png", 1)
    save_with_orientation(tmp_path / "square.jpg", 8, PIXELS[:, :2])  # 2 x 2: either way the same size
    entries = [("side.jpg", 2, 3), ("raw.jpg", 3, 2), ("half.jpg", 3, 2), ("plain.png", 3, 2), ("square.jpg", 2, 2)]
    dataset = CocoDataset(coco_of(tmp_path, entries), tmp_path, masks=False)
    dataset.check_image_files()
    assert dataset.turned == {1: True, 2: False, 3: False, 4: False, 5: False}
    assert dataset.orientations_kept == {3: 3, 5: 8}  # the tags the sizes cannot decide (raw.jpg's can)
    shapes = [tuple(dataset[i][0].shape) for i in range(5)]
    assert shapes == [(3, 3, 2), (3, 2, 3), (3, 2, 3), (3, 2, 3), (3, 2, 2)]
    torch.testing.assert_close(dataset[4][0], read_image(tmp_path / "square.jpg"))  # as stored
    torch.testing.assert_close(dataset[0][0], read_image(tmp_path / "side.jpg", orient=True))
    torch.testing.assert_close(dataset[1][0], read_image(tmp_path / "raw.jpg"))
    # Without check_image_files (a user's own loop), each item decides from its header the same way.
    fresh = CocoDataset(coco_of(tmp_path, entries), tmp_path, masks=False)
    torch.testing.assert_close(fresh[0][0], dataset[0][0])

    from minimtl.app.run import orientation_notes

    notes = orientation_notes(dataset, None)
    assert len(notes) == 2 and "1 images of" in notes[0] and "turned upright" in notes[0]
    assert "2 images" in notes[1] and "orientation 3, 8" in notes[1] and "used as stored" in notes[1]


def test_check_image_files_reads_every_header(tmp_path):
    Image.fromarray(PIXELS).save(tmp_path / "a.png")
    save_with_orientation(tmp_path / "b.jpg", 8)
    (tmp_path / "c.png").write_text("not an image")
    file = coco_of(tmp_path, [("a.png", 3, 2), ("b.jpg", 5, 5)])
    with pytest.raises(ValueError, match=r"image id 2: .*b.jpg is 3 x 2 .* says 5 x 5 .*EXIF orientation 8 turns it"):
        CocoDataset(file, tmp_path, masks=False).check_image_files()
    file = coco_of(tmp_path, [("a.png", 2, 3), ("c.png", 3, 2), ("a.png", 4, 4)])
    with pytest.raises(ValueError, match=r"image id 1: .*a.png is 3 x 2 .*says 2 x 3; 2 more such images$"):
        CocoDataset(file, tmp_path, masks=False).check_image_files()
    file = coco_of(tmp_path, [("c.png", 3, 2)])
    with pytest.raises(ImageFileError, match=r"image id 1: .*c.png is not an image file"):
        CocoDataset(file, tmp_path, masks=False).check_image_files()


def test_a_worker_wrapped_image_error_is_still_one_line():
    # DataLoader workers re-raise an error with the worker's traceback in its message.
    wrapped = ImageFileError(
        "Caught ImageFileError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\nminimtl.data.images.ImageFileError: CocoDataset: image id 3: read_image: '
        "a.png could not be read: image file is truncated\n"
    )
    assert image_error(wrapped) == "image id 3: read_image: a.png could not be read: image file is truncated"
    assert image_error(ImageFileError("CocoDataset: image id 4: x")) == "image id 4: x"


def test_train_stops_in_one_line_on_an_image_broken_after_its_header(tmp_path):
    from test_cli_coco import CPU, TINY, user_error

    train = write_coco(tmp_path, 4, seed=3, name="train.json")
    first = json.loads(train.read_text())["images"][1]["file_name"]
    truncate(tmp_path / first, keep=200)  # the header survives, the pixels do not
    message = user_error("train", "--coco-annotations", train, "--coco-images", tmp_path, "--steps", 2,
                         "--set", "train.batch_size=4", "--out", tmp_path / "run", *TINY, *CPU)  # fmt: skip
    assert first in message and "could not be read" in message and "training stopped" in message
    assert "run the same command again" in message


def test_predict_turns_photos_upright(tmp_path):
    from test_cli_coco import CPU, TINY, minimtl

    train = write_coco(tmp_path, 2, seed=4, name="train.json")
    minimtl("train", "--coco-annotations", train, "--coco-images", tmp_path, "--steps", 1, "--set",
            "train.progress=false", "--out", tmp_path / "run", *TINY, *CPU)  # fmt: skip
    photo = np.zeros((40, 64, 3), np.uint8)
    save_with_orientation(tmp_path / "photo.jpg", 6, photo)  # stored 64 x 40, upright 40 x 64
    minimtl("predict", "--checkpoint", tmp_path / "run" / "last.pt", "--images", tmp_path / "photo.jpg",
            "--out", tmp_path / "preds", *CPU)  # fmt: skip
    (image,) = json.loads((tmp_path / "preds" / "images.json").read_text())["images"]
    assert (image["width"], image["height"]) == (40, 64)


def test_converters_take_the_upright_size_of_photos_annotated_upright(tmp_path):
    # A portrait photo stored on its side (orientation 6), annotated upright: a bright box at
    # x 10..30, y 0..32 of the upright 40 x 64 image.
    upright = np.zeros((64, 40, 3), np.uint8)
    upright[0:32, 10:30] = 255
    (tmp_path / "images").mkdir()
    save_with_orientation(tmp_path / "images" / "photo.jpg", 6, np.ascontiguousarray(np.rot90(upright)))
    (tmp_path / "yolo").mkdir()
    (tmp_path / "yolo" / "photo.txt").write_text("0 0.5 0.25 0.5 0.5\n")  # fractions of the upright photo
    (tmp_path / "voc").mkdir()
    (tmp_path / "voc" / "photo.xml").write_text(
        "<annotation><filename>photo.jpg</filename><size><width>40</width><height>64</height></size>"
        "<object><name>a</name><bndbox><xmin>11</xmin><ymin>1</ymin><xmax>30</xmax><ymax>32</ymax></bndbox>"
        "</object></annotation>"
    )
    for name, coco in (("yolo", yolo_to_coco(tmp_path / "yolo", tmp_path / "images", classes="a")),
                       ("voc", voc_to_coco(tmp_path / "voc", tmp_path / "images"))):  # fmt: skip
        (image,) = coco["images"]
        assert (image["width"], image["height"]) == (40, 64), name
        assert coco["annotations"][0]["bbox"] == [10, 0, 20, 32], name
        write_coco_json(coco, tmp_path / f"{name}.json")
        dataset = CocoDataset(tmp_path / f"{name}.json", tmp_path / "images", masks=False)
        dataset.check_image_files()
        picture, target = dataset[0]
        assert picture.shape == (3, 64, 40) and dataset.turned == {image["id"]: True}
        x1, y1, x2, y2 = target["boxes"][0].int().tolist()
        assert picture[:, y1:y2, x1:x2].mean() > 0.9 and picture[:, 40:, :].mean() < 0.1  # JPEG: nearly
    tiles = tile_coco(coco, tmp_path / "images", tmp_path / "tiles", 32)
    corners = [(0, 0), (8, 0), (0, 32), (8, 32)]
    assert [(t["width"], t["height"], tuple(t["tile"])) for t in tiles["images"]] == [(32, 32, c) for c in corners]
    first = np.asarray(Image.open(tmp_path / "tiles" / tiles["images"][0]["file_name"]).convert("RGB"))
    assert first[:, 10:30].mean() > 230 and first[:, :8].mean() < 25  # the upright picture, cut
