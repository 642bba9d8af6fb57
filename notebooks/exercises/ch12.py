"""Checks for the exercises of chapter 12, your own images (notebooks/12_real_data.ipynb, 12.10).

`exercise_K(answer)` returns quietly when the answer to exercise K is right, and raises an
AssertionError that says what is wrong otherwise. Each check works the answer out with minimtl's own
code on the exercise's own small example: `voc_to_coco`, `yolo_to_coco` and `labelmap_to_coco` on files
written into a temporary folder, `tile_coco` on a blank image 500 pixels wide, `box_iou` on centred
squares, and `AnchorGenerator` with one and two anchor sizes per level on the feature maps the model
gives a 192 x 192 image. None touches the network or torch's global random state.
Worked solutions: notebooks/solutions/ch12.py.
"""

import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from exercises.common import call as _call
from exercises.common import close_elementwise as _close
from exercises.common import keeps_global_rng as _keeps_global_rng
from exercises.common import number as _number
from minimtl.app import presets
from minimtl.app.config import resolve
from minimtl.data.convert import labelmap_to_coco, tile_coco, voc_to_coco, yolo_to_coco
from minimtl.data.stats import feature_shapes
from minimtl.modeling.anchors import AnchorGenerator
from minimtl.ops import box_iou

COCO_FIELDS = ("x", "y", "w", "h")

# --- helpers: every failure is an AssertionError that names the exercise ---------------------------


def _values(k: int, what: str, answer, n: int) -> list[float]:
    """n numbers: a list, a tuple, a numpy array or a tensor of n entries."""
    if isinstance(answer, (Tensor, np.ndarray)):
        answer = answer.tolist()
    if not isinstance(answer, (list, tuple)) or len(answer) != n:
        raise AssertionError(f"exercise {k}: answer with {what}, a list of {n} numbers, got {answer!r}")
    return [_number(k, f"entry {i} of {what}", v) for i, v in enumerate(answer)]


def _whole(k: int, what: str, value) -> int:
    number = _number(k, what, value)
    if not number.is_integer():
        raise AssertionError(f"exercise {k}: {what} should be a whole number, got {value!r}")
    return int(number)


def _box_hint(k: int, got: list[float], expected: list, hints: dict[str, str]) -> None:
    """Compare a COCO box [x, y, w, h] entry by entry; name the wrong entries, with the hint for each kind."""
    wrong = [name for name, a, b in zip(COCO_FIELDS, got, expected, strict=True) if not abs(a - b) <= 1e-6]
    if wrong:
        kinds = dict.fromkeys("xy" if name in "xy" else "wh" for name in wrong)
        raise AssertionError(
            f"exercise {k}: {', '.join(wrong)} {'is' if len(wrong) == 1 else 'are'} not right (got "
            f"{dict(zip(COCO_FIELDS, got, strict=True))}). " + " ".join(hints[kind] for kind in kinds)
        )


# --- the exercises -----------------------------------------------------------------------------------

VOC_OBJECT = {"xmin": 5, "ymin": 8, "xmax": 17, "ymax": 9}


@_keeps_global_rng
def exercise_1(answer) -> None:
    """answer: the COCO box [x, y, w, h] of the VOC object xmin=5, ymin=8, xmax=17, ymax=9."""
    got = _values(1, "the COCO box [x, y, w, h]", answer, 4)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        Image.new("RGB", (40, 32)).save(folder / "photo.png")
        box = "".join(f"<{key}>{value}</{key}>" for key, value in VOC_OBJECT.items())
        (folder / "photo.xml").write_text(
            "<annotation><filename>photo.png</filename><size><width>40</width><height>32</height><depth>3</depth>"
            f"</size><object><name>thing</name><difficult>0</difficult><bndbox>{box}</bndbox></object></annotation>"
        )
        (annotation,) = voc_to_coco(folder / "photo.xml", folder)["annotations"]
    _box_hint(1, got, annotation["bbox"], {
        "xy": "x and y: VOC numbers pixels from 1, COCO (and minimtl) from 0, and a pixel c covers [c, c + 1): "
              "where does the column VOC calls xmin begin?",
        "wh": "w and h: VOC's box includes both ends, xmin and xmax: how many columns lie from xmin to xmax?",
    })  # fmt: skip


