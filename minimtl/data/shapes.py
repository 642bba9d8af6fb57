"""A synthetic instance-segmentation dataset: circles, squares and triangles on textured backgrounds.

No download, any size, deterministic: item i of ShapesDataset(seed=s) is always the same image,
whichever worker draws it and in whatever order. Objects have random colours, sizes, positions and
rotations; later objects may hide part of earlier ones (an object stays at least half visible), so
the masks are the visible parts and the boxes enclose them. The background is a random colour
with a gradient, blotches and pixel noise. In the spirit of matterport's "shapes" sample.

An item is (image, target): image (3, H, W) float in [0, 1]; target "boxes" (K, 4) float xyxy,
"labels" (K,) int64 in 1..3, "masks" (K, H, W) uint8, "semantic" (H, W) int64 (0 = background),
"iscrowd" (K,) int64 zeros, "area" (K,) float (visible pixels).
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from minimtl.data.loader import split_key

CLASSES = ("background", "circle", "square", "triangle")


class ShapesDataset(Dataset):
    """`num_images` synthetic images of `image_size` x `image_size` pixels.

    Args:
        seed: different seeds give disjoint-looking datasets (use one for training, another for testing).
        min_objects, max_objects: objects per image.
        min_size, max_size: the objects' radius (half the side of a square), as a fraction of image_size.
        transforms: called as transforms(image, target, generator) (see minimtl.data.transforms); the
            generator is seeded from (seed, index, salt) so augmentation is deterministic too.
    """

    classes = CLASSES

    def __init__(
        self,
        num_images: int,
        image_size: int = 128,
        seed: int = 0,
        min_objects: int = 1,
        max_objects: int = 4,
        min_size: float = 0.08,
        max_size: float = 0.25,
        transforms=None,
    ):
        if num_images < 0 or image_size < 16 or not 1 <= min_objects <= max_objects:
            raise ValueError(
                f"ShapesDataset: need num_images >= 0, image_size >= 16, 1 <= min_objects <= max_objects; got "
                f"{num_images}, {image_size}, {min_objects}, {max_objects}"
            )
        self.num_images, self.image_size, self.seed = num_images, image_size, seed
        self.min_objects, self.max_objects = min_objects, max_objects
        self.min_size, self.max_size = min_size, max_size
        self.transforms = transforms

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, key):
        """key: an index, or (index, salt): the same image, augmented differently for each salt."""
        index, salt = split_key(key)
        if not 0 <= index < self.num_images:
            raise IndexError(f"ShapesDataset: index {index} out of range for {self.num_images} images")
        image, target = self.draw(np.random.default_rng([self.seed, index]))
        if self.transforms is not None:
            generator = torch.Generator().manual_seed(
                int(np.random.default_rng([self.seed, index, salt, 1]).integers(2**62))
            )
            image, target = self.transforms(image, target, generator)
        return image, target

    def draw(self, rng: np.random.Generator):
        size = self.image_size
        ys, xs = np.mgrid[0:size, 0:size] + 0.5  # pixel centres
        image = _background(rng, size)  # (H, W, 3)
        background_colour = image.mean(axis=(0, 1))
        shapes: list[tuple[int, np.ndarray, np.ndarray]] = []  # (class, full mask, colour)
        wanted = int(rng.integers(self.min_objects, self.max_objects + 1))
        for _ in range(wanted * 10):  # a few tries per object
            if len(shapes) == wanted:
                break
            label = int(rng.integers(1, len(CLASSES)))
            radius = rng.uniform(self.min_size, self.max_size) * size
            centre = rng.uniform(radius * 0.6, size - radius * 0.6, size=2)
            mask = _rasterise(label, centre, radius, rng.uniform(0, 2 * math.pi), xs, ys)
            if mask.sum() < 16:
                continue
            colour = _contrasting_colour(rng, background_colour, [c for _, _, c in shapes])
            candidate = shapes + [(label, mask, colour)]
            if _all_half_visible([m for _, m, _ in candidate]):
                shapes = candidate
        semantic = np.zeros((size, size), dtype=np.int64)
        visible = []
        for k, (label, mask, colour) in enumerate(shapes):
            image[mask] = colour * rng.uniform(0.85, 1.0)  # flat colour, slightly shaded
            semantic[mask] = label
            later = np.zeros_like(mask)
            for _, m, _ in shapes[k + 1 :]:
                later |= m
            visible.append(mask & ~later)
        image = np.clip(image + rng.normal(0, 0.02, size=image.shape), 0, 1)
        masks = np.stack(visible) if visible else np.zeros((0, size, size), dtype=bool)
        boxes = np.array([_bounding_box(m) for m in masks], dtype=np.float32).reshape(-1, 4)
        target = {
            "boxes": torch.from_numpy(boxes),
            "labels": torch.tensor([label for label, _, _ in shapes], dtype=torch.int64),
            "masks": torch.from_numpy(masks.astype(np.uint8)),
            "semantic": torch.from_numpy(semantic),
            "iscrowd": torch.zeros(len(shapes), dtype=torch.int64),
            "area": torch.from_numpy(masks.sum(axis=(1, 2)).astype(np.float32)),
        }
        return torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1).contiguous(), target


def _background(rng, size) -> np.ndarray:
    """A random colour, a linear gradient and soft blotches. (H, W, 3) in [0, 1]."""
    base = rng.uniform(0.1, 0.9, size=3)
    ys, xs = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(0, 2 * math.pi)
    gradient = (np.cos(angle) * xs + np.sin(angle) * ys - 0.5)[..., None] * rng.uniform(-0.3, 0.3, size=3)
    coarse = torch.from_numpy(rng.normal(0, 0.08, size=(1, 3, 5, 5)))  # blotches: a coarse random grid,
    blotches = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=True)  # upsampled smoothly
    return np.clip(base + gradient + blotches[0].permute(1, 2, 0).numpy(), 0, 1)


def _rasterise(label, centre, radius, angle, xs, ys) -> np.ndarray:
    """The pixels whose centre lies in the shape. (H, W) bool."""
    dx, dy = xs - centre[0], ys - centre[1]
    if label == 1:  # circle
        return dx**2 + dy**2 <= radius**2
    c, s = math.cos(angle), math.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy  # rotated coordinates
    if label == 2:  # square of half-side `radius`
        return (np.abs(u) <= radius) & (np.abs(v) <= radius)
    # equilateral triangle with circumradius `radius`: inside all three edges' half-planes
    inside = np.ones_like(dx, dtype=bool)
    for k in range(3):
        normal = 2 * math.pi * k / 3
        inside &= math.cos(normal) * u + math.sin(normal) * v <= radius / 2
    return inside


def _contrasting_colour(rng, background, others) -> np.ndarray:
    """A random colour at least 0.35 (RGB distance) from the background and from the other objects."""
    colour = rng.uniform(0, 1, size=3)
    for _ in range(20):
        if all(np.linalg.norm(colour - c) >= 0.35 for c in [background, *others]):
            break
        colour = rng.uniform(0, 1, size=3)
    return colour


def _all_half_visible(masks) -> bool:
    covered = np.zeros_like(masks[0])
    for mask in reversed(masks):  # the last painted is on top
        if (mask & ~covered).sum() < max(0.5 * mask.sum(), 16):
            return False
        covered |= mask
    return True


def _bounding_box(mask) -> list[float]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]
