"""What every converter shares: finding the annotation files and their images, the classes, and
building and writing the COCO dict.

* Annotation files (`input`): a folder (its files with the format's suffixes, sorted, not its
  subfolders), a file, a glob pattern, or a list of these (a shell-expanded glob).
* Images (`images`, a folder): an annotation file's image is the file in that folder with the same
  stem and an image suffix (VOC's <filename> is tried first); none, or two (a.png and a.jpg), is an
  error naming the annotation file. Width and height come from the image file's header (Pillow
  reads no pixels for it). Only images named by an annotation file are converted: an image without
  one is not in the output (an empty annotation file makes an image without objects, a negative).
* Classes: `classes` (a list of names) fixes the names and their order, ids 1..C; a name in the
  data that is not in it is an error naming the file and the object. Without it, the names found,
  sorted (YOLO differs: its files hold class indices; see yolo.py).
* The COCO dict: images with ids 1..N in the order of the sorted annotation files, annotations with
  ids 1..M, "bbox" [x, y, w, h] in pixels (minimtl's continuous convention: pixel c covers [c, c+1),
  so a box over columns 3..5 is x=3, w=3), "area" the mask's pixel count (the box's area without a
  mask), "iscrowd" 0/1; "info" says where it came from (and how it was tiled).
"""

import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from minimtl.data.images import exif_orientation, open_image, turns_size

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


@dataclass
class Instance:
    """One object: its class name, box (x1, y1, x2, y2) in pixels, segmentation (or None), and where
    it was read, as an error message names it ("a.xml: object 2 ('dog')")."""

    name: str
    box: tuple[float, float, float, float]
    where: str
    segmentation: list | dict | None = None
    area: float | None = None  # None: the box's area
    iscrowd: int = 0
    extra: dict = field(default_factory=dict)  # more keys for the annotation (VOC's "difficult")


@dataclass
class ImageRecord:
    """One image and its objects, from one annotation file."""

    path: Path  # the image file
    file_name: str  # relative to the images folder, as the COCO file names it
    width: int
    height: int
    source: Path  # the annotation file
    instances: list[Instance] = field(default_factory=list)


def find_files(input, suffixes: tuple[str, ...], what: str, exclude: tuple[str, ...] = ()) -> list[Path]:
    """Folders, files and glob patterns -> the annotation files, each once, folders' contents sorted."""
    items = [input] if isinstance(input, (str, Path)) else list(input)
    if not items:
        raise FileNotFoundError(f"input: no {what} given")
    found: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            matches = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
        elif path.is_file():
            matches = [path]
        else:
            matches = sorted(Path(p) for p in glob.glob(str(item), recursive=True) if Path(p).is_file())
        matches = [p for p in matches if p.name.lower() not in exclude]
        if not matches:
            raise FileNotFoundError(f"input {item}: no {what} there (looked for {', '.join(suffixes)})")
        found += [p for p in matches if p not in found]
    return found


class ImageFolder:
    """The images of a folder, found by stem: ImageFolder(dir).find(stem, where) -> Path."""

    def __init__(self, folder):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"images {self.folder}: no such folder")
        self.by_stem: dict[str, list[Path]] = {}
        for p in sorted(self.folder.iterdir()):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                self.by_stem.setdefault(p.stem, []).append(p)

    def find(self, stem: str, where: Path, name: str | None = None) -> Path:
        """The image `name` (a file name in the folder) if it exists, else the one image with this stem."""
        if name and (self.folder / Path(name).name).is_file():  # a file name, never a path out of the folder
            return self.folder / Path(name).name
        paths = self.by_stem.get(stem, [])
        if len(paths) > 1:
            raise ValueError(f"{where}: its image is ambiguous, {self.folder} has {', '.join(p.name for p in paths)}")
        if not paths:
            named = f"{name} nor " if name else ""
            raise FileNotFoundError(
                f"{where}: its image is missing: {self.folder} has no {named}{stem}.* "
                f"(an image with the annotation file's stem and one of {', '.join(IMAGE_SUFFIXES)})"
            )
        return paths[0]

    def record(self, image: Path, source: Path, *, upright: bool = False) -> ImageRecord:
        """An ImageRecord for an image of this folder, its size read from the file's header (see image_size)."""
        width, height = image_size(image, upright=upright)
        return ImageRecord(image, image.relative_to(self.folder).as_posix(), width, height, source)


def image_size(path: Path, *, upright: bool = False) -> tuple[int, int]:
    """(width, height) from the header: as stored, or with upright=True as the photo stands once turned
    by its EXIF orientation (CocoDataset turns an image whose file gives that size). Any size, so that
    an image too large to train on can be converted and tiled."""
    with open_image(path, decode=False, any_size=True, who="image") as im:
        (width, height), orientation = im.size, exif_orientation(im)
    return (height, width) if upright and turns_size(orientation) else (width, height)


def check_classes(classes) -> list[str] | None:
    """None, or a list of distinct, non-empty names without commas (a "a,b,c" string is split)."""
    if classes is None:
        return None
    names = [n.strip() for n in classes.split(",")] if isinstance(classes, str) else [str(n) for n in classes]
    if not names or any(not n or "," in n for n in names):
        raise ValueError(f"classes: expected distinct non-empty names like cat,dog, got {classes!r}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"classes: {', '.join(repeated)} given twice in {','.join(names)}")
    return names


def category_names(records: list[ImageRecord], classes: list[str] | None) -> list[str]:
    """The category names, ids 1..C in this order: `classes`, checked against the data, or the names found, sorted."""
    if classes is None:
        return sorted({inst.name for record in records for inst in record.instances})
    for record in records:
        for inst in record.instances:
            if inst.name not in classes:
                raise ValueError(f"{inst.where}: the class {inst.name!r} is not in the classes ({', '.join(classes)})")
    return list(classes)


def to_coco(records: list[ImageRecord], names: list[str], info: dict) -> dict:
    """The COCO dict of the records; categories `names` with ids 1..C."""
    seen: dict[Path, Path] = {}
    for record in records:
        if record.path in seen:
            raise ValueError(f"{record.source} and {seen[record.path]} both annotate the image {record.path}")
        seen[record.path] = record.source
    category_id = {name: i for i, name in enumerate(names, start=1)}
    images, annotations = [], []
    for image_id, record in enumerate(records, start=1):
        images.append({"id": image_id, "file_name": record.file_name, "height": record.height, "width": record.width})
        for inst in record.instances:
            x1, y1, x2, y2 = inst.box
            ann = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": category_id[inst.name],
                "bbox": [_plain(v) for v in (x1, y1, x2 - x1, y2 - y1)],
                "area": float(inst.area if inst.area is not None else (x2 - x1) * (y2 - y1)),
                "iscrowd": inst.iscrowd,
                **inst.extra,
            }
            if inst.segmentation is not None:
                ann["segmentation"] = inst.segmentation
            annotations.append(ann)
    categories = [{"id": i, "name": name} for name, i in category_id.items()]
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}


def _plain(v: float) -> int | float:
    """5.0 -> 5: whole pixel coordinates read as whole numbers in the JSON."""
    return int(v) if float(v).is_integer() else float(v)


def write_coco_json(coco: dict, path) -> Path:
    """Write a COCO dict as JSON, atomically: to a temporary file beside `path`, flushed, then renamed
    over it, so that a crash never leaves half a file where a training run would read it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(coco, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def number(text, where: str, what: str) -> float:
    """A finite number from a file's text, or a ValueError naming where it was and what it should be."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = float("nan")
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{where}: {what} must be a finite number, got {text!r}")
    return value
