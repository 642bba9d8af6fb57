"""COCO-format datasets: your own images and annotations, in the format COCO made common.

The annotation file is JSON with "images" ({"id", "file_name", "height", "width"}), "categories"
({"id", "name"}) and "annotations" ({"id", "image_id", "category_id", "bbox": [x, y, w, h],
"segmentation": polygons or RLE, "iscrowd": 0/1, "area"}). Category ids may be any integers: they
are mapped, in increasing order, to labels 1..C (0 is the background); `categories` lists the names
by label. Masks are decoded by minimtl.data.masks (no pycocotools needed).

An item is (image (3, H, W) float in [0, 1], target) with "boxes" (K, 4) xyxy, "labels" (K,),
"masks" (K, H, W) uint8, "iscrowd" (K,), "area" (K,), "image_id". Boxes with no width or height
are left out (the count is in `skipped_boxes`), as detectors cannot learn from them.
"""

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from minimtl.data.loader import split_key
from minimtl.data.masks import decode_segmentation


class CocoDataset(Dataset):
    def __init__(self, annotation_file, image_dir, transforms=None, seed: int = 0, masks: bool = True):
        self.annotation_file, self.image_dir = Path(annotation_file), Path(image_dir)
        self.transforms, self.seed, self.masks = transforms, seed, masks
        try:
            data = json.loads(self.annotation_file.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"CocoDataset: annotation file {self.annotation_file} does not exist") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"CocoDataset: {self.annotation_file} is not valid JSON: {error}") from None
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key), list):
                raise ValueError(f"CocoDataset: {self.annotation_file} needs a list {key!r}")
        self.images = data["images"]
        for i, image in enumerate(self.images):
            missing = [k for k in ("id", "file_name", "height", "width") if k not in image]
            if missing:
                raise ValueError(f"CocoDataset: {self.annotation_file}: images[{i}] is missing {missing}")
        category_ids = sorted(c["id"] for c in data["categories"])
        self.label_of = {cid: label for label, cid in enumerate(category_ids, start=1)}
        names = {c["id"]: c.get("name", str(c["id"])) for c in data["categories"]}
        self.categories = ["background"] + [names[cid] for cid in category_ids]
        image_ids = {image["id"] for image in self.images}
        self.annotations = defaultdict(list)
        for i, ann in enumerate(data["annotations"]):
            where = f"{self.annotation_file}: annotation {ann.get('id', f'#{i}')}"
            missing = [k for k in ("image_id", "category_id", "bbox") if k not in ann]
            if missing:
                raise ValueError(f"CocoDataset: {where} is missing {missing}")
            if ann["category_id"] not in self.label_of:
                raise ValueError(f"CocoDataset: {where} has the unknown category id {ann['category_id']}")
            if ann["image_id"] not in image_ids:
                raise ValueError(f"CocoDataset: {where} refers to the unknown image id {ann['image_id']}")
            if self.masks and "segmentation" not in ann:
                raise ValueError(f"CocoDataset: {where} has no 'segmentation' (use masks=False for boxes only)")
            self.annotations[ann["image_id"]].append(ann)
        self.skipped_boxes = sum(
            1 for anns in self.annotations.values() for a in anns if a["bbox"][2] <= 0 or a["bbox"][3] <= 0
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        """key: an index, or (index, salt): the same image, augmented differently for each salt."""
        index, salt = split_key(key)
        info = self.images[index]
        path = self.image_dir / info["file_name"]
        if not path.exists():
            raise FileNotFoundError(f"CocoDataset: image {path} (image id {info['id']}) does not exist")
        from PIL import Image  # Pillow comes with matplotlib

        with Image.open(path) as im:
            image = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
        h, w = int(info["height"]), int(info["width"])
        if image.shape[1:] != (h, w):
            raise ValueError(
                f"CocoDataset: {path} is {image.shape[2]} x {image.shape[1]}, the annotations say {w} x {h}"
            )
        anns = [a for a in self.annotations[info["id"]] if a["bbox"][2] > 0 and a["bbox"][3] > 0]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        target = {
            "boxes": boxes,
            "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.int64),
            "iscrowd": torch.tensor([int(a.get("iscrowd", 0)) for a in anns], dtype=torch.int64),
            "area": torch.tensor([float(a.get("area", a["bbox"][2] * a["bbox"][3])) for a in anns]),
            "image_id": int(info["id"]),
        }
        if self.masks:
            masks = []
            for a in anns:
                try:
                    masks.append(decode_segmentation(a["segmentation"], h, w))
                except ValueError as error:
                    raise ValueError(
                        f"CocoDataset: {self.annotation_file}: annotation {a.get('id')}: {error}"
                    ) from None
            target["masks"] = (
                torch.from_numpy(np.stack(masks).astype(np.uint8))
                if masks
                else torch.zeros((0, h, w), dtype=torch.uint8)
            )
        if self.transforms is not None:
            generator = torch.Generator().manual_seed(
                int(np.random.default_rng([self.seed, index, salt]).integers(2**62))
            )
            image, target = self.transforms(image, target, generator)
        return image, target
