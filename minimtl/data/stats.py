"""What a COCO-format dataset holds, and whether the model's anchors can reach its objects.

`data_stats(dataset, anchor_sizes, aspect_ratios, min_size, max_size)` reads the annotations (not the
images) of a `CocoDataset` and measures:

* images, objects per class, objects per image, crowds;
* box sizes and aspect ratios (h / w), in the file's pixels and in the model's: every image is
  resized as `ImageTransform` resizes it (shorter side min_size, longer at most max_size);
* the mask coverage of each image (the share of its pixels inside some object's mask);
* for every object, its best IoU with any anchor the RPN places on that image: the anchors of all
  pyramid levels P2..P6 (strides 4 ... 64) on the padded, resized image, exactly as the model lays
  them out. An object whose best IoU is low has no anchor of about its size and shape nearby.

How the RPN uses that number (minimtl/modeling/rpn.py, Faster R-CNN section 3.1.2): an anchor is a
positive when its IoU with an object is ≥ 0.7, and each object's best anchors are positives too,
however low their IoU ("low-quality matches"). So every object gets a positive, but one whose best
anchor overlaps it at IoU 0.3 is learnt from a poor start: the box deltas must stretch far, and in
evaluation the proposals for it are few and loose. IoU ≥ 0.5 is the usual bar for "some anchor
fits"; the statistics report the share of objects below it, by size.

Choosing anchors for small objects (the question users of every detector ask): anchors of size s at
stride 4 cannot fit an object much smaller than s — a 6-pixel object inside a 16-pixel anchor has IoU
36 / 256 = 0.14 at best. Two remedies, which `suggest_anchor_sizes` compares: smaller anchors
(halve every level's size: P2 then holds 8-pixel anchors), or larger images (data.min_size: every
object grows with the image, at a cost in time and memory that grows with the pixels). Objects can
also fall between two levels: one size per level leaves an object of 1.41 s (halfway, in the log,
between s and 2 s) at IoU 0.71 with either anchor when perfectly aligned, and a stride away from an
anchor's centre much less; a second size per level (s * sqrt(2)) fills the gap, at the cost of
twice the anchors.

Shapes: K objects in all (crowds and empty boxes left out); per-object arrays are (K,) or (K, 2).
"""

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from minimtl.modeling.anchors import AnchorGenerator
from minimtl.ops import box_iou

STRIDES = (4, 8, 16, 32, 64)  # P2 ... P6
SIZE_BINS = ((0, 16), (16, 32), (32, 64), (64, 128), (128, math.inf))  # sqrt(w h) in the model's pixels


