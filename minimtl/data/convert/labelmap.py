"""Instance label images -> COCO: one per picture, 0 the background, each other value one object.

Label images are what microscopy and segmentation tools write (Cellpose, StarDist, napari): PNG
(8- or 16-bit) or TIFF (8-, 16- or 32-bit integers), one channel. A value's pixels are one object's
mask, written as COCO's compressed RLE, the very string minimtl.data.encode_rle (and pycocotools)
would write; its box is the tight box of those pixels in minimtl's continuous convention (x2 = last
column + 1), as ShapesDataset makes boxes, so a scene written as a label map converts back to the
same boxes and masks. The values need not be consecutive; a value's pixels need not touch (one
object, in pieces).

* Images: the one image in the images folder with the label image's stem, the same width and height;
  with `label_suffix`, the label image's stem less that ending (Cellpose writes a_cp_masks.png for
  a.png: label_suffix="_cp_masks"). A missing image whose stem begins the label's says which
  label_suffix would find it.
* Classes: a CSV file beside a label image, with its stem (labels/a.png -> labels/a.csv), gives each
  instance its class, a line per value:

      label,class          (an optional header: a first line whose first field is not a number)
      1,cell
      2,nucleus

  Either every label image has one, or none has: then every instance has one class, the one name
  of `classes` if given, else "object". A value in the image without a line in the CSV is an error
  naming both; lines for values not in the image are allowed (an instance erased later).
* The instances are found in one sort of the label image, not one pass per value: a microscopy
  image with thousands of cells converts in about the time it takes to sort its pixels.
"""

import csv
from pathlib import Path

import numpy as np

from minimtl.data.convert.common import ImageFolder, Instance, category_names, check_classes, find_files, to_coco
from minimtl.data.images import open_image
from minimtl.data.masks import rle_counts_to_string

LABEL_SUFFIXES = (".png", ".tif", ".tiff")
LABEL_MODES = ("1", "L", "P", "I;16", "I;16L", "I;16B", "I")  # one channel of integers (P: palette indices)


def labelmap_to_coco(input, images, *, classes=None, label_suffix: str = "") -> dict:
    """Label images (a folder, files or glob patterns) and their image folder -> a COCO dict with
    compressed-RLE masks. classes: the category names in order (ids 1..C); label_suffix: what a label
    image's stem adds to its image's; see the module docstring."""
    classes = check_classes(classes)
    if not isinstance(label_suffix, str):
        raise ValueError(f"label_suffix: expected a string like '_masks', got {label_suffix!r}")
    files = find_files(input, LABEL_SUFFIXES, "label images")
    tables = [f.with_suffix(".csv") for f in files]
    having = [t for t in tables if t.is_file()]
    if having and len(having) < len(files):
        lacking = next(f for f, t in zip(files, tables, strict=True) if not t.is_file())
        raise FileNotFoundError(
            f"{lacking}: no class file {lacking.with_suffix('.csv')} beside it, but {having[0]} exists: give every "
            "label image its CSV of value,class lines, or none (then all instances have one class)"
        )
    if not having and classes is not None and len(classes) > 1:
        raise ValueError(
            f"the label images have no class files (a.csv beside a.png), so every instance has one class, "
            f"but classes gives {len(classes)}: {', '.join(classes)}"
        )
    one_class = None if having else (classes[0] if classes else "object")
    folder = ImageFolder(images)
    records = []
    for file, table in zip(files, tables, strict=True):
        image = find_image(folder, file, label_suffix)
        if image.resolve() == file.resolve():
            raise ValueError(f"{file}: the label image is its own image: keep label images in a folder of their own")
        record = folder.record(image, file)
        label = read_label_image(file)  # (H, W)
        if label.shape != (record.height, record.width):
            raise ValueError(
                f"{file} is {label.shape[1]} x {label.shape[0]} (width x height), its image {image} is "
                f"{record.width} x {record.height}"
            )
        class_of = read_class_table(table) if one_class is None else None
        for value, (box, runs, area) in instances(label).items():
            if class_of is None:
                name, where = one_class, f"{file}: instance {value}"
            elif value in class_of:
                name, line = class_of[value]
                where = f"{table} line {line} (instance {value} of {file.name})"
            else:
                raise ValueError(f"{file}: instance {value} has no line in {table}")
            segmentation = {"size": [record.height, record.width], "counts": rle_counts_to_string(runs)}
            record.instances.append(Instance(name, box, where, segmentation=segmentation, area=float(area)))
        records.append(record)
    info = {"description": "converted from instance label images by minimtl", "source": "labelmap",
            "classes_from": "csv" if one_class is None else f"one class: {one_class}"}  # fmt: skip
    return to_coco(records, category_names(records, classes), info)


