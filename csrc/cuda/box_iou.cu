// Pairwise IoU and GIoU on the GPU: one thread per output element, fused in one pass.
//
// Reference: minimtl/ops/reference.py; CPU twin: csrc/cpu/box_iou.cpp; the pair arithmetic is
// csrc/box_math.h, shared with the CPU kernel, so both give the reference's values bit for bit.
//
// Threads along x take consecutive columns j, so a warp writes 32 neighbouring outputs (coalesced)
// and reads 32 neighbouring boxes of boxes2; a thread keeps its column box in registers and walks
// down the rows, where every thread of the warp reads the same row box (one broadcast load).

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>

#include "../box_math.h"
#include "../checks.h"
#include "launch.cuh"

namespace minimtl {
namespace {

constexpr int kColumnsPerBlock = 128;  // threads along x
constexpr int kRowsPerBlock = 4;       // threads along y
constexpr int64_t kMaxRowBlocks = 8192;  // grid.y; the rows beyond are a grid-stride loop

template <typename scalar_t, typename T, bool generalized>
__global__ void pairwise_kernel(const scalar_t* __restrict__ boxes1, const scalar_t* __restrict__ boxes2, int64_t n,
                                int64_t m, scalar_t* __restrict__ out) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= m) return;
  const T bx1 = static_cast<T>(boxes2[4 * j + 0]);
  const T by1 = static_cast<T>(boxes2[4 * j + 1]);
  const T bx2 = static_cast<T>(boxes2[4 * j + 2]);
  const T by2 = static_cast<T>(boxes2[4 * j + 3]);
  const T area_b = box_area(bx1, by1, bx2, by2);
  for (int64_t i = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; i < n;
       i += static_cast<int64_t>(gridDim.y) * blockDim.y) {
    const T ax1 = static_cast<T>(boxes1[4 * i + 0]);
    const T ay1 = static_cast<T>(boxes1[4 * i + 1]);
    const T ax2 = static_cast<T>(boxes1[4 * i + 2]);
    const T ay2 = static_cast<T>(boxes1[4 * i + 3]);
    const T area_a = box_area(ax1, ay1, ax2, ay2);
    const T value = generalized ? pair_giou(ax1, ay1, ax2, ay2, area_a, bx1, by1, bx2, by2, area_b)
                                : pair_iou(ax1, ay1, ax2, ay2, area_a, bx1, by1, bx2, by2, area_b);
    out[i * m + j] = static_cast<scalar_t>(value);
  }
}

template <bool generalized>
at::Tensor pairwise_cuda(const char* op, const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_pairwise_inputs(op, boxes1, boxes2);
  c10::cuda::CUDAGuard guard(boxes1.device());

  const int64_t n = boxes1.size(0), m = boxes2.size(0);
  at::Tensor out = at::empty({n, m}, boxes1.options());  // (N, M)
  if (n == 0 || m == 0) return out;
  const at::Tensor a = boxes1.contiguous(), b = boxes2.contiguous();

  const dim3 block(kColumnsPerBlock, kRowsPerBlock);
  const dim3 grid((m + kColumnsPerBlock - 1) / kColumnsPerBlock,
                  std::min<int64_t>((n + kRowsPerBlock - 1) / kRowsPerBlock, kMaxRowBlocks));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "box_iou_cuda", [&] {
    using T = at::opmath_type<scalar_t>;  // float for float16/bfloat16/float32, double for float64
    MINIMTL_LAUNCH(grid, block, c10::cuda::getCurrentCUDAStream(), pairwise_kernel<scalar_t, T, generalized>)(
        a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), n, m, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor box_iou_cuda(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  return pairwise_cuda</*generalized=*/false>("box_iou", boxes1, boxes2);
}

at::Tensor generalized_box_iou_cuda(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  return pairwise_cuda</*generalized=*/true>("generalized_box_iou", boxes1, boxes2);
}

}  // namespace

#ifndef MINIMTL_CUDA_EMULATION  // (the emulation registers these functions as CPU ops of its own)
TORCH_LIBRARY_IMPL(minimtl, CUDA, m) {
  m.impl("box_iou", &box_iou_cuda);
  m.impl("generalized_box_iou", &generalized_box_iou_cuda);
}
#endif

}  // namespace minimtl
