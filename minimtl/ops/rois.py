"""Regions of interest: boxes with the index of the image they belong to.

RoIs are Tensor[K, 5]: (batch_index, x1, y1, x2, y2), the batch index stored as a float. The
operators that take RoIs (roi_align) also accept boxes per image, list[Tensor[L_i, 4]], the form a
detector produces them in; `boxes_to_rois` turns one into the other.
"""

import torch
from torch import Tensor


def boxes_to_rois(
    boxes: Tensor | list[Tensor] | tuple[Tensor, ...], op: str = "boxes_to_rois", like: Tensor | None = None
) -> Tensor:
    """Boxes per image, list[Tensor[L_i, 4]], as RoIs, Tensor[sum L_i, 5]; a Tensor[K, 5] is returned as is.

    The RoIs of image i come in the order of boxes[i], images in order: (i, x1, y1, x2, y2).
    """
    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise RuntimeError(
                f"{op}: boxes must be a Tensor[K, 5] of (batch_index, x1, y1, x2, y2) or a list of "
                f"Tensor[L, 4], got a tensor of shape {tuple(boxes.shape)}"
            )
        return boxes
    if not isinstance(boxes, (list, tuple)) or not all(isinstance(b, Tensor) for b in boxes):
        raise TypeError(
            f"{op}: boxes must be a Tensor[K, 5] or a list of Tensor[L, 4] (one per image), got {type(boxes).__name__}"
        )
    if len(boxes) == 0:  # no images, no RoIs: on `like`'s device and in its dtype when given
        return torch.zeros((0, 5)) if like is None else like.new_zeros((0, 5))
    for i, b in enumerate(boxes):
        if b.dim() != 2 or b.shape[1] != 4:
            raise RuntimeError(
                f"{op}: boxes[{i}] must be a Tensor[L, 4] of (x1, y1, x2, y2), got shape {tuple(b.shape)}"
            )
    dtype = boxes[0].dtype
    index = torch.cat([torch.full((len(b), 1), i, dtype=dtype, device=b.device) for i, b in enumerate(boxes)])  # (K, 1)
    return torch.cat([index, torch.cat([b.to(dtype) for b in boxes])], dim=1)  # (K, 5)
