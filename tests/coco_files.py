"""Small COCO-format datasets written to disk for the tests: shapes scenes as PNG files and an
annotation file, in the variants users bring (polygons, RLE of either kind, boxes only, crowds,
images without objects, category ids that are not 1..C).

The RLE strings are written by pycocotools (another tool's encoder, as a user's file would be).
"""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from minimtl.data import ShapesDataset

CATEGORY_IDS = (3, 7, 12)  # circle, square, triangle: not 1..C on purpose


def _segmentation(mask: np.ndarray, box, fmt: str):
    if fmt == "compressed":
        from pycocotools import mask as coco_mask

        rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"size": list(rle["size"]), "counts": rle["counts"].decode()}
    if fmt == "uncompressed":
        from minimtl.data.masks import rle_encode

        return {"size": list(mask.shape), "counts": rle_encode(mask)}
    if fmt == "polygon":  # the box as a polygon: a valid annotation, coarser than the shape
        x1, y1, x2, y2 = box
        return [[x1, y1, x2, y1, x2, y2, x1, y2]]
    raise ValueError(fmt)


def write_coco(folder: Path, num_images: int, seed: int, size: int = 64, masks: str | None = "compressed",
               crowd_every: int = 0, empty_every: int = 0, name: str = "ann.json") -> Path:  # fmt: skip
    """Shapes scenes as images/NNN.png and a COCO file; returns the file's path.

    masks: "compressed", "uncompressed", "polygon" or None (boxes only). crowd_every k: every k-th
    object becomes a crowd region (iscrowd=1). empty_every k: every k-th image has no annotations.
    """
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    shapes = ShapesDataset(num_images, size, seed=seed)
    images, annotations = [], []
    for i in range(num_images):
        image, target = shapes[i]
        file_name = f"images/{seed}_{i:03d}.png"
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(folder / file_name)
        images.append({"id": 1000 + i, "file_name": file_name, "height": size, "width": size})
        if empty_every and i % empty_every == empty_every - 1:
            continue
        for k in range(len(target["boxes"])):
            x1, y1, x2, y2 = target["boxes"][k].tolist()
            mask = target["masks"][k].numpy().astype(bool)
            ann = {
                "id": len(annotations) + 1,
                "image_id": 1000 + i,
                "category_id": CATEGORY_IDS[int(target["labels"][k]) - 1],
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": float(mask.sum()),
                "iscrowd": int(bool(crowd_every) and len(annotations) % crowd_every == crowd_every - 1),
            }
            if masks is not None:
                ann["segmentation"] = _segmentation(mask, (x1, y1, x2, y2), masks)
            annotations.append(ann)
    categories = [{"id": cid, "name": name} for cid, name in zip(CATEGORY_IDS, ShapesDataset.classes[1:], strict=True)]
    path = folder / name
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path
