"""Hypothesis strategies for boxes: the geometry that breaks box code.

Coordinates come from a small integer grid as often as from floats, so identical boxes, shared
edges, nested boxes, zero-width and inverted boxes and exact IoU ties appear in most examples;
`special=True` mixes in NaN, +-inf and huge or tiny values.
"""

import math

import torch
from hypothesis import strategies as st

GRID = st.integers(-4, 12).map(float)
FLOATS = st.floats(-50, 50, allow_nan=False, width=32)
SPECIAL = st.sampled_from([math.nan, math.inf, -math.inf, 1e30, -1e30, 1e-30, 3e38, -3e38])


@st.composite
def box_lists(draw, min_size=0, max_size=12, special=False):
    """A list of (x1, y1, x2, y2) tuples: random, copied, nested or shifted boxes."""
    coordinate = st.one_of(GRID, FLOATS, SPECIAL) if special else st.one_of(GRID, FLOATS)
    n = draw(st.integers(min_size, max_size))
    boxes = []
    for _ in range(n):
        kind = draw(st.sampled_from(["random", "random", "copy", "nested", "shifted"]))
        if kind == "random" or not boxes:
            x1, y1, x2, y2 = (draw(coordinate) for _ in range(4))
            if draw(st.booleans()):  # mostly well-formed: sort the corners half of the time
                x1, x2, y1, y2 = min(x1, x2), max(x1, x2), min(y1, y2), max(y1, y2)
            boxes.append((x1, y1, x2, y2))
            continue
        x1, y1, x2, y2 = draw(st.sampled_from(boxes))
        if kind == "copy":
            boxes.append((x1, y1, x2, y2))
        elif kind == "nested":
            d = draw(st.sampled_from([0.0, 0.5, 1.0, 2.0]))
            boxes.append((x1 + d, y1 + d, x2 - d, y2 - d))
        else:
            dx, dy = draw(GRID), draw(GRID)
            boxes.append((x1 + dx, y1 + dy, x2 + dx, y2 + dy))
    return boxes


def as_boxes(boxes, dtype=torch.float32, device="cpu"):
    """A list of box tuples as a Tensor[N, 4]."""
    return torch.tensor(boxes, dtype=dtype, device=device).reshape(-1, 4)
