// Greedy non-maximum suppression on the GPU: the bitmask scheme.
//
// Reference: minimtl/ops/reference.py; CPU twin: csrc/cpu/nms.cpp. The greedy walk is sequential
// (whether box i survives depends on every decision before it), but the IoU tests it needs are
// not. So the work is split in two:
//
//   1. nms_mask_kernel, all in parallel. Boxes, sorted by decreasing score, are cut into blocks of
//      64, and a CUDA block of 64 threads handles one (row block, column block) pair: each thread
//      takes one row box i and tests it against the 64 column boxes, which the block first loads
//      into shared memory (each is read by all 64 threads). The 64 answers "does i suppress j?"
//      are the 64 bits of one unsigned long long: mask[i][column block]. Only j > i matter (a box
//      never suppresses a higher-scoring one), so blocks below the diagonal return at once.
//
//   2. nms_gather_kernel, one CUDA block. It walks the boxes in order with a bitmask `removed`
//      (one bit per box) in shared memory: box i is kept if its bit is clear, and then its mask
//      row is OR-ed into `removed`. It decides 64 boxes at a time in one thread, then all threads
//      spread the group's kept rows into the later words. The keep flags stay on the device: the
//      mask is never copied to the host.
//
// The IoU is box_math.h's pair_iou, the same as the CPU kernel and the reference, bit for bit.
// batched_nms is the same with one more test in step 1: boxes of different classes never suppress.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/masked_select.h>
#include <ATen/ops/nan_to_num.h>
#include <ATen/ops/sort.h>
#include <torch/library.h>

#include <limits>

#include "../box_math.h"
#include "../checks.h"
#include "launch.cuh"

namespace minimtl {
namespace {

constexpr int kBoxesPerBlock = 64;  // one bit per box in an unsigned long long
constexpr int kGatherThreads = 256;
constexpr int kSpread = 8;  // rows of kept boxes loaded at once by the gather's spread (below)
// The gather kernel's shared memory: `removed` (kMaxWords words), `diagonal` (64) and one more
// word fill the 48 KiB a block may declare statically.
constexpr int64_t kMaxWords = 48 * 1024 / sizeof(unsigned long long) - kBoxesPerBlock - 1;  // 6079
constexpr int64_t kMaxBoxes = kMaxWords * kBoxesPerBlock;                                   // 389,056
static_assert((kMaxWords + kBoxesPerBlock + 1) * sizeof(unsigned long long) <= kMaxStaticSharedBytes,
              "nms_gather_kernel's shared arrays exceed a block's static shared memory");

template <typename T>
__global__ void nms_mask_kernel(const T* __restrict__ boxes, const int64_t* __restrict__ classes, int64_t n,
                                T threshold, unsigned long long* __restrict__ mask) {
  const int64_t row_block = blockIdx.y, col_block = blockIdx.x;
  if (col_block < row_block) return;
  const int64_t col_blocks = gridDim.x;
  const int row_size = static_cast<int>(min(n - row_block * kBoxesPerBlock, int64_t{kBoxesPerBlock}));
  const int col_size = static_cast<int>(min(n - col_block * kBoxesPerBlock, int64_t{kBoxesPerBlock}));

  // The column tile: 64 boxes (and their areas and classes) read by every thread of the block.
  __shared__ T tile[kBoxesPerBlock][5];
  __shared__ int64_t tile_class[kBoxesPerBlock];
  const int t = static_cast<int>(threadIdx.x);
  if (t < col_size) {
    const int64_t j = col_block * kBoxesPerBlock + t;
    for (int c = 0; c < 4; ++c) tile[t][c] = boxes[4 * j + c];
    tile[t][4] = box_area(tile[t][0], tile[t][1], tile[t][2], tile[t][3]);
    if (classes) tile_class[t] = classes[j];
  }
  __syncthreads();
  if (t >= row_size) return;

  const int64_t i = row_block * kBoxesPerBlock + t;
  const T x1 = boxes[4 * i + 0], y1 = boxes[4 * i + 1], x2 = boxes[4 * i + 2], y2 = boxes[4 * i + 3];
  const T area = box_area(x1, y1, x2, y2);
  const int64_t cls = classes ? classes[i] : 0;
  unsigned long long bits = 0;
  // On the diagonal block only the boxes after i; elsewhere all 64 come after i.
  for (int k = (row_block == col_block) ? t + 1 : 0; k < col_size; ++k) {
    const bool same_class = classes == nullptr || tile_class[k] == cls;
    const T iou = pair_iou(x1, y1, x2, y2, area, tile[k][0], tile[k][1], tile[k][2], tile[k][3], tile[k][4]);
    if (same_class && iou > threshold) bits |= 1ULL << k;
  }
  mask[i * col_blocks + col_block] = bits;
}

// One block walks the boxes in score order, 64 at a time. removed[w] holds the bits of boxes
// 64w .. 64w + 63 that a kept box suppresses. For each group of 64:
//   1. decide: thread 0 walks the 64 boxes in order; box i is kept unless its bit is set, and a
//      kept box's own mask word (whom it suppresses among the 64, `diagonal`) is OR-ed into the
//      bits it walks on. That is the only sequential part, and it runs on registers and shared
//      memory: 64 steps per group.
//   2. spread: every thread ORs the rows of the group's kept boxes into its share of the later
//      words, kSpread rows per round, their loads issued together.
// Two barriers per group of 64 boxes, where a barrier per kept box (torchvision's gather) would
// put a global-memory load and a barrier on the sequential path of every kept box.
__global__ void nms_gather_kernel(const unsigned long long* __restrict__ mask, int64_t n, bool* __restrict__ keep) {
  __shared__ unsigned long long removed[kMaxWords];
  __shared__ unsigned long long diagonal[kBoxesPerBlock];  // diagonal[b] = mask[first + b][group]
  __shared__ unsigned long long group_kept;                // bit b: box first + b is kept
  const int t = static_cast<int>(threadIdx.x);
  const int64_t col_blocks = (n + kBoxesPerBlock - 1) / kBoxesPerBlock;
  for (int64_t w = t; w < col_blocks; w += blockDim.x) removed[w] = 0;

  for (int64_t group = 0; group < col_blocks; ++group) {
    const int64_t first = group * kBoxesPerBlock;
    const int count = static_cast<int>(min(n - first, int64_t{kBoxesPerBlock}));
    if (t < kBoxesPerBlock) diagonal[t] = t < count ? mask[(first + t) * col_blocks + group] : 0;
    __syncthreads();  // diagonal is loaded, and removed[] holds what every earlier group suppresses

    if (t == 0) {  // 1. decide
      unsigned long long removed_here = removed[group], kept = 0;
#pragma unroll
      for (int bit = 0; bit < kBoxesPerBlock; ++bit) {
        const unsigned long long suppresses = diagonal[bit];  // independent of the walk: loaded early
        if (bit < count && !(removed_here & (1ULL << bit))) {
          kept |= 1ULL << bit;
          removed_here |= suppresses;
        }
      }
      group_kept = kept;
    }
    __syncthreads();  // group_kept is written; nobody reads diagonal or removed[group] any more

    const unsigned long long kept = group_kept;  // 2. spread
    if (t < count) keep[first + t] = (kept >> t) & 1;
    for (int64_t w = group + 1 + t; w < col_blocks; w += blockDim.x) {
      unsigned long long word = removed[w];
      // The kept boxes' rows, kSpread at a time: the kSpread loads of a round depend on `bits`
      // alone (integer arithmetic), not on each other, so all of them are in flight together,
      // where a plain loop would wait for each before the next.
      for (unsigned long long bits = kept; bits != 0;) {
        unsigned long long row[kSpread];
#pragma unroll
        for (int u = 0; u < kSpread; ++u) {
          row[u] = 0;
          if (bits != 0) {
            const int64_t i = first + __ffsll(static_cast<long long>(bits)) - 1;  // the lowest kept box left
            bits &= bits - 1;
            row[u] = mask[i * col_blocks + w];
          }
        }
#pragma unroll
        for (int u = 0; u < kSpread; ++u) word |= row[u];
      }
      removed[w] = word;
    }
    // The next group's first barrier orders these writes before removed[group + 1] is read.
  }
}

// Indices of the boxes by decreasing score. Ties keep index order; NaN ranks as -inf.
at::Tensor order_by_score(const at::Tensor& scores) {
  const at::ScalarType compute = scores.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  constexpr double inf = std::numeric_limits<double>::infinity();
  // One pass, into a new tensor (`scores.to` returns `scores` itself for float32/float64; float16
  // and bfloat16 convert exactly): NaN -> -inf, the infinities kept.
  const at::Tensor key = at::nan_to_num(scores.to(compute), -inf, inf, -inf);
  return std::get<1>(at::sort(key, /*stable=*/true, /*dim=*/0, /*descending=*/true));
}

at::Tensor nms_cuda_impl(const char* op, const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs,
                         double iou_threshold) {
  check_nms_inputs(op, boxes, scores, idxs, iou_threshold);
  const int64_t n = boxes.size(0);
  TORCH_CHECK(n <= kMaxBoxes, op, ": the CUDA kernel handles at most ", kMaxBoxes,
              " boxes, got ", n, " (keep the top-scoring boxes first, e.g. with scores.topk)");
  c10::cuda::CUDAGuard guard(boxes.device());
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));

