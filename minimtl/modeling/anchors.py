"""Anchors (Ren et al., "Faster R-CNN", NeurIPS 2015, section 3.1.1; FPN paper section 4.1).

An anchor is a reference box that the RPN scores ("is there an object?") and refines (box deltas).
At every cell of a feature level sit A = len(sizes) x len(aspect_ratios) anchors, all centred on
the cell's top-left corner in image pixels, (x, y) = (j * stride, i * stride). With FPN, each level
gets one size (32 on P2 ... 512 on P6) and three aspect ratios (0.5, 1, 2).

For size s and aspect ratio r = h / w the anchor keeps the area s^2:
    h = s * sqrt(r),  w = s / sqrt(r),  anchor = round((-w/2, -h/2, w/2, h/2)) + (x, y, x, y)

Shapes: levels l with Hl x Wl cells; anchors per level (Hl * Wl * A, 4), ordered cell by cell
(row-major), A anchors per cell, which is the order the RPN head's outputs are flattened in.
"""

import torch
from torch import Tensor, nn


class AnchorGenerator(nn.Module):
    """forward(image_size, feature_shapes) -> anchors of all levels, (sum_l Hl*Wl*A, 4).

    Args:
        sizes: one tuple of sizes per level, e.g. ((32,), (64,), (128,), (256,), (512,)).
        aspect_ratios: one tuple of ratios h / w per level.
    """

    def __init__(self, sizes=((32,), (64,), (128,), (256,), (512,)), aspect_ratios=((0.5, 1.0, 2.0),) * 5):
        super().__init__()
        if len(sizes) != len(aspect_ratios):
            raise ValueError(f"anchors: one aspect-ratio tuple per level, got {len(sizes)} sizes, {len(aspect_ratios)}")
        self.sizes, self.aspect_ratios = tuple(sizes), tuple(aspect_ratios)
        self.cell_anchors = [cell_anchors(s, r) for s, r in zip(self.sizes, self.aspect_ratios, strict=True)]
        self._cache: dict[tuple, list[Tensor]] = {}

    def num_anchors_per_location(self) -> list[int]:
        return [len(s) * len(r) for s, r in zip(self.sizes, self.aspect_ratios, strict=True)]

    def forward(self, image_size: tuple[int, int], feature_shapes: list[tuple[int, int]], dtype=None, device=None):
        """Anchors of each level, for a (padded) batch of image_size = (H, W). list of (Hl*Wl*A, 4)."""
        if len(feature_shapes) != len(self.cell_anchors):
            raise ValueError(f"anchors: {len(self.cell_anchors)} levels configured, got {len(feature_shapes)} maps")
        key = (tuple(image_size), tuple(map(tuple, feature_shapes)), dtype, device)
        if key not in self._cache:  # the same image size gives the same anchors: compute them once
            if len(self._cache) > 16:
                self._cache.clear()
            self._cache[key] = [
                grid_anchors(base.to(dtype=dtype, device=device), shape, _stride(image_size, shape))
                for base, shape in zip(self.cell_anchors, feature_shapes, strict=True)
            ]
        return self._cache[key]


def cell_anchors(sizes, aspect_ratios, dtype=torch.float32) -> Tensor:
    """The A anchors of one cell, centred on (0, 0). (A, 4), ratio-major: A = len(ratios) * len(sizes)."""
    sizes = torch.as_tensor(sizes, dtype=dtype)
    ratios = torch.as_tensor(aspect_ratios, dtype=dtype)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    widths = (w_ratios[:, None] * sizes[None, :]).reshape(-1)  # (A,)
    heights = (h_ratios[:, None] * sizes[None, :]).reshape(-1)  # (A,)
    return (torch.stack([-widths, -heights, widths, heights], dim=1) / 2).round()


def _stride(image_size, feature_shape) -> tuple[int, int]:
    """The level's stride in pixels: the padded image size over the map size, rounded down."""
    return image_size[0] // feature_shape[0], image_size[1] // feature_shape[1]


def grid_anchors(base: Tensor, shape: tuple[int, int], stride: tuple[int, int]) -> Tensor:
    """The cell anchors shifted to every cell of an (H, W) map with the given stride. (H*W*A, 4)"""
    height, width = shape
    shifts_x = torch.arange(width, dtype=torch.int32, device=base.device) * stride[1]  # (W,)
    shifts_y = torch.arange(height, dtype=torch.int32, device=base.device) * stride[0]  # (H,)
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")  # (H, W) each
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)  # (H*W, 4)
    return (shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4)  # (H*W*A, 4)
