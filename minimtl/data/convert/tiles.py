"""Cutting large images into tiles: a COCO dict and its images -> tile image files and a COCO dict of
the tiles. Microscopy slides and aerial photographs are thousands of pixels wide, and a detector
resizes every image to its input size (minimtl: the median shorter side, at most 1024): small
objects would vanish. Cut into tiles, they keep their pixels.

* The grid: tiles of size x size pixels, stepping by size - overlap; the last tile of a row (of a
  column) is moved back to end at the image's edge, so that every pixel lies in a tile and every
  tile is whole: an image 1000 wide, size 256, overlap 32, has tiles at x = 0, 224, 448, 672, 744.
  Along a side shorter than `size`, one tile as long as the side (no padding).
* Objects: a mask is cut with the tile, and the object's box in the tile is the tight box of the
  mask's pixels there; without a mask, the box is clipped to the tile. An object is kept in a tile
  when at least `min_fraction` of it lies inside (of its mask's pixels; without a mask, of its box's
  area), and dropped from that tile when some but less of it does. info["tiling"] counts the pieces
  dropped, and the objects lost (kept in no tile at all: an object too large for min_fraction of it
  to fit in one tile is lost, so choose the tile size for the objects). Crowds are cut the same way.
* Masks are written as compressed RLE, polygons too (rasterised as CocoDataset would, then cut).
* Files: the tile of image "a/b.jpg" at (x, y) is "a/b_x_y.png" under tile_dir, its file_name
  relative to tile_dir; PNG keeps the pixels exactly (16-bit greyscale too), TIFF where PNG cannot
  (32-bit integers, floats, CMYK). Each tile's image entry also says "source" (the original's
  file_name) and "tile" [x, y] (its top-left corner there). Tiles without objects are kept, as
  negatives.
* A photo whose EXIF orientation turns it to the size its entry gives is cut upright (the tiles
  carry no orientation).
"""

from pathlib import Path

import numpy as np

from minimtl.data.images import exif_orientation, open_image, turns_size
from minimtl.data.masks import decode_segmentation, encode_rle

PNG_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "I;16")  # the rest are written as TIFF


def tile_starts(length: int, size: int, overlap: int) -> list[int]:
    """Where the tiles along one side start: every `size - overlap`, the last one flush with the end."""
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, size - overlap))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


def check_tiling(size: int, overlap: int, min_fraction: float) -> None:
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"tile size must be a positive number of pixels, got {size!r}")
    if not isinstance(overlap, int) or not 0 <= overlap < size:
        raise ValueError(f"overlap must be a number of pixels in [0, tile size {size}), got {overlap!r}")
    if not 0 < min_fraction <= 1:
        raise ValueError(f"min_fraction must be in (0, 1], got {min_fraction!r}")


def tile_coco(coco: dict, images, tile_dir, size: int, *, overlap: int = 0, min_fraction: float = 0.5) -> dict:
    """Cut every image of `coco` (its file_names relative to `images`) into tiles written under
    `tile_dir`; returns the COCO dict of the tiles (see the module docstring)."""
    from PIL import ImageOps

    check_tiling(size, overlap, min_fraction)
    images, tile_dir = Path(images), Path(tile_dir)
    by_image: dict[int, list[dict]] = {image["id"]: [] for image in coco["images"]}
    for ann in coco["annotations"]:
        by_image[ann["image_id"]].append(ann)
    out_images, out_annotations = [], []
    dropped = lost = 0
    for info in coco["images"]:
        h, w = info["height"], info["width"]
        tiles = [(x, y, min(size, w), min(size, h)) for y in tile_starts(h, size, overlap)
                 for x in tile_starts(w, size, overlap)]  # fmt: skip
        path = images / info["file_name"]
        with open_image(path, any_size=True, who="tile_coco") as im:
            if turns_size(exif_orientation(im)) and im.size == (h, w) != (w, h):  # annotated upright (CocoDataset)
                im = ImageOps.exif_transpose(im)
            if im.size != (w, h):
                raise ValueError(
                    f"{path} is {im.size[0]} x {im.size[1]} (width x height), its annotations say {w} x {h}"
                )
            names = _write_tiles(im, tiles, info["file_name"], tile_dir)
        pieces: list[list[dict]] = [[] for _ in tiles]
        for ann in by_image[info["id"]]:
            mask = decode_segmentation(ann["segmentation"], h, w) if _has_mask(ann) else None  # (H, W)
            mask = mask if mask is not None and mask.any() else None  # an empty mask: the box decides
            extent, total = _extent(ann, mask), int(mask.sum()) if mask is not None else 0
            kept = cut = 0
            for t, tile in enumerate(tiles):
                if not _overlaps(extent, tile):
                    continue
                piece, fraction = _cut(ann, mask, total, tile)
                if piece is not None and fraction >= min_fraction - 1e-9:
                    pieces[t].append(piece)
                    kept += 1
                elif piece is not None:
                    cut += 1
            dropped += cut
            lost += bool(cut and not kept)
        for (x, y, tw, th), name, anns in zip(tiles, names, pieces, strict=True):
            image_id = len(out_images) + 1
            out_images.append({"id": image_id, "file_name": name, "height": th, "width": tw,
                               "source": info["file_name"], "tile": [x, y]})  # fmt: skip
            for ann in anns:
                out_annotations.append({"id": len(out_annotations) + 1, "image_id": image_id, **ann})
    tiling = {"size": size, "overlap": overlap, "min_fraction": min_fraction, "source_images": len(coco["images"]),
              "source_objects": len(coco["annotations"]),
              "tiles": len(out_images), "dropped": dropped, "lost": lost}  # fmt: skip
    info = {**coco.get("info", {}), "tiling": tiling}
    return {"info": info, "images": out_images, "annotations": out_annotations, "categories": coco["categories"]}


