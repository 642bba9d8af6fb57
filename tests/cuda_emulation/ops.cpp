// The CUDA kernel files csrc/cuda/box_iou.cu, nms.cu and roi_align.cu, compiled for the CPU with
// cuda_on_cpu.h, registered as the CPU ops torch.ops.minimtl_emulated.*: the same host code and
// the same kernels as on a GPU, run by CPU threads. tests/test_cuda_emulation.py builds this file
// and compares the ops with the CPU kernels.
#define MINIMTL_CUDA_EMULATION
#include "cuda_on_cpu.h"

#include "cuda/box_iou.cu"
#include "cuda/nms.cu"
#include "cuda/roi_align.cu"

namespace {

void set_int32_index_limit(int64_t limit) { minimtl_emulation::int32_index_limit = limit; }

// NMS's kernels wait for each other (__syncthreads): their threads run as OS threads.
at::Tensor nms(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  minimtl_emulation::Cooperative scope;
  return minimtl::nms_cuda(boxes, scores, iou_threshold);
}

at::Tensor batched_nms(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                       double iou_threshold) {
  minimtl_emulation::Cooperative scope;
  return minimtl::batched_nms_cuda(boxes, scores, idxs, iou_threshold);
}

}  // namespace

TORCH_LIBRARY(minimtl_emulated, m) {
  m.def("box_iou(Tensor boxes1, Tensor boxes2) -> Tensor");
  m.def("generalized_box_iou(Tensor boxes1, Tensor boxes2) -> Tensor");
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
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
  m.impl("nms", &nms);
  m.impl("batched_nms", &batched_nms);
  m.impl("roi_align", &minimtl::roi_align_forward_cuda);
  m.impl("_roi_align_backward", &minimtl::roi_align_backward_cuda);
}
