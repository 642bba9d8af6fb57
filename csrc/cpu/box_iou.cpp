// Pairwise IoU and GIoU on the CPU, fused into one pass over the N x M output.
//
// Reference: minimtl/ops/reference.py (box_iou, generalized_box_iou). The reference builds N x M
// temporaries for every step (corners, widths, intersection, union); here each output element is
// computed from the two boxes in registers and written once. boxes2 is turned into a structure of
// arrays (box_arrays.h) so that the inner loop over j is a plain, vectorisable loop; rows are split
// between threads with at::parallel_for.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../checks.h"
#include "box_arrays.h"
#include "simd.h"

namespace minimtl {
namespace {

// One row of the output: box a against every box of b. `PairFn` is pair_iou or pair_giou.
template <typename T, typename out_t, T (*PairFn)(T, T, T, T, T, T, T, T, T, T)>
MINIMTL_SIMD_CLONES void pairwise_row(T ax1, T ay1, T ax2, T ay2, T area_a, const BoxArrays<T>& b, int64_t m, out_t* __restrict out) {
  const T* __restrict bx1 = b.x1.data();
  const T* __restrict by1 = b.y1.data();
  const T* __restrict bx2 = b.x2.data();
  const T* __restrict by2 = b.y2.data();
  const T* __restrict barea = b.area.data();
  for (int64_t j = 0; j < m; ++j) {
    out[j] = static_cast<out_t>(PairFn(ax1, ay1, ax2, ay2, area_a, bx1[j], by1[j], bx2[j], by2[j], barea[j]));
  }
}

template <bool generalized>
at::Tensor pairwise_cpu(const char* op, const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_pairwise_inputs(op, boxes1, boxes2);

  const int64_t n = boxes1.size(0), m = boxes2.size(0);
  at::Tensor out = at::empty({n, m}, boxes1.options());  // (N, M)
  if (n == 0 || m == 0) return out;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes1.scalar_type(), "box_iou", [&] {
    using T = at::opmath_type<scalar_t>;  // float for float16/bfloat16/float32, double for float64
    constexpr auto pair = generalized ? &pair_giou<T> : &pair_iou<T>;
    const BoxArrays<T> a = load_boxes<T, scalar_t>(boxes1, nullptr, n);
    const BoxArrays<T> b = load_boxes<T, scalar_t>(boxes2, nullptr, m);
    scalar_t* out_ptr = out.data_ptr<scalar_t>();
    // Enough rows per task that a task writes at least ~32k elements.
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / m);
    at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        pairwise_row<T, scalar_t, pair>(a.x1[i], a.y1[i], a.x2[i], a.y2[i], a.area[i], b, m, out_ptr + i * m);
      }
    });
  });
  return out;
}

at::Tensor box_iou_cpu(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  return pairwise_cpu</*generalized=*/false>("box_iou", boxes1, boxes2);
}

at::Tensor generalized_box_iou_cpu(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  return pairwise_cpu</*generalized=*/true>("generalized_box_iou", boxes1, boxes2);
}

}  // namespace

TORCH_LIBRARY_IMPL(minimtl, CPU, m) {
  m.impl("box_iou", &box_iou_cpu);
  m.impl("generalized_box_iou", &generalized_box_iou_cpu);
}

}  // namespace minimtl
