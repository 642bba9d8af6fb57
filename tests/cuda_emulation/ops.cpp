// The CUDA kernel files csrc/cuda/box_iou.cu and roi_align.cu, compiled for the CPU with
// cuda_on_cpu.h, registered as the CPU ops torch.ops.minimtl_emulated.*: the same host code and
// the same kernels as on a GPU, one thread at a time. tests/test_cuda_emulation.py builds this
// file and compares the ops with the CPU kernels.
#define MINIMTL_CUDA_EMULATION
#include "cuda_on_cpu.h"

#include "cuda/box_iou.cu"
#include "cuda/roi_align.cu"

namespace {

void set_int32_index_limit(int64_t limit) { minimtl_emulation::int32_index_limit = limit; }

}  // namespace

TORCH_LIBRARY(minimtl_emulated, m) {
  m.def("box_iou(Tensor boxes1, Tensor boxes2) -> Tensor");
  m.def("generalized_box_iou(Tensor boxes1, Tensor boxes2) -> Tensor");
  m.def(
      "roi_align(Tensor input, Tensor rois, float spatial_scale, int pooled_height, int pooled_width, "
      "int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, int pooled_height, int pooled_width, "
      "int batch_size, int channels, int height, int width, int sampling_ratio, bool aligned) -> Tensor");
  // Indices up to `limit` use the 32-bit kernels; 0 sends everything down the 64-bit path.
  m.def("set_int32_index_limit(int limit) -> ()", &set_int32_index_limit);
}

TORCH_LIBRARY_IMPL(minimtl_emulated, CPU, m) {
  m.impl("box_iou", &minimtl::box_iou_cuda);
  m.impl("generalized_box_iou", &minimtl::generalized_box_iou_cuda);
  m.impl("roi_align", &minimtl::roi_align_forward_cuda);
  m.impl("_roi_align_backward", &minimtl::roi_align_backward_cuda);
}
