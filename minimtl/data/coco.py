"""COCO-format datasets: your own images and annotations, in the format COCO made common.

The annotation file is JSON with "images" ({"id", "file_name", "height", "width"}), "categories"
({"id", "name"}) and "annotations" ({"id", "image_id", "category_id", "bbox": [x, y, w, h],
"segmentation": polygons or RLE, "iscrowd": 0/1, "area"}). The whole file is checked when the
dataset is built, so that a bad annotation stops you before training starts, with the file and the
item named; `check_image_files` checks the image files' headers (readable, the size the file says)
before a run, and each image's pixels are read when its item is.

* Categories: ids may be any distinct integers. They are mapped, in increasing order, to labels
  1..C (0 is the background): `category_ids[label - 1]` is the file's id, `categories[label]` the
  name, `label_of[id]` the label.
* Masks: `masks=None` lets the data decide: on when every non-crowd annotation has a segmentation,
  off when none has (a missing, None or empty one counts as none); a file with some of each is an
  error. `masks=False` ignores segmentations (boxes only). Masks are decoded by minimtl.data.masks
  (no pycocotools). A crowd without a segmentation covers its box.
* Crowds (iscrowd=1, a region of many objects labelled as one): with `train=True` they are left
  out of the targets (as torchvision and detectron2 do: there is no one object to learn); with
  `train=False` they stay, with target["iscrowd"] 1, and COCO evaluation (minimtl.evaluation.coco)
  treats them as regions where a detection is neither a hit nor a miss. `num_crowd` counts them.
* Boxes with no width or height are left out (the count is in `skipped_boxes`): detectors cannot
  learn from them. Images without annotations are kept, as negatives (K = 0).
* Photos with an EXIF orientation tag (a phone's portrait photo is often stored on its side): an
  image is turned upright when its turned size is the file's width x height and its stored size
  is not, i.e. when the annotation tool showed it turned (browsers and OpenCV do; Pillow and
  torchvision do not). Otherwise its pixels are used as stored; the orientations that cannot be
  told apart by size (flips, half turns, any turn of a square image) are listed in
  `orientations_kept` for the run to report.
* Semantic targets (`semantic=True`, needs masks): an (H, W) map, 0 the background, each pixel the
  label of the instance on top, crowd pixels IGNORE (255, skipped by the loss and by mean_iou).
  "On top": the masks are painted in order of decreasing area (pixels of the decoded mask; ties in
  file order, the later one on top), crowds included, so a smaller object lying on a larger one
  wins, as it would in a photograph, and a crowd hides only what is larger than itself.

An item is (image (3, H, W) float in [0, 1], target) with "boxes" (K, 4) xyxy, "labels" (K,),
"iscrowd" (K,), "area" (K,), "image_id"; "masks" (K, H, W) uint8 when masks are on; "semantic"
(H, W) int64 when asked for.
"""

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from minimtl.data.images import (
    ImageFileError,
    ImageTooLargeError,
    exif_orientation,
    open_image,
    read_image,
    turns_size,
)
from minimtl.data.loader import split_key
from minimtl.data.masks import check_segmentation, decode_segmentation

IGNORE = 255  # the semantic label of crowd pixels (the ignore_index of the loss and of mean_iou)


