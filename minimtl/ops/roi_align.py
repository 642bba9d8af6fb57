"""RoIAlign (He et al., "Mask R-CNN", ICCV 2017, section 3): `roi_align` and the `RoIAlign` module.

Kernels: csrc/cpu/roi_align.cpp (channels-last gather and scatter), csrc/cuda/roi_align.cu (one
thread per output element), geometry in csrc/roi_align_math.h. Reference: minimtl/ops/reference.py.
Chapter: notebooks/03_roi_align.ipynb.

Shapes: N images, C channels, H x W map, K RoIs, ph x pw output.
"""

import torch
from torch import Tensor, nn

from minimtl.ops import _checks
from minimtl.ops.rois import boxes_to_rois


def _output_size(output_size) -> tuple[int, int]:
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if len(size) != 2 or not all(isinstance(s, int) for s in size):
        raise TypeError(f"roi_align: output_size must be an int or a pair of ints, got {output_size!r}")
    return size


def roi_align(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    *,
    check_indices: bool = True,
) -> Tensor:
    """RoIAlign: a fixed ph x pw grid of features for each box, without rounding the box to pixels.

    Each box is mapped onto the feature map (times `spatial_scale`) and cut into ph x pw bins. Each
    output value is the mean of a gh x gw grid of points sampled in its bin, each point read from
    the map by bilinear interpolation of its four neighbouring pixels. torchvision's semantics:

    * `aligned=True` shifts the box by -0.5 pixel (pixel i covers [i, i + 1) and its value sits at
      its centre); `aligned=False` (the original Mask R-CNN) does not, and stretches every box to at
      least 1 x 1 on the map.
    * `sampling_ratio > 0`: gh = gw = sampling_ratio; `<= 0`: gh = ceil(box height / ph) and
      gw = ceil(box width / pw) on the map (about one sample per pixel).
    * A point beyond [-1, H] x [-1, W] contributes 0 (a point in [-1, 0) reads the first pixel).
    * A bin is the mean of its gh * gw points, those off the map counted as zeros.

    Args:
        input: Tensor[N, C, H, W]; any memory layout (channels-last is the CPU kernel's fastest).
        boxes: Tensor[K, 5] of (batch_index, x1, y1, x2, y2), or a list of N' <= N Tensor[L, 4],
            the boxes of each image.
        output_size: ph, or (ph, pw).
        spatial_scale: from box to map coordinates, e.g. 1/8 for a map of stride 8.
        sampling_ratio: points per bin side, or <= 0 for adaptive.
        aligned: the half-pixel shift.
        check_indices: check the batch indices of a Tensor[K, 5] on CUDA (see below). Callers that
            made the indices themselves (the poolers, from boxes per image) pass False.

    Returns:
        Tensor[K, C, ph, pw] in input's dtype, contiguous. Differentiable with respect to `input`
        (the boxes get no gradient); a second derivative is refused with an error. The backward is
        deterministic on the CPU; on CUDA it adds with float atomics (the last bits vary from run
        to run), or, under torch.use_deterministic_algorithms(True), with fixed-point integer
        atomics that give the same bits on every run.

    Bad input, never a crash or an out-of-bounds read:

    * A batch index that is negative, fractional, NaN or >= N is an error naming the row. Boxes
      per image get their indices from `boxes_to_rois`, valid by construction: nothing to check.
      A Tensor[K, 5] is checked by the CPU kernel on the host, where it already is; on CUDA, here,
      by one reduction whose answer the host must wait for (a synchronisation). The CUDA kernel
      itself never waits: a RoI with a bad index reads nothing and gives zeros, so with
      `check_indices=False`, under torch.compile and during CUDA-graph capture (where this check
      is skipped, being data-dependent or illegal there) a bad index gives zeros, never a read
      outside the input.
    * A box with a NaN coordinate, or far off the map, gives 0; so does an empty map (H or W = 0).
      With aligned=True and adaptive sampling (sampling_ratio <= 0) a box of size 0 or less has
      no samples and gives 0; with a fixed sampling_ratio its samples still fall at (and, for a
      negative size, around) its corner, and it gives the values read there.
    * An infinite or huge box with adaptive sampling has at most 2**30 samples per bin side, and only
      those that can land on the map are visited, so the work stays bounded by the map's size.

    Dtypes: float32 and float64; float16 and bfloat16 computed (and their gradients accumulated) in
    float32. The boxes may have any floating dtype; they are read in the compute dtype.
    """
    rois = boxes_to_rois(boxes, "roi_align", like=input)
    if not isinstance(boxes, Tensor) and len(boxes) > input.shape[0]:
        raise RuntimeError(
            f"roi_align: boxes is a list of {len(boxes)} tensors (one per image), but input has {input.shape[0]} images"
        )
    if isinstance(boxes, Tensor) and check_indices and rois.is_cuda and not _tracing_or_capturing():
        _checks.check_batch_indices("roi_align", rois, input.shape[0])
    ph, pw = _output_size(output_size)
    return torch.ops.minimtl.roi_align(input, rois, float(spatial_scale), ph, pw, int(sampling_ratio), bool(aligned))


