"""Data: a synthetic shapes dataset, COCO-format datasets, augmentation, batching.

ShapesDataset(num_images, image_size=128, seed=0)    circles, squares, triangles; no download
CocoDataset(annotation_file, image_dir)              your COCO-format data (polygons, RLE)
read_image(path)                                     an image file as (3, H, W) float in [0, 1]
encode_rle(mask)                                     a mask as COCO's compressed RLE
make_loader(dataset, batch_size, ...)                batches of (list of images, list of targets)
"""

from minimtl.data.coco import CocoDataset, semantic_map
from minimtl.data.images import read_image
from minimtl.data.loader import collate, make_loader, split_key
from minimtl.data.masks import (
    check_segmentation,
    decode_segmentation,
    encode_rle,
    polygon_to_mask,
    rle_decode,
    rle_encode,
)
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
    "check_segmentation",
    "collate",
    "decode_segmentation",
    "default_train_transforms",
    "encode_rle",
    "make_loader",
    "polygon_to_mask",
    "read_image",
    "rle_decode",
    "rle_encode",
    "semantic_map",
    "split_key",
]