class CocoDataset(Dataset):
    """A COCO-format annotation file and its image folder; see the module docstring."""

    def __init__(
        self,
        annotation_file,
        image_dir,
        transforms=None,
        seed: int = 0,
        masks: bool | None = None,
        *,
        train: bool = False,
        semantic: bool = False,
    ):
        self.annotation_file, self.image_dir = Path(annotation_file), Path(image_dir)
        self.transforms, self.seed, self.train, self.semantic = transforms, seed, train, semantic
        data = _read_json(self.annotation_file)
        self.images = _check_images(data["images"], self.annotation_file)
        self.image_ids = [image["id"] for image in self.images]
        self.image_sizes = [(image["height"], image["width"]) for image in self.images]
        self.category_ids, names = _check_categories(data["categories"], self.annotation_file)
        self.label_of = {cid: label for label, cid in enumerate(self.category_ids, start=1)}
        self.categories = ["background"] + names
        size_of = dict(zip(self.image_ids, self.image_sizes, strict=True))
        self.annotations = {image_id: [] for image_id in self.image_ids}  # the kept ones, by image id
        self.skipped_boxes = self.num_crowd = 0
        # image id -> whether its pixels are turned upright by its EXIF orientation before use: only when
        # the turned size is the file's width and height and the stored one is not (a tool that showed
        # the photo upright, as browsers and OpenCV do, made the annotations). A flip or a half turn keeps
        # the size, so the file cannot tell: those pixels are used as stored (orientations_kept lists them).
        self.turned: dict[int, bool] = {}
        self.orientations_kept: dict[int, int] = {}
        for i, ann in enumerate(data["annotations"]):
            _check_annotation(ann, i, self.annotation_file, size_of, self.label_of)
            self.num_crowd += bool(ann.get("iscrowd", 0))
            if ann["bbox"][2] == 0 or ann["bbox"][3] == 0:
                self.skipped_boxes += 1
            else:
                self.annotations[ann["image_id"]].append(ann)
        kept = [a for anns in self.annotations.values() for a in anns]
        self.masks = _resolve_masks(masks, kept, self.annotation_file, semantic)
        if self.masks:
            for ann in kept:
                if _has_segmentation(ann):
                    try:
                        check_segmentation(ann["segmentation"], *size_of[ann["image_id"]])
                    except ValueError as error:
                        raise ValueError(f"CocoDataset: {_where(self.annotation_file, ann)}: {error}") from None
        if semantic and not self.masks:
            raise ValueError(
                f"CocoDataset: semantic=True paints instance masks, but masks are off for {self.annotation_file} "
                f"(masks={masks!r}; no annotation has a 'segmentation', or masks=False was given)"
            )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        """key: an index, or (index, salt): the same image, augmented differently for each salt."""
        index, salt = split_key(key)
        info = self.images[index]
        image = self._read_image(info)
        h, w = self.image_sizes[index]
        anns = self.annotations[info["id"]]
        crowd = [bool(a.get("iscrowd", 0)) for a in anns]
        keep = [not (self.train and c) for c in crowd]  # training leaves the crowds out
        objects = [a for a, k in zip(anns, keep, strict=True) if k]
        boxes = torch.tensor([a["bbox"] for a in objects], dtype=torch.float32).reshape(-1, 4)  # (K, 4) xywh
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        target = {
            "boxes": boxes,
            "labels": torch.tensor([self.label_of[a["category_id"]] for a in objects], dtype=torch.int64),
            "iscrowd": torch.tensor([int(a.get("iscrowd", 0)) for a in objects], dtype=torch.int64),
            "area": torch.tensor([float(a.get("area", a["bbox"][2] * a["bbox"][3])) for a in objects]),
            "image_id": int(info["id"]),
        }
        if self.masks:  # the semantic map needs the crowds' masks, even when the targets leave them out
            masks = [self.decode_mask(a, h, w) if k or self.semantic else None for a, k in zip(anns, keep, strict=True)]
            kept_masks = [m for m, k in zip(masks, keep, strict=True) if k]
            target["masks"] = torch.from_numpy(_stack(kept_masks, h, w).astype(np.uint8))  # (K, H, W)
            if self.semantic:
                labels = [self.label_of[a["category_id"]] for a in anns]
                target["semantic"] = semantic_map(_stack(masks, h, w), labels, crowd)  # (H, W)
        if self.transforms is not None:
            generator = torch.Generator().manual_seed(
                int(np.random.default_rng([self.seed, index, salt]).integers(2**62))
            )
            image, target = self.transforms(image, target, generator)
        return image, target

    def check_image_files(self, any_size: bool = False) -> None:
        """Every image file exists, Pillow can read its header, and its size is the one the annotation
        file gives (as stored, or once turned upright by its EXIF orientation: see `turned`). A stat
        and a header read each, no decoding: call before a long run to fail at once. A file whose data
        is cut short after a good header is found only when it is read. any_size: images over Pillow's
        pixel limit pass (to be tiled: minimtl.data.convert.coco_file)."""
        missing = [info for info in self.images if not (self.image_dir / info["file_name"]).is_file()]
        if missing:
            first = missing[0]
            raise FileNotFoundError(
                f"CocoDataset: image {self.image_dir / first['file_name']} (image id {first['id']}, listed in "
                f"{self.annotation_file}) does not exist"
                + (f"; {len(missing) - 1} more are missing" if len(missing) > 1 else "")
                + self._where_they_are(first["file_name"])
            )
        wrong = [(info, problem) for info in self.images if (problem := self._check_header(info, any_size))]
        if wrong:
            (info, problem), more = wrong[0], len(wrong) - 1
            raise ImageFileError(
                f"CocoDataset: image id {info['id']}: {problem}" + (f"; {more} more such images" if more else "")
            )

    def _check_header(self, info: dict, any_size: bool = False) -> str | None:
        """What is wrong with one image file, judged from its header; None if nothing. Records whether
        its pixels are to be turned upright (self.turned) and the orientations its size cannot decide."""
        path = self.image_dir / info["file_name"]
        try:
            with open_image(path, decode=False, any_size=any_size) as im:
                (width, height), orientation = im.size, exif_orientation(im)
        except ImageTooLargeError as error:  # with the command that tiles this very file
            tiled = self.annotation_file.parent / "tiled" / self.annotation_file.name
            convert = f"--from coco --input {self.annotation_file} --images {self.image_dir} --out {tiled}"
            return str(ImageTooLargeError("", path, error.width, error.height, error.limit, convert))
        except ValueError as error:
            return str(error).removeprefix("read_image: ")
        said = (info["width"], info["height"])
        turned = turns_size(orientation) and (height, width) == said != (width, height)  # a square cannot tell
        self.turned[info["id"]] = turned
        if (width, height) == said or turned:
            if orientation != 1 and not turned and (not turns_size(orientation) or width == height):
                self.orientations_kept[info["id"]] = orientation  # the size cannot tell: used as stored
            return None
        return (
            f"{path} is {width} x {height} (width x height), {self.annotation_file} says {said[0]} x {said[1]}"
            + (f" (its EXIF orientation {orientation} turns it to {height} x {width}, no match either)"
               if turns_size(orientation) else "")
        )  # fmt: skip

    def _where_they_are(self, file_name: str) -> str:
        """A hint when the file is in images/ beside the annotation file, where minimtl's converters and
        `data fetch` write them (file_names relative to that folder)."""
        folder = Path(self.annotation_file).parent / "images"
        if folder != self.image_dir and (folder / file_name).is_file():
            return f"; it is in {folder}: give that folder as the images' folder (--coco-images {folder})"
        return ""

    def _read_image(self, info: dict) -> torch.Tensor:
        """The image of one entry of "images", checked against its height and width: (3, H, W)."""
        path = self.image_dir / info["file_name"]
        try:
            if info["id"] not in self.turned:  # decided from the header, once per image (see turned)
                self._check_header(info)  # what it finds wrong, the read below reports
            image = read_image(path, orient=self.turned.get(info["id"], False))
        except FileNotFoundError:
            raise FileNotFoundError(f"CocoDataset: image {path} (image id {info['id']}) does not exist") from None
        except ImageFileError as error:
            raise ImageFileError(f"CocoDataset: image id {info['id']}: {error}") from None
        if image.shape[1:] != (info["height"], info["width"]):
            raise ImageFileError(
                f"CocoDataset: image {path} (image id {info['id']}) is {image.shape[2]} x {image.shape[1]} "
                f"(width x height), {self.annotation_file} says {info['width']} x {info['height']}"
            )
        return image

    def decode_mask(self, ann: dict, h: int, w: int) -> np.ndarray:
        """The (H, W) bool mask of an annotation; a crowd without a segmentation covers its box."""
        if not _has_segmentation(ann):
            mask = np.zeros((h, w), dtype=bool)
            x, y, bw, bh = ann["bbox"]
            # the pixels whose centre (c + 0.5) lies in [x, x + w): c from ceil(x - 0.5) to ceil(x + w - 0.5) - 1
            mask[_centres(y, y + bh, h), _centres(x, x + bw, w)] = True
            return mask
        return decode_segmentation(ann["segmentation"], h, w)