def _write_tiles(im, tiles, file_name: str, tile_dir: Path) -> list[str]:
    """Crop and save each tile; their file names relative to tile_dir."""
    rel = Path(file_name)
    if rel.is_absolute() or ".." in rel.parts:
        rel = Path(rel.name)
    suffix = ".png" if im.mode in PNG_MODES else ".tif"
    names = []
    for x, y, tw, th in tiles:
        name = rel.with_name(f"{rel.stem}_{x}_{y}{suffix}").as_posix()
        (tile_dir / name).parent.mkdir(parents=True, exist_ok=True)
        im.crop((x, y, x + tw, y + th)).save(tile_dir / name)
        names.append(name)
    return names


def _has_mask(ann: dict) -> bool:
    return ann.get("segmentation") not in (None, [], {})


def _extent(ann: dict, mask: np.ndarray | None) -> tuple[float, float, float, float]:
    """x1, y1, x2, y2 of what a tile may cut: the mask's pixels, or the box."""
    if mask is None:
        x, y, w, h = ann["bbox"]
        return x, y, x + w, y + h
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return cols[0], rows[0], cols[-1] + 1, rows[-1] + 1


def _overlaps(extent, tile) -> bool:
    x1, y1, x2, y2 = extent
    x, y, tw, th = tile
    return x1 < x + tw and x < x2 and y1 < y + th and y < y2


def _cut(ann: dict, mask: np.ndarray | None, total: int, tile) -> tuple[dict | None, float]:
    """The part of an annotation inside a tile (None when nothing is), and the fraction of it inside;
    total: the mask's pixels."""
    x, y, tw, th = tile
    keep = {k: v for k, v in ann.items() if k not in ("id", "image_id", "bbox", "area", "segmentation")}
    if mask is not None:
        inside = mask[y : y + th, x : x + tw]  # (th, tw)
        count = int(inside.sum())
        if count == 0:
            return None, 0.0
        rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
        x1, y1, x2, y2 = int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1  # tight, continuous
        piece = {**keep, "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(count), "segmentation": encode_rle(inside)}
        return piece, count / total
    bx, by, bw, bh = ann["bbox"]
    ix1, iy1 = max(bx, x), max(by, y)
    ix2, iy2 = min(bx + bw, x + tw), min(by + bh, y + th)
    if ix2 <= ix1 or iy2 <= iy1:
        return None, 0.0
    piece = {**keep, "bbox": [ix1 - x, iy1 - y, ix2 - ix1, iy2 - iy1], "area": float((ix2 - ix1) * (iy2 - iy1))}
    if _has_mask(ann):  # a segmentation without pixels: cut by its box, and still one (an empty one)
        piece["segmentation"] = encode_rle(np.zeros((th, tw), dtype=bool))
    return piece, (ix2 - ix1) * (iy2 - iy1) / (bw * bh)