def find_image(folder: ImageFolder, file: Path, label_suffix: str) -> Path:
    """The image of a label image: its stem less label_suffix, in the images folder."""
    if not file.stem.endswith(label_suffix) or file.stem == label_suffix:
        raise ValueError(f"{file}: its name does not end in the label suffix {label_suffix!r} before {file.suffix}")
    stem = file.stem.removesuffix(label_suffix) if label_suffix else file.stem
    try:
        return folder.find(stem, file)
    except FileNotFoundError as error:
        begins = sorted((s for s in folder.by_stem if stem.startswith(s) and s != stem), key=len)
        if not begins:
            raise
        longest = begins[-1]  # "a_1" rather than "a" for a_1_masks.png
        hint = f"label_suffix {stem[len(longest) :]!r} (--label-suffix) would take {folder.by_stem[longest][0].name}"
        raise FileNotFoundError(f"{error}; {hint}") from None


def read_label_image(path: Path) -> np.ndarray:
    """A label image's values, (H, W) int64 (the first frame of a multi-frame TIFF)."""
    with open_image(path, any_size=True, who="label image") as im:
        if im.mode not in LABEL_MODES:
            raise ValueError(
                f"{path}: a label image has one channel of integers (0 the background, each other value "
                f"an object); this one is {im.mode}"
            )
        label = np.asarray(im).astype(np.int64)
    if label.min(initial=0) < 0:
        raise ValueError(f"{path}: label values must be >= 0 (0 the background), found {int(label.min())}")
    return label


def instances(label: np.ndarray) -> dict[int, tuple[tuple[float, float, float, float], list[int], int]]:
    """Each nonzero value of an (H, W) label image -> (box x1 y1 x2 y2, RLE runs, pixel count).

    One stable sort of the pixels in column-major order (RLE's order) puts each value's pixels
    together, in increasing position; a run of the mask is a stretch of consecutive positions.
    """
    h, w = label.shape
    flat = label.T.reshape(-1)  # (W*H,) column-major: position p is row p % H, column p // H
    order = np.argsort(flat, kind="stable")  # positions grouped by value, increasing within a value
    values, starts = np.unique(flat[order], return_index=True)
    ends = np.append(starts[1:], flat.size)
    out = {}
    for value, start, end in zip(values.tolist(), starts.tolist(), ends.tolist(), strict=True):
        if value == 0:
            continue
        p = order[start:end]  # (n,) this value's positions, increasing
        breaks = np.flatnonzero(np.diff(p) != 1)
        run_starts = np.append(p[0], p[breaks + 1])  # (R,) first position of each run of 1s
        run_ends = np.append(p[breaks] + 1, p[-1] + 1)  # (R,) one past its last
        # 0s before the first run, 1s, 0s between runs, ..., 0s after the last (dropped when none,
        # as encode_rle does, so that the string is the one encode_rle would write)
        runs = np.diff(np.concatenate([[0], np.stack([run_starts, run_ends], axis=1).reshape(-1), [flat.size]]))
        runs = runs[:-1] if runs[-1] == 0 else runs
        rows = p % h
        box = (float(p[0] // h), float(rows.min()), float(p[-1] // h + 1), float(rows.max() + 1))
        out[int(value)] = (box, runs.tolist(), len(p))
    return out


def read_class_table(path: Path) -> dict[int, tuple[str, int]]:
    """A CSV of value,class lines -> {value: (class, line number)}."""
    class_of: dict[int, tuple[str, int]] = {}
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()))  # -sig: as Excel writes it
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file (expected value,class lines)") from None
    for line, row in enumerate(rows, start=1):
        fields = [x.strip() for x in row]
        if not any(fields) or fields[0].startswith("#"):
            continue
        if line == 1 and not fields[0].lstrip("-").isdigit():
            continue  # a header
        if len(fields) != 2 or not fields[1]:
            raise ValueError(f"{path} line {line}: expected value,class, got {','.join(row)!r}")
        try:
            value = int(fields[0])
        except ValueError:
            raise ValueError(f"{path} line {line}: the value {fields[0]!r} is not an integer") from None
        if value <= 0:
            raise ValueError(f"{path} line {line}: the value {value} is not an instance (0 is the background)")
        if value in class_of:
            raise ValueError(f"{path} line {line}: the value {value} is already on line {class_of[value][1]}")
        class_of[value] = (fields[1], line)
    return class_of
