"""YOLO txt files -> COCO: one txt file per image, a line per object, class indices and coordinates
as fractions of the image's width and height.

    0 0.481 0.634 0.690 0.713          class x_centre y_centre width height    (detection)
    1 0.10 0.20 0.40 0.25 0.30 0.60    class x1 y1 x2 y2 x3 y3 ...             (segmentation: a polygon)

* Coordinates: 0 is the image's left (top) edge, 1 its right (bottom) edge, so in minimtl's pixels
  x1 = (x_centre - width / 2) * W, x2 = (x_centre + width / 2) * W. A polygon's vertices become a
  COCO polygon in pixels (x * W, y * H); its box is the vertices' extent (as Ultralytics makes it),
  its area the pixel count of the rasterised polygon (as COCO's areas are). Values outside [0, 1] by
  at most 0.01 (rounding in the tool that wrote them) are clipped; further out is an error.
* A file set holds boxes or polygons, not both: COCO data with masks needs one on every object (a
  mix is an error naming a line of each). An empty file is an image without objects.
* Classes: lines hold indices 0..C-1, and the category id is index + 1 whatever the names, so that
  two sets converted separately (train, test) agree. The names, in index order: `classes` if given,
  else a classes.txt beside the txt files (one name per line, as darknet and LabelImg write it; it
  is not an annotation file), else the indices themselves ("0", "1", ... up to the largest found).
  An index without a name is an error naming the line. (Ultralytics' data.yaml is not read: pass its
  names as classes.)
* Photos with an EXIF orientation: the fractions are of the upright photo, as Ultralytics (OpenCV)
  loads it, so a quarter-turned photo's width and height are swapped in the COCO file, and
  CocoDataset turns it upright when it reads it.
"""

from pathlib import Path

from minimtl.data.convert.common import ImageFolder, Instance, check_classes, find_files, number, to_coco
from minimtl.data.masks import polygon_to_mask

SLACK = 0.01  # how far outside [0, 1] a coordinate may be (then clipped) before it is an error


def yolo_to_coco(input, images, *, classes=None) -> dict:
    """YOLO txt files (a folder, files or glob patterns) and their image folder -> a COCO dict: boxes,
    or polygons for the segmentation format. classes: the names of indices 0, 1, ... (see above)."""
    classes = check_classes(classes)
    files = find_files(input, (".txt",), "YOLO txt files", exclude=("classes.txt",))
    names = classes if classes is not None else _classes_txt(files)
    folder = ImageFolder(images)
    records, indexed, first_of_kind = [], [], {}
    for file in files:
        record = folder.record(folder.find(file.stem, file), file, upright=True)
        for line, text in enumerate(_lines(file), start=1):
            if text.strip():
                where = f"{file} line {line}"
                index, inst = _read_line(text, where, record.width, record.height)
                first_of_kind.setdefault("polygon" if inst.segmentation else "box", where)
                indexed.append((index, inst))  # named once all indices are known
                record.instances.append(inst)
        records.append(record)
    if len(first_of_kind) == 2:
        raise ValueError(
            f"{first_of_kind['box']} is a box but {first_of_kind['polygon']} is a polygon: convert boxes and "
            "polygons separately (COCO data with masks needs a mask on every object)"
        )
    if names is None:
        names = [str(i) for i in range(max((index for index, _ in indexed), default=-1) + 1)]
    for index, inst in indexed:
        if index >= len(names):
            source = "classes" if classes is not None else "classes.txt"
            raise ValueError(f"{inst.where}: class {index}, but {source} names {len(names)} (0..{len(names) - 1})")
        inst.name = names[index]
    info = {"description": "converted from YOLO txt files by minimtl", "source": "yolo",
            "kind": "polygons" if "polygon" in first_of_kind else "boxes"}  # fmt: skip
    return to_coco(records, names, info)


def _read_line(text: str, where: str, width: int, height: int) -> tuple[int, Instance]:
    fields = text.split()
    if len(fields) != 5 and (len(fields) < 7 or len(fields) % 2 == 0):
        raise ValueError(
            f"{where}: expected 'class x_centre y_centre width height' or a polygon 'class x1 y1 x2 y2 x3 y3 ...', "
            f"got {len(fields)} values"
        )
    if not (fields[0].isascii() and fields[0].isdigit()):
        raise ValueError(f"{where}: the class must be an index 0, 1, ..., got {fields[0]!r}")
    values = [number(v, where, "a coordinate") for v in fields[1:]]
    if len(fields) == 5:
        xc, yc, w, h = values
        if w < 0 or h < 0:
            raise ValueError(f"{where}: the width and height must not be negative, got {w:g} and {h:g}")
        values = [xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2]  # x1, y1, x2, y2
    outside = [v for v in values if not -SLACK <= v <= 1 + SLACK]
    if outside:
        what = "the box reaches" if len(fields) == 5 else "the coordinate"
        raise ValueError(f"{where}: {what} {outside[0]:g}, outside [0, 1] (YOLO's are fractions of the image size)")
    xy = [min(max(v, 0.0), 1.0) * (width if i % 2 == 0 else height) for i, v in enumerate(values)]  # pixels
    if len(fields) == 5:
        return int(fields[0]), Instance("", tuple(xy), where)
    xs, ys = xy[0::2], xy[1::2]
    area = float(polygon_to_mask(xy, height, width).sum())
    return int(fields[0]), Instance("", (min(xs), min(ys), max(xs), max(ys)), where, segmentation=[xy], area=area)


def _classes_txt(files: list[Path]) -> list[str] | None:
    """The names in the classes.txt beside the txt files (one, or several that agree), or None."""
    found = {}
    for parent in dict.fromkeys(f.parent for f in files):
        path = parent / "classes.txt"
        if path.is_file():
            try:
                found[path] = check_classes([line.strip() for line in _lines(path) if line.strip()])
            except ValueError as error:
                raise ValueError(f"{path}: {error}") from None
    if len({tuple(names) for names in found.values()}) > 1:
        a, b = list(found)[:2]
        raise ValueError(f"{a} and {b} name the classes differently: give the names as classes")
    return next(iter(found.values()), None)


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file (YOLO's are lines of numbers)") from None