def semantic_map(masks: np.ndarray, labels: list[int], iscrowd: list[bool]) -> torch.Tensor:
    """masks (K, H, W) bool -> (H, W) int64: 0 background, the label of the instance on top, IGNORE for crowds.
    Instances are painted in order of decreasing area (stable), so the smaller of two overlapping ones wins."""
    masks = np.asarray(masks, dtype=bool)  # uint8 masks would index as positions, not as a selection
    out = np.zeros(masks.shape[1:], dtype=np.int64)  # (H, W)
    areas = masks.sum(axis=(1, 2))  # (K,)
    for k in np.argsort(-areas, kind="stable"):
        out[masks[k]] = IGNORE if iscrowd[k] else labels[k]
    return torch.from_numpy(out)


def _stack(masks: list[np.ndarray], h: int, w: int) -> np.ndarray:
    """K (H, W) masks -> (K, H, W) bool, also for K = 0."""
    return np.stack(masks) if masks else np.zeros((0, h, w), dtype=bool)


def _centres(start: float, end: float, size: int) -> slice:
    return slice(max(0, math.ceil(start - 0.5)), min(size, math.ceil(end - 0.5)))


def _where(file: Path, ann, i: int | None = None) -> str:
    """How an error names an annotation: by its id, else by its place in the list (or its image)."""
    fallback = f"#{i}" if i is not None else f"without an id (image id {ann.get('image_id')})"
    return f"{file}: annotation {ann.get('id', fallback) if isinstance(ann, dict) else fallback}"


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _has_segmentation(ann: dict) -> bool:
    return ann.get("segmentation") not in (None, [], {})


