"""Converters to COCO format: Pascal VOC XML, instance label images and YOLO txt files; and tiling
(of their images, or of a COCO file's).

    coco = voc_to_coco("VOC2012/Annotations", "VOC2012/JPEGImages", classes=["cat", "dog"])
    coco = labelmap_to_coco("labels/", "images/")          # masks as compressed RLE
    coco = yolo_to_coco("labels/", "images/")              # boxes, or polygons (YOLO's segmentation format)
    coco = tile_coco(coco, "images/", "out/images", 512, overlap=64)   # large images -> tiles
    write_coco_json(coco, "out/ann.json")                  # atomically

or all in one, what `python -m minimtl data convert` runs:

    coco = convert_to_coco("labelmap", "labels/", "images/", "out/ann.json", tile=512, overlap=64)
    print(summary(coco, "out/ann.json", "out/images"))

One module per format (voc.py, labelmap.py, yolo.py; coco_file.py reads a COCO file to tile), tiles.py
for tiling and common.py for what they share (finding the files and their images, classes, building
and writing the dict); each module's docstring states its format's conventions. Every result loads
with minimtl.data.CocoDataset (and pycocotools); bad input raises ValueError or FileNotFoundError
naming the file and the line or object. The file_names are relative to the images folder given (to
the tile folder when tiling).
"""

from collections import Counter
from pathlib import Path

from minimtl.data.convert.coco_file import coco_file
from minimtl.data.convert.common import check_classes, write_coco_json
from minimtl.data.convert.labelmap import labelmap_to_coco
from minimtl.data.convert.tiles import check_tiling, tile_coco
from minimtl.data.convert.voc import voc_to_coco
from minimtl.data.convert.yolo import yolo_to_coco

CONVERTERS = {"voc": voc_to_coco, "labelmap": labelmap_to_coco, "yolo": yolo_to_coco, "coco": coco_file}
NAMES = {"voc": "Pascal VOC XML", "labelmap": "label image", "yolo": "YOLO txt", "coco": "COCO"}


def convert_to_coco(source: str, input, images, out, *, classes=None, tile: int | None = None, overlap: int = 0,
                    min_fraction: float = 0.5, difficult: str = "crowd", label_suffix: str = "") -> dict:  # fmt: skip
    """Convert `source` ("voc", "labelmap", "yolo"; "coco" with a tile size) annotation files to COCO,
    cut the images into tiles if `tile` is given (written to images/ beside `out`), and write `out`;
    returns the dict. label_suffix: for "labelmap" (see labelmap.py). The arguments are checked before
    any file is read."""
    if source not in CONVERTERS:
        raise ValueError(f"unknown format {source!r}: choose one of {', '.join(CONVERTERS)}")
    classes = check_classes(classes)
    if tile is None and overlap:
        raise ValueError(f"an overlap ({overlap}) needs a tile size")
    if tile is None and source == "coco":
        raise ValueError("a COCO file is COCO already: converting one is for cutting its images into tiles (tile)")
    tile_dir = Path(out).parent / "images"
    if tile is not None:
        check_tiling(tile, overlap, min_fraction)
        if tile_dir.resolve() == Path(images).resolve():
            raise ValueError(f"the tiles would go among the images in {tile_dir}: write {out} in another folder")
    options = {"difficult": difficult} if source == "voc" else {}
    if source == "labelmap":
        options["label_suffix"] = label_suffix
    elif label_suffix:
        raise ValueError(f"label_suffix is for label images, not {source}")
    coco = CONVERTERS[source](input, images, classes=classes, **options)
    if tile is not None:
        coco = tile_coco(coco, images, tile_dir, tile, overlap=overlap, min_fraction=min_fraction)
    write_coco_json(coco, out)
    return coco


def summary(coco: dict, out, images) -> str:
    """A paragraph on what a conversion wrote: images (tiles), objects per class, what was dropped."""
    info = coco.get("info", {})
    names = {c["id"]: c["name"] for c in coco["categories"]}
    counts = Counter(names[a["category_id"]] for a in coco["annotations"])
    per_class = ", ".join(f"{name} {counts[name]}" for name in names.values())
    segmentations = [a["segmentation"] for a in coco["annotations"] if a.get("segmentation")]
    masks = "boxes only" if not segmentations else "masks as " + (
        "compressed RLE" if isinstance(segmentations[0], dict) else "polygons")  # fmt: skip
    empty = len({i["id"] for i in coco["images"]} - {a["image_id"] for a in coco["annotations"]})
    objects = f"{_count(len(coco['annotations']), 'object')} ({per_class}), {masks}"
    tiling = info.get("tiling")
    text = f"{NAMES.get(info.get('source'), 'annotation')} files -> {out}: "
    if tiling:
        text += (f"{_count(tiling['source_images'], 'image')} with {_count(tiling['source_objects'], 'object')}, "
                 f"cut into {_count(tiling['tiles'], 'tile')} of at most {tiling['size']} x {tiling['size']} pixels "
                 f"(overlap {tiling['overlap']}) in {images}; the tiles hold {objects}; "
                 f"{_count(empty, 'tile')} without objects.")  # fmt: skip
    else:
        text += f"{_count(len(coco['images']), 'image')}; {objects}; {_count(empty, 'image')} without objects."
    if info.get("num_difficult"):
        handling = {"crowd": "written as crowd regions (not trained on, ignored by evaluation)",
                    "keep": "kept as ordinary objects", "drop": "left out"}[info["difficult"]]  # fmt: skip
        text += f" VOC's difficult objects ({info['num_difficult']}): {handling}."
    elif any(a.get("iscrowd") for a in coco["annotations"]):
        text += f" Crowd regions: {sum(a.get('iscrowd', 0) for a in coco['annotations'])}."
    if tiling:
        text += (f" Dropped: {_count(tiling['dropped'], 'piece')} of objects, less than {tiling['min_fraction']:.0%} "
                 f"of the object inside the tile; {_count(tiling['lost'], 'object')} in no tile at all.")  # fmt: skip
    return text + f"\nTrain on it: python -m minimtl train --coco-annotations {out} --coco-images {images}"


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


__all__ = [
    "CONVERTERS",
    "coco_file",
    "convert_to_coco",
    "labelmap_to_coco",
    "summary",
    "tile_coco",
    "voc_to_coco",
    "write_coco_json",
    "yolo_to_coco",
]