@dataclass
class DataStats:
    """The measurements of `data_stats` (see the module docstring)."""

    classes: list[str]  # the category names, label 1..C (index 0 is the background)
    num_images: int
    num_crowd: int
    objects_per_image: np.ndarray  # (I,) int
    labels: np.ndarray  # (K,) int, 1..C
    sizes: np.ndarray  # (K, 2) float: width, height in the file's pixels
    model_sizes: np.ndarray  # (K, 2) float: width, height after resizing
    best_anchor_iou: np.ndarray  # (K,) float
    mask_coverage: np.ndarray | None  # (I,) float in [0, 1]; None without masks
    anchor_sizes: tuple
    aspect_ratios: tuple
    min_size: int
    max_size: int
    image_sizes: list = field(default_factory=list)  # (height, width) of each image, as in the file

    @property
    def objects_per_class(self) -> list[int]:
        return np.bincount(self.labels, minlength=len(self.classes))[1:].tolist()

    @property
    def aspect(self) -> np.ndarray:
        """h / w of each object (the anchors' aspect ratio convention). (K,)"""
        return self.sizes[:, 1] / self.sizes[:, 0]

    def unreached(self, iou: float = 0.5) -> np.ndarray:
        """Which objects no anchor overlaps at `iou` or more. (K,) bool"""
        return self.best_anchor_iou < iou

    def summary(self) -> str:
        """The statistics as text, a few lines a person reads."""
        k = len(self.labels)
        lines = [
            f"{self.num_images} images, {k} objects"
            + (f" ({self.num_crowd} crowd regions left out)" if self.num_crowd else "")
            + ", "
            f"{np.mean(self.objects_per_image) if self.num_images else 0:.1f} objects per image "
            f"(max {int(self.objects_per_image.max()) if self.num_images else 0})",
            "objects per class: "
            + ", ".join(f"{c} {n}" for c, n in zip(self.classes[1:], self.objects_per_class, strict=True)),
        ]
        if k == 0:
            return "\n".join(lines + ["no objects: nothing to measure against the anchors"])
        side = np.sqrt(self.model_sizes.prod(1))
        q = np.percentile(side, [5, 50, 95])
        aspect = np.percentile(self.aspect, [5, 50, 95])
        lines += [
            f"model input: shorter side {self.min_size}, longer at most {self.max_size}; object size sqrt(w h) "
            f"there: 5% {q[0]:.0f}, median {q[1]:.0f}, 95% {q[2]:.0f} px; aspect h/w: 5% {aspect[0]:.2f}, "
            f"median {aspect[1]:.2f}, 95% {aspect[2]:.2f}",
            f"anchors: sizes {[list(s) for s in self.anchor_sizes]}, aspect ratios {list(self.aspect_ratios[0])}",
            f"objects no anchor reaches at IoU >= 0.5: {self.unreached(0.5).mean():.1%} "
            f"(at IoU >= 0.7, the RPN's positive threshold: {self.unreached(0.7).mean():.1%})",
        ]
        for low, high in SIZE_BINS:
            inside = (side >= low) & (side < high)
            if inside.any():
                name = f"{low}-{high:g} px" if high < math.inf else f">= {low} px"
                n, plural = int(inside.sum()), "s" if inside.sum() > 1 else " "
                lines.append(
                    f"  size {name:>11}: {n:6d} object{plural}, {self.unreached(0.5)[inside].mean():6.1%} unreached, "
                    f"median best IoU {np.median(self.best_anchor_iou[inside]):.2f}"
                )
        if self.mask_coverage is not None:
            lines.append(f"mask coverage: {np.mean(self.mask_coverage):.1%} of the pixels, on average per image")
        return "\n".join(lines)


def resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """The (height, width) ImageTransform resizes an image to (interpolate with a scale factor floors)."""
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return math.floor(height * scale), math.floor(width * scale)