def _read_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"CocoDataset: annotation file {file} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"CocoDataset: {file} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"CocoDataset: {file} is not a COCO file: expected a JSON object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            got = "nothing" if key not in data else type(data[key]).__name__
            raise ValueError(f"CocoDataset: {file} is not a COCO file: it needs a list {key!r}, got {got}")
    return data


def _check_images(images: list, file: Path) -> list[dict]:
    seen = {}
    for i, image in enumerate(images):
        if not isinstance(image, dict):
            raise ValueError(f"CocoDataset: {file}: images[{i}] must be an object, got {type(image).__name__}")
        missing = [k for k in ("id", "file_name", "height", "width") if k not in image]
        if missing:
            raise ValueError(f"CocoDataset: {file}: images[{i}] is missing {missing}")
        if not _is_int(image["id"]):
            raise ValueError(f"CocoDataset: {file}: images[{i}] has the id {image['id']!r}, expected an integer")
        for k in ("height", "width"):
            if not _is_int(image[k]) or image[k] <= 0:
                raise ValueError(
                    f"CocoDataset: {file}: image {image['id']} has the {k} {image[k]!r}, expected an integer > 0"
                )
        if image["id"] in seen:
            first = seen[image["id"]]
            raise ValueError(f"CocoDataset: {file}: image id {image['id']} appears twice: images[{first}] and [{i}]")
        seen[image["id"]] = i
    return images


def _check_categories(categories: list, file: Path) -> tuple[list[int], list[str]]:
    """The category ids in increasing order, and their names."""
    names = {}
    for i, category in enumerate(categories):
        if not isinstance(category, dict) or not _is_int(category.get("id")):
            raise ValueError(f"CocoDataset: {file}: categories[{i}] needs an integer 'id', got {category!r:.80}")
        if category["id"] in names:
            raise ValueError(f"CocoDataset: {file}: category id {category['id']} appears twice")
        names[category["id"]] = str(category.get("name", category["id"]))
    ids = sorted(names)
    return ids, [names[cid] for cid in ids]


def _check_annotation(ann, i: int, file: Path, size_of: dict, label_of: dict) -> None:
    """What the JSON alone can tell about one annotation; segmentations are checked once masks are decided."""
    where = _where(file, ann, i)
    if not isinstance(ann, dict):
        raise ValueError(f"CocoDataset: {where} must be an object, got {type(ann).__name__}")
    missing = [k for k in ("image_id", "category_id", "bbox") if k not in ann]
    if missing:
        raise ValueError(f"CocoDataset: {where} is missing {missing}")
    if ann["category_id"] not in label_of:
        raise ValueError(f"CocoDataset: {where} has the unknown category id {ann['category_id']!r}")
    if ann["image_id"] not in size_of:
        raise ValueError(f"CocoDataset: {where} refers to the unknown image id {ann['image_id']!r}")
    bbox = ann["bbox"]
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        raise ValueError(f"CocoDataset: {where}: bbox must be 4 finite numbers [x, y, width, height], got {bbox!r:.80}")
    if bbox[2] < 0 or bbox[3] < 0:
        raise ValueError(f"CocoDataset: {where}: bbox {bbox} has a negative width or height")
    if ann.get("iscrowd", 0) not in (0, 1):
        raise ValueError(f"CocoDataset: {where}: iscrowd must be 0 or 1, got {ann['iscrowd']!r}")


class MissingMasksError(ValueError):
    """Masks are needed (asked for, or painted into semantic targets), or half the objects have them,
    but an annotation has no segmentation."""


def _resolve_masks(masks: bool | None, anns: list[dict], file: Path, semantic: bool = False) -> bool:
    """masks=None: on when every non-crowd annotation has a segmentation, off when none has."""
    if masks is False:
        return False
    if masks not in (None, True):
        raise ValueError(f"CocoDataset: masks must be None, True or False, got {masks!r}")
    objects = [a for a in anns if not a.get("iscrowd", 0)]
    lacking = [a for a in objects if not _has_segmentation(a)]
    having = len(objects) - len(lacking)
    if lacking and (having or masks):
        others = f"{having} other annotations have one" if having else "no annotation has one (masks=True)"
        way_out = "the semantic targets are painted from them" if semantic else "or pass masks=False for boxes only"
        raise MissingMasksError(
            f"CocoDataset: {_where(file, lacking[0])} has no 'segmentation' (or an empty one), but {others}; "
            f"give every object a segmentation{':' if semantic else ','} {way_out}"
        )
    # only crowds, or no annotations at all: masks when a crowd has one, or when asked for
    return bool(masks) or having > 0 or (not objects and any(_has_segmentation(a) for a in anns))