@_keeps_global_rng
def exercise_2(answer) -> None:
    """answer: the COCO box [x, y, w, h] of the YOLO line `0 0.5 0.25 0.2 0.1` on a 200 x 100 image."""
    got = _values(2, "the COCO box [x, y, w, h]", answer, 4)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        Image.new("RGB", (200, 100)).save(folder / "photo.png")  # 200 wide, 100 high
        (folder / "photo.txt").write_text("0 0.5 0.25 0.2 0.1\n")
        (annotation,) = yolo_to_coco(folder / "photo.txt", folder, classes=["thing"])["annotations"]
    _box_hint(2, got, annotation["bbox"], {
        "xy": "x and y: COCO's box starts at its top-left corner, while a YOLO line gives the box's centre.",
        "wh": "w and h: YOLO's values are fractions of the image: those along x of its width, those along y of "
              "its height.",
    })  # fmt: skip


def _label_images() -> list[tuple[str, np.ndarray]]:
    """Label images the learner's function has never seen: hand cases, then seeded random ones. (H, W) int64"""
    corner = np.zeros((6, 9), np.int64)  # not square: x (columns) and y (rows) cannot be confused
    corner[1:3, 1:3] = 3
    corner[2:6, 7:9] = 17  # touches the bottom and right edges
    corner[4, 4] = 5  # a single pixel
    pieces = np.zeros((7, 10), np.int64)
    pieces[0, 0] = pieces[6, 9] = 2  # one object in two pieces: its box spans both
    pieces[3, 2:5] = 300  # a value over 255 (a 16-bit label image)
    whole = np.full((4, 5), 9, np.int64)  # one object over the whole image
    cases = [("corner", corner), ("pieces", pieces), ("empty", np.zeros((5, 7), np.int64)), ("whole", whole)]
    rng = np.random.default_rng(12)
    for i in range(4):
        height, width = rng.integers(6, 40, size=2).tolist()
        label = np.zeros((height, width), np.int64)
        for value in rng.choice(np.arange(1, 1000), size=rng.integers(1, 8), replace=False).tolist():
            x1, y1 = rng.integers(0, width), rng.integers(0, height)
            x2, y2 = rng.integers(x1 + 1, width + 1), rng.integers(y1 + 1, height + 1)
            label[y1:y2, x1:x2] = value  # later rectangles cover earlier ones, some cut in pieces
        cases.append((f"random {i}", label))
    speckle = (rng.random((11, 13)) < 0.3) * rng.integers(1, 5, size=(11, 13))  # values in scattered pixels
    return cases + [("speckle", speckle.astype(np.int64))]


def _coco_boxes(labels: list[tuple[str, np.ndarray]]) -> list[Tensor]:
    """Each label image's boxes (x1, y1, x2, y2) as labelmap_to_coco gives them, in increasing order of value
    (its instances come from np.unique: sorted). (K, 4) float64 each"""
    boxes = []
    with tempfile.TemporaryDirectory() as folder:
        images, label_dir = Path(folder, "images"), Path(folder, "labels")
        images.mkdir()
        label_dir.mkdir()
        for i, (_, label) in enumerate(labels):
            Image.new("L", (label.shape[1], label.shape[0])).save(images / f"case{i}.png")
            Image.fromarray(label.astype(np.uint16)).save(label_dir / f"case{i}.png")  # 16-bit PNG
            coco = labelmap_to_coco(label_dir / f"case{i}.png", images)
            xywh = torch.tensor([a["bbox"] for a in coco["annotations"]], dtype=torch.float64).reshape(-1, 4)
            boxes.append(torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1))
    return boxes


