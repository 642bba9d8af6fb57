// The CUDA kernel files csrc/cuda/box_iou.cu, nms.cu and roi_align.cu, compiled for the CPU with
// cuda_on_cpu.h, registered as the CPU ops torch.ops.minimtl_emulated.*: the same host code and
// the same kernels as on a GPU, run by CPU threads. tests/test_cuda_emulation.py builds this file
// (with tests/cuda_emulation/emulation.py) and compares the ops with the CPU kernels. A few more ops
// switch on the emulation's trace and thread order (cuda_on_cpu.h); chapter 13
// (notebooks/13_cuda_kernels.ipynb) uses them to show which thread does what.
#define MINIMTL_CUDA_EMULATION
#include "cuda_on_cpu.h"

#include "cuda/box_iou.cu"
#include "cuda/nms.cu"
#include "cuda/roi_align.cu"

#include <memory>
#include <string>
#include <tuple>

namespace {

void set_int32_index_limit(int64_t limit) { minimtl_emulation::int32_index_limit = limit; }

// How many times the host code has waited for the GPU (copies to the host, stream synchronisations).
int64_t host_waits() { return minimtl_emulation::host_waits; }

// A kernel that does nothing, launched with the given grid and block: the launch checks of cuda_on_cpu.h.
__global__ void empty_kernel() {}
void launch_empty_kernel(std::vector<int64_t> grid, std::vector<int64_t> block) {
  TORCH_CHECK(grid.size() == 3 && block.size() == 3, "launch_empty_kernel: grid and block must have 3 sizes each");
  MINIMTL_LAUNCH(dim3(grid[0], grid[1], grid[2]), dim3(block[0], block[1], block[2]), nullptr, empty_kernel)();
}

// The trace (cuda_on_cpu.h): from trace_start to trace_stop, every launch is recorded.
void trace_start(std::vector<std::string> kernels, std::vector<int64_t> arguments,
                 std::vector<int64_t> numels) {
  TORCH_CHECK(minimtl_emulation::trace == nullptr, "trace_start: a trace is running already (call trace_stop)");
  TORCH_CHECK(kernels.size() == arguments.size() && kernels.size() == numels.size(),
              "trace_start: kernels, arguments and numels must have one entry per watched buffer, got ", kernels.size(),
              ", ", arguments.size(), " and ", numels.size());
  auto* trace = new minimtl_emulation::Trace;
  for (size_t k = 0; k < kernels.size(); ++k) {
    TORCH_CHECK(numels[k] >= 0, "trace_start: numels must not be negative, got ", numels[k]);
    trace->watches.push_back({kernels[k], arguments[k], numels[k]});
  }
  minimtl_emulation::trace = trace;
}

template <typename T>
at::Tensor as_tensor(const std::vector<T>& values, int64_t columns, at::ScalarType dtype) {
  at::Tensor out = at::empty({static_cast<int64_t>(values.size()) / columns, columns}, dtype);
  if (!values.empty()) std::memcpy(out.data_ptr(), values.data(), values.size() * sizeof(T));
  return out;
}

// (kernel names joined by newlines, launches (L, 6), threads (E, 5), writes (W, 4), atomics (A, 4),
// atomic values (A,)): the columns are those of minimtl_emulation::Trace.
std::tuple<std::string, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> trace_stop() {
  TORCH_CHECK(minimtl_emulation::trace != nullptr, "trace_stop: no trace is running (call trace_start)");
  std::unique_ptr<minimtl_emulation::Trace> trace(minimtl_emulation::trace);
  minimtl_emulation::trace = nullptr;
  std::string kernels;
  for (const std::string& name : trace->kernels) kernels += name + "\n";
  return {kernels,
          as_tensor(trace->launches, 6, at::kLong),
          as_tensor(trace->threads, 5, at::kLong),
          as_tensor(trace->writes, 4, at::kLong),
          as_tensor(trace->atomics, 4, at::kLong),
          as_tensor(trace->atomic_values, 1, at::kDouble).view({-1})};
}

// seed < 0: the default order; else every launch runs its threads in an order shuffled from seed.
void set_thread_order(int64_t seed) { minimtl_emulation::thread_order_seed = seed; }

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
  // Copies to the host and stream synchronisations so far (cuda_on_cpu.h).
  m.def("host_waits() -> int", &host_waits);
  m.def("launch_empty_kernel(int[] grid, int[] block) -> ()", &launch_empty_kernel);
  // The trace and the thread order of cuda_on_cpu.h (off by default).
  m.def("trace_start(str[] kernels, int[] arguments, int[] numels) -> ()", &trace_start);
  m.def("trace_stop() -> (str, Tensor, Tensor, Tensor, Tensor, Tensor)", &trace_stop);
  m.def("set_thread_order(int seed) -> ()", &set_thread_order);
}

TORCH_LIBRARY_IMPL(minimtl_emulated, CPU, m) {
  m.impl("box_iou", &minimtl::box_iou_cuda);
  m.impl("generalized_box_iou", &minimtl::generalized_box_iou_cuda);
  m.impl("nms", &nms);
  m.impl("batched_nms", &batched_nms);
  m.impl("roi_align", &minimtl::roi_align_forward_cuda);
  m.impl("_roi_align_backward", &minimtl::roi_align_backward_cuda);
}
