"""A COCO file as the input of a conversion: nothing to translate, but its images to cut into tiles.

    python -m minimtl data convert --from coco --input big.json --images orthophotos/ --out tiled/ann.json --tile 1024

Aerial photographs and slides are often delivered as COCO files over images of tens of thousands of
pixels a side, more than a detector can take whole (and more than Pillow decodes for training: see
minimtl.data.images). The file is checked as CocoDataset checks it (categories, annotations, masks,
every image's header and size), reading images of any size; the result is the file's own dict,
whose file_names are relative to the images folder, ready for tile_coco.
"""

import json

from minimtl.data.convert.common import find_files


def coco_file(input, images, *, classes=None) -> dict:
    """One COCO file (a path, or a folder or glob that names exactly one .json) and its image folder ->
    its dict, checked. classes: not taken (a COCO file names its own categories)."""
    from minimtl.data.coco import CocoDataset  # the checks a training run would make

    if classes is not None:
        raise ValueError("classes: a COCO file names its own categories; leave classes out")
    files = find_files(input, (".json",), "COCO files")
    if len(files) != 1:
        raise ValueError(f"input: one COCO file at a time, got {len(files)}: {', '.join(map(str, files[:3]))}")
    dataset = CocoDataset(files[0], images)
    dataset.check_image_files(any_size=True)
    coco = json.loads(files[0].read_text())
    return {**coco, "info": {**(coco.get("info") or {}), "source": "coco"}}
