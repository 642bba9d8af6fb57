"""Pascal VOC XML -> COCO: one XML file per image, boxes with class names, and VOC's `difficult`.

    <annotation>
      <filename>2007_000027.jpg</filename>
      <size><width>486</width><height>500</height><depth>3</depth></size>
      <object>
        <name>person</name>
        <difficult>0</difficult>
        <bndbox><xmin>174</xmin><ymin>101</ymin><xmax>349</xmax><ymax>351</ymax></bndbox>
      </object>
    </annotation>

* Coordinates: VOC numbers pixels from 1 and its box includes both ends: xmin=1 is the first column,
  and a box over columns xmin..xmax is xmax - xmin + 1 wide. In minimtl's continuous convention
  (column c covers [c, c+1), the first is 0) that box is x1 = xmin - 1, x2 = xmax, as detectron2
  reads VOC: the whole 486-pixel-wide image, xmin=1 xmax=486, is [0, 486], width 486. A 0 (which
  tools that count from 0 write) is taken as the first pixel: x1 = 0. Checked: 0 <= xmin <= xmax <=
  width, the same for y; fractional values are read as they are.
* difficult: objects VOC's own evaluation ignores (tiny, heavily occluded). difficult="crowd" (the
  default) writes them with iscrowd=1: CocoDataset leaves crowds out of training, and COCO evaluation
  treats them as regions where a detection is neither a hit nor a miss, which is VOC's rule for
  difficult objects. "keep": ordinary objects; "drop": left out. Every annotation also gets
  "difficult": 0 or 1 (a key COCO tools ignore), so that nothing is lost.
* Images: <filename> in the images folder, else the one image with the XML file's stem. <size> is
  checked against the image file's header (a size of 0 x 0, which some tools write, is not); a photo
  whose EXIF orientation turns it to <size> was annotated upright: the COCO file gets that size, and
  CocoDataset turns the photo upright when it reads it.
* Not read: <part>s, <truncated>, <pose>, and VOC's segmentation PNGs (see labelmap.py for those):
  the result has boxes only.
"""

import xml.etree.ElementTree as ET
from pathlib import Path

from minimtl.data.convert.common import (
    ImageFolder,
    Instance,
    category_names,
    check_classes,
    find_files,
    image_size,
    number,
    to_coco,
)

DIFFICULT = ("crowd", "keep", "drop")


def voc_to_coco(input, images, *, classes=None, difficult: str = "crowd") -> dict:
    """VOC XML files (a folder, files or glob patterns) and their image folder -> a COCO dict.

    classes: the category names in order (ids 1..C); default: the names found, sorted.
    difficult: "crowd", "keep" or "drop" (see the module docstring).
    """
    if difficult not in DIFFICULT:
        raise ValueError(f"difficult must be one of {', '.join(DIFFICULT)}, got {difficult!r}")
    classes = check_classes(classes)
    files = find_files(input, (".xml",), "VOC XML files")
    folder = ImageFolder(images)
    records = []
    num_difficult = 0
    for file in files:
        record = _read_voc(file, folder, difficult)
        num_difficult += sum(inst.extra["difficult"] for inst in record.instances)
        if difficult == "drop":
            record.instances = [inst for inst in record.instances if not inst.extra["difficult"]]
        records.append(record)
    info = {"description": "converted from Pascal VOC by minimtl", "source": "voc", "difficult": difficult,
            "num_difficult": num_difficult}  # fmt: skip
    return to_coco(records, category_names(records, classes), info)


def _read_voc(file: Path, folder: ImageFolder, difficult: str):
    try:
        root = ET.parse(file).getroot()
    except ET.ParseError as error:
        line, column = error.position
        raise ValueError(f"{file}: not valid XML at line {line}, column {column}: {error.msg}") from None
    if root.tag != "annotation":
        raise ValueError(f"{file}: the root element is <{root.tag}>, a VOC file's is <annotation>")
    name = (root.findtext("filename") or "").strip() or None
    record = folder.record(folder.find(file.stem, file, name), file)
    stated = [root.findtext(f"size/{k}") for k in ("width", "height")]
    if None not in stated:
        w, h = (number(v, f"{file}: <size>", k) for v, k in zip(stated, ("width", "height"), strict=True))
        if (w, h) != (0, 0) and (w, h) != (record.width, record.height):
            if (w, h) != image_size(record.path, upright=True):  # the header again, only when the sizes differ
                raise ValueError(
                    f"{file}: <size> says {w:g} x {h:g} (width x height), its image {record.path} is "
                    f"{record.width} x {record.height}"
                )
            # a photo the tool showed upright (and CocoDataset turns it upright when it reads it)
            record.width, record.height = record.height, record.width
    for i, obj in enumerate(root.findall("object"), start=1):
        record.instances.append(_read_object(obj, f"{file}: object {i}", record.width, record.height, difficult))
    return record


def _read_object(obj, where: str, width: int, height: int, difficult: str) -> Instance:
    name = (obj.findtext("name") or "").strip()
    if not name:
        raise ValueError(f"{where} has no <name>")
    where = f"{where} ({name!r})"
    box = obj.find("bndbox")
    if box is None:
        raise ValueError(f"{where} has no <bndbox>")
    values = {}
    for k in ("xmin", "ymin", "xmax", "ymax"):
        text = box.findtext(k)
        if text is None:
            raise ValueError(f"{where}: <bndbox> has no <{k}>")
        values[k] = number(text.strip(), where, k)
    for axis, size, what in (("x", width, "width"), ("y", height, "height")):
        lo, hi = values[f"{axis}min"], values[f"{axis}max"]
        if not 0 <= lo <= hi <= size:
            raise ValueError(
                f"{where}: {axis}min {lo:g}, {axis}max {hi:g} must satisfy 0 <= {axis}min <= {axis}max <= {what} "
                f"({size}; VOC counts pixels from 1)"
            )
    flag = (obj.findtext("difficult") or "0").strip()
    if flag not in ("0", "1"):
        raise ValueError(f"{where}: <difficult> must be 0 or 1, got {flag!r}")
    # 1-based and inclusive -> continuous: the columns xmin..xmax cover [xmin - 1, xmax)
    x1, y1 = max(values["xmin"] - 1, 0), max(values["ymin"] - 1, 0)
    is_difficult = int(flag)
    return Instance(name, (x1, y1, values["xmax"], values["ymax"]), where,
                    iscrowd=int(is_difficult and difficult == "crowd"), extra={"difficult": is_difficult})  # fmt: skip