@_keeps_global_rng
def exercise_3(label_boxes) -> None:
    """label_boxes(label (H, W) integer numpy array, 0 the background) -> (K, 4) float tensor of the tight
    boxes (x1, y1, x2, y2) of the nonzero values, in increasing order of value, x2 one past the last column."""
    if not callable(label_boxes):
        raise AssertionError(f"exercise 3: pass your function label_boxes itself, got {type(label_boxes).__name__}")
    labels = _label_images()
    for (name, label), expected in zip(labels, _coco_boxes(labels), strict=True):
        values = [v for v in np.unique(label).tolist() if v]
        what = f"the boxes of the label image {name!r} ({label.shape[0]} x {label.shape[1]}, values {values})"
        try:
            got = _call(3, label_boxes, label.copy())
        except AssertionError as error:
            raise AssertionError(
                f"{error} (on {what}: an (H, W) int64 numpy array, as labelmap_to_coco reads it)"
            ) from error
        if not isinstance(got, Tensor):
            raise AssertionError(f"exercise 3: label_boxes should return a tensor, got {type(got).__name__}")
        if not got.is_floating_point():
            raise AssertionError(f"exercise 3: label_boxes should return a float tensor, got {got.dtype}")
        if got.shape != expected.shape:
            raise AssertionError(
                f"exercise 3: {what} should be a ({len(expected)}, 4) tensor, one row per nonzero value (a value "
                f"in pieces is still one object; an image without objects gives (0, 4)), got {tuple(got.shape)}"
            )
        got = got.detach().double()
        one_less = expected - torch.tensor([0.0, 0, 1, 1], dtype=torch.float64)
        if len(expected) and torch.allclose(got, one_less):
            raise AssertionError(
                f"exercise 3: {what}: x2 and y2 are one short. A box over columns 3..5 starts at 3 and is 3 wide: "
                "its x2 is one past the last column, as in COCO"
            )
        if len(expected) and not torch.allclose(got, expected) and torch.allclose(got, expected[:, [1, 0, 3, 2]]):
            raise AssertionError(
                f"exercise 3: {what}: x and y are swapped. An (H, W) image is indexed [row, column]: rows are y, "
                "columns x"
            )
        in_order = sorted(map(tuple, expected.tolist()))
        if not torch.allclose(got, expected) and sorted(map(tuple, got.tolist())) == in_order:
            raise AssertionError(f"exercise 3: {what}: the right boxes, in the wrong order: by increasing value")
        _close(3, what, got, expected, atol=1e-6)


@_keeps_global_rng
def exercise_4(answer) -> None:
    """answer: where the tiles of 128 with an overlap of 32 start along x on an image 500 pixels wide."""
    if not isinstance(answer, (list, tuple)):
        raise AssertionError(f"exercise 4: answer with the list of starts, got {type(answer).__name__} {answer!r}")
    got = [_whole(4, f"start {i}", x) for i, x in enumerate(answer)]
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        Image.new("L", (500, 16)).save(folder / "wide.png")  # 16 high: a single row of tiles
        coco = {"images": [{"id": 1, "file_name": "wide.png", "width": 500, "height": 16}], "annotations": [],
                "categories": [{"id": 1, "name": "thing"}]}  # fmt: skip
        tiles = tile_coco(coco, folder, folder / "tiles", 128, overlap=32)
    expected = sorted(image["tile"][0] for image in tiles["images"])
    if got == expected:
        return
    if got and got == expected[: len(got)]:
        raise AssertionError(
            f"exercise 4: the tiles {got} stop at {got[-1] + 128}, short of the image's 500 pixels: what covers the "
            "rest, whole and inside the image?"
        )
    if len(got) > 1 and got[1] - got[0] != 128 - 32:
        raise AssertionError(
            f"exercise 4: {got} is not right: consecutive tiles overlap by 32 pixels, so they step by size - overlap"
        )
    raise AssertionError(
        f"exercise 4: {got} is not right. Every tile is whole (128 wide) and inside the image (it ends at 500 at "
        "the latest); they step by size - overlap from 0, and one more, flush with the edge, covers what is left"
    )


def _lowest_best_iou(sides: tuple[float, ...]) -> tuple[float, float]:
    """Over squares of side w/s in [1, 2] (a fine grid) centred on square anchors of the given sides (in units of
    s): the w/s whose best IoU is lowest, and that IoU. Computed with box_iou."""
    ratios = torch.linspace(1, 2, 20001, dtype=torch.float64)  # steps of 5e-5
    objects = torch.stack([-ratios / 2, -ratios / 2, ratios / 2, ratios / 2], dim=1)  # (N, 4), centred on 0
    half = torch.tensor(sides, dtype=torch.float64)[:, None] / 2
    anchors = torch.cat([-half, -half, half, half], dim=1)  # (A, 4)
    best = box_iou(objects, anchors).amax(dim=1)  # (N,)
    worst = int(best.argmin())
    return float(ratios[worst]), float(best[worst])


