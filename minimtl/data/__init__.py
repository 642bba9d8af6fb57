"""Data: a synthetic shapes dataset, COCO-format datasets, augmentation, batching.

ShapesDataset(num_images, image_size=128, seed=0)    circles, squares, triangles; no download
CocoDataset(annotation_file, image_dir)              your COCO-format data (polygons, RLE)
make_loader(dataset, batch_size, ...)                batches of (list of images, list of targets)
"""

from minimtl.data.coco import CocoDataset
from minimtl.data.loader import collate, make_loader, split_key
from minimtl.data.masks import decode_segmentation, polygon_to_mask, rle_decode, rle_encode
from minimtl.data.shapes import CLASSES as SHAPES_CLASSES
from minimtl.data.shapes import ShapesDataset
from minimtl.data.transforms import ColorJitter, Compose, RandomHorizontalFlip, default_train_transforms

__all__ = [
    "CocoDataset",
    "ColorJitter",
    "Compose",
    "RandomHorizontalFlip",
    "SHAPES_CLASSES",
    "ShapesDataset",
    "collate",
    "decode_segmentation",
    "default_train_transforms",
    "make_loader",
    "polygon_to_mask",
    "rle_decode",
    "rle_encode",
    "split_key",
]