def _tracing_or_capturing() -> bool:
    """Whether a data-dependent check cannot run now: torch.compile is tracing, or a CUDA graph is captured."""
    return torch.compiler.is_compiling() or (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


class RoIAlign(nn.Module):
    """`roi_align` as a module: RoIAlign(output_size, spatial_scale, sampling_ratio, aligned)(input, boxes)."""

    def __init__(
        self, output_size: int | tuple[int, int], spatial_scale: float, sampling_ratio: int, aligned: bool = False
    ):
        super().__init__()
        self.output_size = _output_size(output_size)
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, boxes: Tensor | list[Tensor]) -> Tensor:
        return roi_align(input, boxes, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )


# --- fake kernels (shapes only, for torch.compile) and autograd --------------------------------


@torch.library.register_fake("minimtl::roi_align")
def _(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    _checks.check_roi_align_inputs("roi_align", input, rois, pooled_height, pooled_width)
    return input.new_empty((rois.shape[0], input.shape[1], pooled_height, pooled_width))  # (K, C, ph, pw)


@torch.library.register_fake("minimtl::_roi_align_backward")
def _(
    grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width, sampling_ratio, aligned
):
    _checks.check_roi_align_backward_inputs(
        "_roi_align_backward", grad, rois, pooled_height, pooled_width, batch_size, channels, height, width
    )
    # Each kernel returns grad_input in the layout it accumulates in: channels-last on the CPU
    # (a scatter of C-vectors), NCHW on CUDA (one atomic add per element).
    layout = torch.channels_last if grad.device.type == "cpu" else torch.contiguous_format
    shape = (batch_size, channels, height, width)
    return torch.empty(shape, dtype=grad.dtype, device=grad.device, memory_format=layout)  # (N, C, H, W)


def _memory_format(t: Tensor) -> torch.memory_format:
    channels_last = t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


def _setup_context(ctx, inputs, output):
    input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.input_shape = input.shape
    ctx.memory_format = _memory_format(input)
    ctx.args = (spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)


def _backward(ctx, grad):
    (rois,) = ctx.saved_tensors
    spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = ctx.args
    n, c, h, w = ctx.input_shape
    grad_input = torch.ops.minimtl._roi_align_backward(
        grad, rois, spatial_scale, pooled_height, pooled_width, n, c, h, w, sampling_ratio, aligned
    )
    # The gradient comes back in the input's memory layout (a no-op when the kernel's matches).
    return grad_input.contiguous(memory_format=ctx.memory_format), None, None, None, None, None, None


def _refuse_double_backward(ctx, grad):
    raise RuntimeError(
        "roi_align: double backward (the gradient of roi_align's gradient) is not supported: "
        "the backward is a scatter whose own derivative minimtl does not implement"
    )


torch.library.register_autograd("minimtl::roi_align", _backward, setup_context=_setup_context)
torch.library.register_autograd("minimtl::_roi_align_backward", _refuse_double_backward)