  const at::Tensor order = order_by_score(scores);  // (N,) rank -> box index
  const int64_t col_blocks = (n + kBoxesPerBlock - 1) / kBoxesPerBlock;
  at::Tensor mask = at::empty({n, col_blocks}, boxes.options().dtype(at::kLong));  // 64-bit words
  at::Tensor keep = at::empty({n}, boxes.options().dtype(at::kBool));
  at::Tensor classes;
  if (idxs) classes = idxs->index_select(0, order).to(at::kLong).contiguous();
  const auto stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "nms_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    const at::Tensor sorted = boxes.index_select(0, order).to(c10::CppTypeToScalarType<T>::value).contiguous();
    const dim3 grid(col_blocks, col_blocks);
    MINIMTL_LAUNCH(grid, kBoxesPerBlock, stream, nms_mask_kernel<T>)(
        sorted.data_ptr<T>(), idxs ? classes.data_ptr<int64_t>() : nullptr, n, static_cast<T>(iou_threshold),
        reinterpret_cast<unsigned long long*>(mask.data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  MINIMTL_LAUNCH(1, kGatherThreads, stream, nms_gather_kernel)(
      reinterpret_cast<const unsigned long long*>(mask.data_ptr<int64_t>()), n, keep.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return order.masked_select(keep);  // kept box indices, in rank order
}

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  return nms_cuda_impl("nms", boxes, scores, nullptr, iou_threshold);
}

at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                            double iou_threshold) {
  return nms_cuda_impl("batched_nms", boxes, scores, &idxs, iou_threshold);
}

}  // namespace

#ifndef MINIMTL_CUDA_EMULATION  // (the emulation registers these functions as CPU ops of its own)
TORCH_LIBRARY_IMPL(minimtl, CUDA, m) {
  m.impl("nms", &nms_cuda);
  m.impl("batched_nms", &batched_nms_cuda);
}
#endif

}  // namespace minimtl
