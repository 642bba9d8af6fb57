"""Worked solutions to the exercises of chapter 12, your own images (notebooks/12_real_data.ipynb).

`exercise_K` is the answer to exercise K in the form `exercises.ch12.exercise_K` takes, followed by the
reasoning. `MISTAKES[K]` is a plausible wrong answer, which the check rejects. Try the exercise before
you read on.
"""

import math

import numpy as np
import torch

exercise_1 = [4, 7, 13, 2]
"""VOC numbers pixels from 1 and its box includes both ends; minimtl (like COCO) numbers them from 0 and
pixel c covers [c, c + 1). Column 5 in VOC's counting is column 4 from 0, which covers [4, 5), so
x1 = xmin - 1 = 4; the last column, VOC's 17, is 16 from 0 and ends at 17, so x2 = xmax = 17, and the
box is xmax - xmin + 1 = 13 wide. The same along y: y1 = 7, y2 = 9, h = 2. In short x1 = xmin - 1,
x2 = xmax (as detectron2 reads VOC): [x, y, w, h] = [4, 7, 13, 2]. voc_to_coco on a file with this
object says the same."""

exercise_2 = [80, 20, 40, 10]
"""A YOLO line is `class x_centre y_centre width height`, each a fraction of the image: x values of its
width (200), y values of its height (100). Centre (0.5 * 200, 0.25 * 100) = (100, 25), size
(0.2 * 200, 0.1 * 100) = (40, 10); COCO's box starts at the top-left corner, the centre minus half the
size: x = 100 - 20 = 80, y = 25 - 5 = 20. [80, 20, 40, 10]. Had the image been square the two scales
would agree and a swap of width and height would go unnoticed: non-square images are where YOLO
converters are tested."""


def exercise_3(label) -> torch.Tensor:
    """label_boxes(label): the tight box of each nonzero value, in increasing order of value. (K, 4)

    A value's pixels are found with `label == value`; the columns where any of them lie give x, the rows y
    (an (H, W) image is indexed [row, column]). The box runs from the first column to one past the last,
    x2 = max column + 1, so that a one-pixel object is 1 wide, as in COCO and in labelmap_to_coco
    (minimtl.data.convert.labelmap.instances, which finds every value in one sort of the pixels instead of
    one comparison per value: the same boxes, faster on thousands of cells). np.unique sorts the values, so
    the rows come in increasing order of value whatever the values are (3 and 17, not 1 and 2). A value in
    pieces is one object, its box spanning every piece; an image without objects gives an empty (0, 4)
    tensor, not a (0,) one, so that code that indexes boxes[:, 2] still runs.
    """
    label = np.asarray(label)
    boxes = []
    for value in np.unique(label):
        if value == 0:
            continue
        rows, columns = np.nonzero(label == value)
        boxes.append([columns.min(), rows.min(), columns.max() + 1, rows.max() + 1])
    return torch.tensor(np.array(boxes, dtype=np.float64), dtype=torch.float32).reshape(-1, 4)


def _last_column(label) -> torch.Tensor:
    """Wrong: x2 at the last column, not one past it: a one-pixel object gets a box of width 0."""
    return exercise_3(label) - torch.tensor([0.0, 0.0, 1.0, 1.0])


exercise_4 = [0, 96, 192, 288, 372]
"""Tiles of 128 stepping by 128 - 32 = 96 start at 0, 96, 192, 288 while they fit inside (the next, 384,
would end at 512 > 500). The last of those ends at 288 + 128 = 416, leaving columns 416..499 uncovered,
so one more tile is placed flush with the edge: 500 - 128 = 372. It overlaps its neighbour by
416 - 372 = 44 pixels, more than the 32 asked for, but every tile is whole and every pixel in one.
minimtl.data.convert.tiles.tile_starts(500, 128, 32) gives the same list."""

exercise_5 = (math.sqrt(2), 0.5, 1 / math.sqrt(2))
"""Two centred squares of sides w and a overlap in the smaller one: IoU = min(w, a)^2 / max(w, a)^2. For
w/s = r in [1, 2] the anchor s gives 1 / r^2 (falling) and 2s gives r^2 / 4 (rising); the best of the two is
lowest where they are equal, 1 / r^2 = r^2 / 4, r = sqrt(2): IoU 1/2, below the RPN's 0.7 even perfectly
centred. With a third anchor of side sqrt(2) s the anchors are sqrt(2) apart, and the worst case is again
the geometric middle of two neighbours, r = 2^(1/4) (between s and sqrt(2) s) and r = 2^(3/4) (between
sqrt(2) s and 2s): IoU 1 / sqrt(2) = 0.707. Halving the log-spacing takes the square root of the worst IoU:
0.5 -> 0.707, just above 0.7; RetinaNet's three sizes per octave give 2^(-1/3) = 0.79."""

exercise_6 = (9207, 18414)
"""A 192 x 192 image is a multiple of 32, so it is not padded: P2..P6 (strides 4, 8, 16, 32, 64) have
48, 24, 12, 6 and 3 cells a side, 2304 + 576 + 144 + 36 + 9 = 3069 cells. The small preset puts one size
and three aspect ratios on each cell, 3 anchors: 9207. Two sizes per level and three ratios are 6 a cell:
18414, twice as many, and the RPN head's two outputs per anchor double with them. (An image whose side is
not a multiple of 32 is padded up to one first, and P6 is ceil(P5 / 2): AnchorGenerator on the model's
own feature maps counts them, as the check does.)"""

MISTAKES = {
    1: [5, 8, 12, 1],  # VOC's numbers read as 0-based, w = xmax - xmin: both ends of the 1-based count lost
    2: [40, 40, 20, 20],  # width and height swapped: x scaled by the height (100), y by the width (200)
    3: _last_column,
    4: [0, 96, 192, 288],  # forgot the last tile, flush with the edge
    5: (math.sqrt(2), 1 / math.sqrt(2), 2 ** (-1 / 4)),  # IoU taken as the ratio of sides, not of areas
    6: (3069, 6138),  # one anchor per cell and size: the three aspect ratios forgotten
}