@_keeps_global_rng
def exercise_5(answer) -> None:
    """answer: (the w/s in [1, 2] with the lowest best IoU against anchors s and 2s, that IoU, the lowest best IoU
    once an anchor of side sqrt(2) s is added)."""
    what = "(worst w/s, its best IoU with one size per octave, the lowest best IoU with two)"
    if isinstance(answer, (Tensor, np.ndarray)):
        answer = answer.tolist()
    if not isinstance(answer, (list, tuple)) or len(answer) != 3:
        raise AssertionError(f"exercise 5: answer with three numbers, {what}, got {answer!r}")
    names = ("the worst w/s", "its best IoU", "the lowest best IoU with two")
    ratio, iou_one, iou_two = (_number(5, name, v) for name, v in zip(names, answer, strict=True))
    worst, lowest_one = _lowest_best_iou((1.0, 2.0))
    _, lowest_two = _lowest_best_iou((1.0, math.sqrt(2), 2.0))
    areas = "IoU of two centred squares is a ratio of their areas, min(w, a)^2 / max(w, a)^2, not of their sides"
    if not abs(ratio - worst) < 1e-3:
        hint = (
            "1.5 is the middle of [1, 2] on a linear scale, but the anchors grow by a factor. "
            if abs(ratio - 1.5) < 1e-3
            else ""
        )
        raise AssertionError(
            f"exercise 5: at w/s = {ratio:g} the best IoU is not the lowest. {hint}The best IoU is that of the "
            "better anchor; it is lowest where the anchors s and 2s do equally well"
        )
    for got, expected, name in ((iou_one, lowest_one, "with anchors s and 2s"),
                                (iou_two, lowest_two, "with anchors s, sqrt(2) s and 2s")):  # fmt: skip
        if not abs(got - expected) < 1e-3:
            sides = abs(got - math.sqrt(expected)) < 1e-3  # the ratio of the sides, not of the areas
            hint = (
                areas if sides else f"{areas}; the lowest best IoU sits where two neighbouring anchors do equally well"
            )
            raise AssertionError(f"exercise 5: {got:g} is not the lowest best IoU {name}. {hint}")


@_keeps_global_rng
def exercise_6(answer) -> None:
    """answer: (the anchors the RPN lays on a 192 x 192 image with the small preset's anchors, with two
    sizes per level, [[16, 23], [32, 45], [64, 91], [128, 181], [256, 362]])."""
    if isinstance(answer, (Tensor, np.ndarray)):
        answer = answer.tolist()
    if not isinstance(answer, (list, tuple)) or len(answer) != 2:
        raise AssertionError(f"exercise 6: answer with two whole numbers (one size per level, two), got {answer!r}")
    side = 192
    small = resolve(presets.preset("small")).model.config(num_classes=2, min_size=side, max_size=side, masks=True)
    shapes = feature_shapes(side, side)  # P2..P6 of the padded image, as the backbone and FPN give them
    settings = (("one size per level", small.anchor_sizes), ("two sizes per level", TWO_PER_LEVEL))
    for (what, sizes), value in zip(settings, answer, strict=True):
        got = _whole(6, f"the count with {what}", value)
        anchors = AnchorGenerator(sizes, small.aspect_ratios)
        levels = anchors((side, side), shapes)
        expected = sum(len(a) for a in levels)
        if got == expected:
            continue
        cells = sum(h * w for h, w in shapes)
        if got in (cells, cells * len(sizes[0])):
            hint = "each cell holds one anchor per size and aspect ratio"
        elif got == expected - len(levels[-1]):
            hint = "strides 4 to 64 are five levels, P2 to P6"
        else:
            hint = "count each level's cells (the side over the stride, along each axis) and the anchors per cell"
        raise AssertionError(f"exercise 6: {got} is not the number of anchors with {what} on a 192 x 192 image: {hint}")


TWO_PER_LEVEL = ((16, 23), (32, 45), (64, 91), (128, 181), (256, 362))