def feature_shapes(height: int, width: int) -> list[tuple[int, int]]:
    """The (Hl, Wl) of P2..P6 for one resized image, padded to a multiple of 32 as the model pads it.
    P2-P5 divide the padded size exactly; P6 is P5 subsampled by 2 (a 1x1 max-pool, stride 2): ceil."""
    hp, wp = math.ceil(height / 32) * 32, math.ceil(width / 32) * 32
    shapes = [(hp // s, wp // s) for s in STRIDES[:4]]
    return shapes + [(math.ceil(shapes[-1][0] / 2), math.ceil(shapes[-1][1] / 2))]


def best_anchor_iou(boxes: torch.Tensor, height: int, width: int, anchors: AnchorGenerator) -> torch.Tensor:
    """For boxes (K, 4) on a resized image of (height, width): each one's best IoU with the anchors. (K,)"""
    if len(boxes) == 0:
        return boxes.new_zeros(0)
    shapes = feature_shapes(height, width)
    padded = (shapes[0][0] * 4, shapes[0][1] * 4)
    every = torch.cat(anchors(padded, shapes))  # (sum_l Hl*Wl*A, 4)
    best = torch.zeros(len(boxes))
    for start in range(0, len(boxes), 64):  # 64 objects at a time: the (64, anchors) IoU matrix stays small
        best[start : start + 64] = box_iou(boxes[start : start + 64], every).amax(dim=1)
    return best


def data_stats(dataset, anchor_sizes, aspect_ratios, min_size: int, max_size: int, masks: bool = True) -> DataStats:
    """Measure a CocoDataset against anchors and an image size; see the module docstring.
    masks: compute the mask coverage (it decodes every mask, which takes a while on a large set)."""
    generator = AnchorGenerator(anchor_sizes, aspect_ratios)
    labels, sizes, model_sizes, ious, counts, coverage = [], [], [], [], [], []
    for info, (h, w) in zip(dataset.images, dataset.image_sizes, strict=True):
        anns = [a for a in dataset.annotations[info["id"]] if not a.get("iscrowd", 0)]
        counts.append(len(anns))
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)  # (K, 4) xywh
        boxes[:, 2:] += boxes[:, :2]  # -> xyxy
        rh, rw = resized_size(h, w, min_size, max_size)
        scaled = boxes * torch.tensor([rw / w, rh / h, rw / w, rh / h])  # as resize_boxes scales them
        labels += [dataset.label_of[a["category_id"]] for a in anns]
        sizes.append((boxes[:, 2:] - boxes[:, :2]).numpy())
        model_sizes.append((scaled[:, 2:] - scaled[:, :2]).numpy())
        ious.append(best_anchor_iou(scaled, rh, rw, generator).numpy())
        if masks and dataset.masks:
            union = np.zeros((h, w), dtype=bool)
            for ann in dataset.annotations[info["id"]]:  # crowds cover pixels too
                union |= dataset.decode_mask(ann, h, w).astype(bool)
            coverage.append(union.mean() if h * w else 0.0)
    return DataStats(
        classes=list(dataset.categories),
        num_images=len(dataset.images),
        num_crowd=dataset.num_crowd,
        objects_per_image=np.asarray(counts, dtype=np.int64),
        labels=np.asarray(labels, dtype=np.int64),
        sizes=np.concatenate(sizes) if sizes else np.zeros((0, 2), np.float32),
        model_sizes=np.concatenate(model_sizes) if model_sizes else np.zeros((0, 2), np.float32),
        best_anchor_iou=np.concatenate(ious) if ious else np.zeros(0, np.float32),
        mask_coverage=np.asarray(coverage) if (masks and dataset.masks) else None,
        anchor_sizes=tuple(tuple(s) for s in anchor_sizes),
        aspect_ratios=tuple(tuple(r) for r in aspect_ratios),
        min_size=min_size,
        max_size=max_size,
        image_sizes=list(dataset.image_sizes),
    )


def suggest_anchor_sizes(dataset, stats: DataStats, smallest=(8, 16, 32, 64)) -> list[tuple[tuple, float, float]]:
    """The anchor sizes to try: for each smallest size s in `smallest`, the levels (s, 2s, 4s, 8s, 16s)
    (one scale per octave), and the same with a second size s * sqrt(2) on each level (two scales per
    octave: an object between two levels' sizes, the worst case of one scale, gets an anchor of about
    its size; RetinaNet uses three), with the current aspect ratios and image size.
    [(anchor_sizes, unreached share at IoU 0.5, at IoU 0.7)], best first: fewest unreached at 0.5,
    then at 0.7 (the RPN's positive threshold), then fewer anchors, then the current first size nearest."""
    tried = []
    for s in smallest:
        for scales in (1, 2):
            sizes = tuple(
                tuple(round(s * 2**level * 2 ** (k / 2)) for k in range(scales)) for level in range(5)
            )  # fmt: skip
            other = data_stats(dataset, sizes, stats.aspect_ratios, stats.min_size, stats.max_size, masks=False)
            shares = [float(other.unreached(iou).mean()) if len(other.labels) else 0.0 for iou in (0.5, 0.7)]
            tried.append((sizes, *shares))
    current = stats.anchor_sizes[0][0]
    return sorted(
        tried, key=lambda t: (round(t[1], 4), round(t[2], 4), len(t[0][0]), abs(math.log2(t[0][0][0] / current)))
    )
