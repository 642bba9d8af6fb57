"""minimtl: multi-task object detection and segmentation from scratch, with hand-written kernels.

minimtl.ops        box IoU/GIoU, NMS: C++/CUDA kernels beside readable references
minimtl.bench      `python -m minimtl.bench ops`: kernels vs reference vs torchvision
"""

from minimtl import ops
from minimtl._extension import built_with_cuda

__version__ = "0.1.0"
__all__ = ["ops", "built_with_cuda", "__version__"]
