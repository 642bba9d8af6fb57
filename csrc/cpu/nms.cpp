// Greedy non-maximum suppression on the CPU: nms and the class-aware batched_nms.
//
// Reference: minimtl/ops/reference.py (nms, batched_nms). The reference fills the whole N x N IoU
// matrix and then walks it in Python. Here:
//   1. boxes are ranked by decreasing score (stable; a NaN score ranks as -inf);
//   2. they are copied, in rank order, into a structure of arrays (box_arrays.h);
//   3. the greedy loop keeps box i unless a kept box already removed it, then removes every later
//      box j whose IoU with i is > iou_threshold. Only the rows of kept boxes are ever computed;
//      the loop over j is branch-free, so it vectorises, and it is split between threads (in tiles,
//      see greedy_nms).
// batched_nms runs step 3 once per class: boxes of different classes never meet, so the classes
// are independent tasks, shared between threads with at::parallel_for.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "../checks.h"
#include "box_arrays.h"
#include "simd.h"

namespace minimtl {
namespace {

// Indices of the boxes by decreasing score. Ties keep index order; NaN ranks as -inf.
std::vector<int64_t> order_by_score(const at::Tensor& scores) {
  const int64_t n = scores.size(0);
  std::vector<double> key(n);  // double holds every float16/bfloat16/float32/float64 score exactly
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(), "nms", [&] {
    auto s = scores.accessor<scalar_t, 1>();
    for (int64_t i = 0; i < n; ++i) {
      const double v = static_cast<double>(s[i]);
      key[i] = std::isnan(v) ? -std::numeric_limits<double>::infinity() : v;
    }
  });
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return key[a] > key[b]; });
  return order;
}

// Box i removes every box j in [from, to) that it overlaps with IoU > threshold. Branch-free, so
// the compiler vectorises it: this loop is where NMS spends its time.
template <typename T>
MINIMTL_SIMD_CLONES void suppress(const BoxArrays<T>& b, int64_t i, int64_t from, int64_t to, T threshold,
                                  uint8_t* __restrict removed) {
  const T* __restrict x1 = b.x1.data();
  const T* __restrict y1 = b.y1.data();
  const T* __restrict x2 = b.x2.data();
  const T* __restrict y2 = b.y2.data();
  const T* __restrict area = b.area.data();
  for (int64_t j = from; j < to; ++j) {
    const T iou = pair_iou(x1[i], y1[i], x2[i], y2[i], area[i], x1[j], y1[j], x2[j], y2[j], area[j]);
    removed[j] |= static_cast<uint8_t>(iou > threshold);
  }
}

// Greedy NMS over the boxes b[begin:end], sorted by decreasing score: sets keep[i] = 1 for each box
// that survives. removed[begin:end] is scratch.
//
// This is the plain greedy loop (keep i unless removed; i removes the later boxes it overlaps),
// done a tile of kTile boxes at a time so that its long part can be shared between threads:
//   1. inside the tile, the plain loop decides which boxes of the tile survive;
//   2. the survivors remove what they overlap among all the boxes after the tile. These tests do
//      not depend on each other, so the boxes after the tile are split between the threads.
// The decisions are the plain loop's: a box is removed iff a kept box before it overlaps it.
constexpr int64_t kTile = 128;
constexpr int64_t kMinBoxesPerThread = 2048;

template <typename T>
void greedy_nms(const BoxArrays<T>& b, int64_t begin, int64_t end, T threshold, uint8_t* keep, uint8_t* removed) {
  std::fill(removed + begin, removed + end, uint8_t{0});
  std::vector<int64_t> kept_in_tile;
  kept_in_tile.reserve(kTile);
  for (int64_t tile = begin; tile < end; tile += kTile) {
    const int64_t tile_end = std::min(tile + kTile, end);
    kept_in_tile.clear();
    for (int64_t i = tile; i < tile_end; ++i) {  // 1.
      if (removed[i]) continue;
      keep[i] = 1;
      kept_in_tile.push_back(i);
      suppress(b, i, i + 1, tile_end, threshold, removed);
    }
    // 2. (runs inline when called from a parallel region, as batched_nms does)
    at::parallel_for(tile_end, end, kMinBoxesPerThread, [&](int64_t from, int64_t to) {
      for (const int64_t i : kept_in_tile) suppress(b, i, from, to, threshold, removed);
    });
  }
}

// nms (idxs undefined) and batched_nms share everything but the grouping into classes.
at::Tensor nms_cpu_impl(const char* op, const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs,
                        double iou_threshold) {
  check_nms_inputs(op, boxes, scores, idxs, iou_threshold);
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));

  // rank r -> box index, by decreasing score
  const std::vector<int64_t> order = order_by_score(scores);

  // Group the ranks by class, keeping rank order inside a class: by_class[k] is a rank, and the
  // classes occupy consecutive runs [starts[c], starts[c + 1]). Plain nms is one run.
  std::vector<int64_t> by_class(n);
  std::iota(by_class.begin(), by_class.end(), 0);
  std::vector<int64_t> starts{0};
  if (idxs) {
    const at::Tensor cls_tensor = idxs->to(at::kLong).contiguous();
    const int64_t* cls = cls_tensor.data_ptr<int64_t>();
    std::stable_sort(by_class.begin(), by_class.end(),
                     [&](int64_t a, int64_t b) { return cls[order[a]] < cls[order[b]]; });
    for (int64_t k = 1; k < n; ++k) {
      if (cls[order[by_class[k]]] != cls[order[by_class[k - 1]]]) starts.push_back(k);
    }
  }
  starts.push_back(n);
  const int64_t num_runs = static_cast<int64_t>(starts.size()) - 1;

  std::vector<int64_t> box_of(n);  // k -> box index
  for (int64_t k = 0; k < n; ++k) box_of[k] = order[by_class[k]];

  std::vector<uint8_t> keep(n, 0);  // indexed by k
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "nms", [&] {
    using T = at::opmath_type<scalar_t>;
    const BoxArrays<T> b = load_boxes<T, scalar_t>(boxes, box_of.data(), n);
    const T threshold = static_cast<T>(iou_threshold);
    std::vector<uint8_t> removed(n);
    // The classes are independent: one task each, shared between threads.
    at::parallel_for(0, num_runs, 1, [&](int64_t first, int64_t last) {
      for (int64_t c = first; c < last; ++c) {
        greedy_nms(b, starts[c], starts[c + 1], threshold, keep.data(), removed.data());
      }
    });
  });

  // Back to rank order, so the output lists the kept boxes by decreasing score.
  std::vector<uint8_t> keep_rank(n, 0);
  for (int64_t k = 0; k < n; ++k) keep_rank[by_class[k]] = keep[k];
  const int64_t num_kept = std::count(keep_rank.begin(), keep_rank.end(), uint8_t{1});
  at::Tensor out = at::empty({num_kept}, boxes.options().dtype(at::kLong));
  int64_t* out_ptr = out.data_ptr<int64_t>();
  for (int64_t r = 0; r < n; ++r) {
    if (keep_rank[r]) *out_ptr++ = order[r];
  }
  return out;
}

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  return nms_cpu_impl("nms", boxes, scores, nullptr, iou_threshold);
}

at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                           double iou_threshold) {
  return nms_cpu_impl("batched_nms", boxes, scores, &idxs, iou_threshold);
}

}  // namespace

TORCH_LIBRARY_IMPL(minimtl, CPU, m) {
  m.impl("nms", &nms_cpu);
  m.impl("batched_nms", &batched_nms_cpu);
}

}  // namespace minimtl
