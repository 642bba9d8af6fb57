"""minimtl's operators: hand-written C++/CUDA kernels, each beside a readable reference.

    box_iou, generalized_box_iou   pairwise IoU / GIoU          csrc/{cpu,cuda}/box_iou.*
    nms, batched_nms               greedy non-maximum suppression csrc/{cpu,cuda}/nms.*
    roi_align, RoIAlign            RoIAlign, forward and backward  csrc/{cpu,cuda}/roi_align.*

Each is a PyTorch custom operator (torch.ops.minimtl.*) with a CPU and a CUDA kernel, a fake
kernel for torch.compile, and a pure-PyTorch version in minimtl.ops.reference.
"""

from minimtl import _extension  # noqa: F401  (loads the kernels: must come first)
from minimtl.ops import reference
from minimtl.ops.boxes import box_iou, clip_boxes_to_image, generalized_box_iou, remove_small_boxes
from minimtl.ops.nms import batched_nms, nms
from minimtl.ops.roi_align import RoIAlign, roi_align
from minimtl.ops.rois import boxes_to_rois

__all__ = [
    "box_iou",
    "generalized_box_iou",
    "nms",
    "batched_nms",
    "roi_align",
    "RoIAlign",
    "boxes_to_rois",
    "clip_boxes_to_image",
    "remove_small_boxes",
    "reference",
]
