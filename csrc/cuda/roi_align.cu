// RoIAlign on the GPU: forward and backward, one thread per output element.
//
// Reference: minimtl/ops/reference.py (roi_align); CPU twin: csrc/cpu/roi_align.cpp; the geometry
// is csrc/roi_align_math.h, shared with the CPU kernel.
//
// Forward: thread (k, c, p, q) computes out[k, c, p, q]: the mean over the samples of bin (p, q)
// of RoI k of the bilinear interpolation of channel c. Threads are numbered with q fastest, so a
// warp writes consecutive outputs and its threads read neighbouring pixels of one channel.
// Backward: thread (k, c, p, q) hands grad[k, c, p, q] / count back to the same taps with
// atomicAdd: RoIs overlap, so several threads may add to one pixel. The order of those additions
// varies from run to run, so the float sum can differ in its last bits.
// Deterministic backward (under torch.use_deterministic_algorithms(True)): the same threads and
// taps, but each contribution v is added as a 64-bit fixed-point integer, round(v * 2^S), with an
// integer atomicAdd. Integer addition is associative: whatever the order, the sum has the same
// bits. S comes from B = sum |grad|, a bound on any pixel's total (a sample's four weights sum to
// 1, and each output is shared by its samples), so that B * 2^S < 2^62 and no sum can overflow;
// each tap is then exact to 2^-S ~ B * 2^-62, far below float32's rounding of the result. A NaN or
// infinite contribution has no fixed-point value: the pixel records it in a flag (atomicOr) and
// the finishing kernel applies IEEE's rules (any NaN, or +inf with -inf, gives NaN; else the inf).
// The price of the fixed point: one absolute step, 2^-S ~ B * 2^-62, for every pixel. Float atomics
// round each pixel relative to its own size (2^-24 of it in float32); here a pixel reached only by
// contributions far below B carries a larger relative error, and a contribution below half a step
// is lost (tests/test_cuda_emulation.py pins it). Float32 rounds a value x by about 2^-24 x, so
// x fares worse here when 2^-24 x < 2^-S, i.e. x below about 2^-38 B: for n values of similar size
// (B ~ n x_typical), some 2^38 / n times below the typical value; 4e4 times below for the
// 6.4 million values of a box head's gradient (512 RoIs x 256 channels x 7 x 7). Computing B also
// costs one wait for the GPU per call.
// float16 and bfloat16 are computed in float32, and their gradient is accumulated in float32.
//
// Bad batch indices: every thread tests rois[k, 0] itself (valid_batch_index), and a RoI that
// fails reads and writes nothing but zeros, so no input makes a kernel touch memory outside its
// tensors. The op does not report it: naming the bad row would need the kernel's answer on the
// host, a device-to-host copy and a stream synchronisation on every call, which stalls the CPU's
// queueing of work and is illegal while a CUDA graph is captured. The error is raised where the
// indices come from instead: minimtl.ops.roi_align checks a Tensor[K, 5] a caller wrote (one
// reduction; skipped under torch.compile and graph capture), boxes per image become RoIs whose
// indices are valid by construction (boxes_to_rois), and the CPU kernel checks on the host, where
// the RoIs already are (chapter 13, "No synchronisation").
// Indices: 32-bit when every index fits (integer division, which unravel needs, is several times
// cheaper in 32 bits on a GPU), else 64-bit.

#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "../checks.h"
#include "../roi_align_math.h"
#include "launch.cuh"

namespace minimtl {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535 * 8;  // the rest is a grid-stride loop

int64_t num_blocks(int64_t n) { return std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks); }

// Calls f(index_t{}) with index_t = int32_t when every index of a kernel over `total` elements of
// output and `input_numel` of input fits in 32 bits (the grid-stride step included), else int64_t.
#ifndef MINIMTL_INT32_INDEX_LIMIT
#define MINIMTL_INT32_INDEX_LIMIT (int64_t{1} << 30)  // + the largest grid-stride step (2^27) < 2^31
#endif
template <typename F>
void with_index_type(int64_t total, int64_t input_numel, F&& f) {
  if (total <= MINIMTL_INT32_INDEX_LIMIT && input_numel <= MINIMTL_INT32_INDEX_LIMIT) {
    f(int32_t{});
  } else {
    f(int64_t{});
  }
}

// Which output element a thread owns: index -> (k, c, p, q), q fastest.
template <typename index_t>
struct OutputIndex {
  index_t k, c, p, q;
};

template <typename index_t>
__device__ __forceinline__ OutputIndex<index_t> unravel(index_t index, index_t channels, index_t ph, index_t pw) {
  const index_t q = index % pw;
  index /= pw;
  const index_t p = index % ph;
  index /= ph;
  const index_t c = index % channels;
  return {index / channels, c, p, q};
}

// rois[k, 0] names an image of the batch: an integer in [0, batch_size). NaN fails every test.
template <typename T>
__device__ __forceinline__ bool valid_batch_index(T b, int64_t batch_size) {
  return b >= T(0) && b < static_cast<T>(batch_size) && b == floor(b);
}

template <typename scalar_t, typename T, typename index_t>
__global__ void roi_align_forward_kernel(const scalar_t* __restrict__ input, const T* __restrict__ rois, index_t total,
                                         int64_t batch_size, index_t channels, index_t height, index_t width,
                                         index_t ph, index_t pw, T spatial_scale, int64_t sampling_ratio, bool aligned,
                                         scalar_t* __restrict__ out) {
  const index_t stride = static_cast<index_t>(gridDim.x * blockDim.x);
  for (index_t index = static_cast<index_t>(blockIdx.x * blockDim.x + threadIdx.x); index < total; index += stride) {
    const OutputIndex<index_t> o = unravel(index, channels, ph, pw);
    const T* roi = rois + 5 * o.k;
    if (!valid_batch_index(roi[0], batch_size)) {  // memory safety: see the top of the file
      out[index] = static_cast<scalar_t>(T(0));
      continue;
    }
    const RoIGeometry<T> g = roi_geometry(roi[1], roi[2], roi[3], roi[4], spatial_scale, ph, pw, sampling_ratio, aligned);
    const scalar_t* map = input + (static_cast<index_t>(roi[0]) * channels + o.c) * height * width;  // (H, W)

    index_t y_first, y_last, x_first, x_last;  // < 2^30 samples per bin side (kMaxSamplesPerBinSide)
    sample_range(g.start_y, g.bin_h, o.p, g.grid_h, height, &y_first, &y_last);
    sample_range(g.start_x, g.bin_w, o.q, g.grid_w, width, &x_first, &x_last);
    T acc = 0;
    for (index_t iy = y_first; iy < y_last; ++iy) {
      Neighbours<T, index_t> ty;
      if (!neighbours(sample_coord(g.start_y, g.bin_h, o.p, iy, g.grid_h), height, &ty)) continue;
      for (index_t ix = x_first; ix < x_last; ++ix) {
        Neighbours<T, index_t> tx;
        if (!neighbours(sample_coord(g.start_x, g.bin_w, o.q, ix, g.grid_w), width, &tx)) continue;
        const T w1 = ty.w_low * tx.w_low, w2 = ty.w_low * tx.w_high;
        const T w3 = ty.w_high * tx.w_low, w4 = ty.w_high * tx.w_high;
        acc += w1 * static_cast<T>(map[ty.low * width + tx.low]) + w2 * static_cast<T>(map[ty.low * width + tx.high]) +
               w3 * static_cast<T>(map[ty.high * width + tx.low]) + w4 * static_cast<T>(map[ty.high * width + tx.high]);
      }
    }
    out[index] = static_cast<scalar_t>(acc / g.count);
  }
}

// How a contribution v reaches pixel i of the (N, C, H, W) gradient. The float path adds it with a
// float atomicAdd; the deterministic path as fixed point (see the top of the file).
template <typename T>
struct FloatAdd {
  T* grad_input;
  __device__ __forceinline__ void operator()(int64_t i, T v) const { atomicAdd(grad_input + i, v); }
};

constexpr int kNaN = 1, kPosInf = 2, kNegInf = 4;  // flags of the non-finite contributions

struct FixedPointAdd {
  unsigned long long* acc;  // round(v * 2^scale_exp), summed as integers
  int* flags;               // nullptr when every gradient is finite
  int scale_exp;
  __device__ __forceinline__ void operator()(int64_t i, double v) const {
    if (isfinite(v)) {
      if (v != 0) atomicAdd(acc + i, static_cast<unsigned long long>(__double2ll_rn(ldexp(v, scale_exp))));
    } else if (flags != nullptr) {
      atomicOr(flags + i, isnan(v) ? kNaN : (v > 0 ? kPosInf : kNegInf));
    }
  }
};

// Thread (k, c, p, q) hands grad[k, c, p, q] / count back to the taps of its bin's samples, each
// weighted as in the forward; `add` puts each product into the gradient.
template <typename scalar_t, typename T, typename index_t, typename Add>
__global__ void roi_align_backward_kernel(const scalar_t* __restrict__ grad, const T* __restrict__ rois, index_t total,
                                          int64_t batch_size, index_t channels, index_t height, index_t width,
                                          index_t ph, index_t pw, T spatial_scale, int64_t sampling_ratio, bool aligned,
                                          Add add) {
  const index_t stride = static_cast<index_t>(gridDim.x * blockDim.x);
  for (index_t index = static_cast<index_t>(blockIdx.x * blockDim.x + threadIdx.x); index < total; index += stride) {
    const OutputIndex<index_t> o = unravel(index, channels, ph, pw);
    const T* roi = rois + 5 * o.k;
    if (!valid_batch_index(roi[0], batch_size)) continue;  // memory safety: see the top of the file
    const RoIGeometry<T> g = roi_geometry(roi[1], roi[2], roi[3], roi[4], spatial_scale, ph, pw, sampling_ratio, aligned);
    const index_t plane = (static_cast<index_t>(roi[0]) * channels + o.c) * height * width;  // (H, W) from here
    const T share = static_cast<T>(grad[index]) / g.count;  // what each sample received

    index_t y_first, y_last, x_first, x_last;
    sample_range(g.start_y, g.bin_h, o.p, g.grid_h, height, &y_first, &y_last);
    sample_range(g.start_x, g.bin_w, o.q, g.grid_w, width, &x_first, &x_last);
    for (index_t iy = y_first; iy < y_last; ++iy) {
      Neighbours<T, index_t> ty;
      if (!neighbours(sample_coord(g.start_y, g.bin_h, o.p, iy, g.grid_h), height, &ty)) continue;
      for (index_t ix = x_first; ix < x_last; ++ix) {
        Neighbours<T, index_t> tx;
        if (!neighbours(sample_coord(g.start_x, g.bin_w, o.q, ix, g.grid_w), width, &tx)) continue;
        add(plane + ty.low * width + tx.low, ty.w_low * tx.w_low * share);
        add(plane + ty.low * width + tx.high, ty.w_low * tx.w_high * share);
        add(plane + ty.high * width + tx.low, ty.w_high * tx.w_low * share);
        add(plane + ty.high * width + tx.high, ty.w_high * tx.w_high * share);
      }
    }
  }
}

// acc (fixed point, 2^-S units) and the flags -> the gradient in scalar_t.
template <typename scalar_t, typename T>
__global__ void fixed_to_float_kernel(const unsigned long long* __restrict__ acc, const int* __restrict__ flags,
                                      int64_t total, int scale_exp, scalar_t* __restrict__ out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double v = ldexp(static_cast<double>(static_cast<long long>(acc[i])), -scale_exp);
    if (flags != nullptr && flags[i] != 0) {
      const int f = flags[i];
      const bool nan = (f & kNaN) || ((f & kPosInf) && (f & kNegInf));
      v = nan ? CUDART_NAN : ((f & kPosInf) ? CUDART_INF : -CUDART_INF);
    }
    out[i] = static_cast<scalar_t>(static_cast<T>(v));
  }
}

// The deterministic backward: same result as the float path up to its rounding, the same bits on
// every run. Costs two reductions over grad (with a device-to-host copy) and an int64 buffer.
template <typename scalar_t>
at::Tensor roi_align_backward_deterministic(const at::Tensor& grad_c, const at::Tensor& rois_t, double spatial_scale,
                                            int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                            int64_t channels, int64_t height, int64_t width, int64_t sampling_ratio,
                                            bool aligned) {
  using T = at::opmath_type<scalar_t>;
  const at::Tensor g64 = grad_c.to(at::kDouble);
  const at::Tensor finite_abs = g64.abs().nan_to_num(0.0, 0.0, 0.0);
  // Both numbers in one device-to-host copy: whether every gradient is finite, and B.
  const at::Tensor stats = at::stack({g64.isfinite().all().to(at::kDouble), finite_abs.sum()}).cpu();
  const bool all_finite = stats[0].item<double>() != 0.0;
  const double bound = stats[1].item<double>();  // B
  at::Tensor out = at::zeros({batch_size, channels, height, width}, grad_c.options());
  if (bound == 0.0 && all_finite) return out;
  int exponent = 0;
  if (std::isfinite(bound)) {
    std::frexp(bound, &exponent);  // B < 2^exponent
  } else {  // float64 gradients near the largest double overflow the sum: B <= numel * max|grad|
    std::frexp(finite_abs.max().item<double>(), &exponent);
    int numel_bits = 0;
    std::frexp(static_cast<double>(grad_c.numel()), &numel_bits);  // numel < 2^numel_bits
    exponent += numel_bits;
  }
  const int scale_exp = 62 - exponent;  // B * 2^S < 2^62
  const int64_t total = out.numel();
  at::Tensor acc = at::zeros({total}, grad_c.options().dtype(at::kLong));
  at::Tensor flags;
  if (!all_finite) flags = at::zeros({total}, grad_c.options().dtype(at::kInt));
  int* flags_ptr = all_finite ? nullptr : flags.data_ptr<int>();
  auto* acc_ptr = reinterpret_cast<unsigned long long*>(acc.data_ptr<int64_t>());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  with_index_type(grad_c.numel(), total, [&](auto zero) {
    using index_t = decltype(zero);
    MINIMTL_LAUNCH(num_blocks(grad_c.numel()), kThreads, stream, roi_align_backward_kernel<scalar_t, T, index_t>)(
        grad_c.data_ptr<scalar_t>(), rois_t.data_ptr<T>(), static_cast<index_t>(grad_c.numel()), batch_size,
        static_cast<index_t>(channels), static_cast<index_t>(height), static_cast<index_t>(width),
        static_cast<index_t>(pooled_height),
        static_cast<index_t>(pooled_width), static_cast<T>(spatial_scale), sampling_ratio, aligned,
        FixedPointAdd{acc_ptr, flags_ptr, scale_exp});
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  MINIMTL_LAUNCH(num_blocks(total), kThreads, stream, fixed_to_float_kernel<scalar_t, T>)(
      acc_ptr, flags_ptr, total, scale_exp, out.data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor roi_align_forward_cuda(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                  int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  check_roi_align_inputs("roi_align", input, rois, pooled_height, pooled_width);
  c10::cuda::CUDAGuard guard(input.device());
  const int64_t batch_size = input.size(0), num_rois = rois.size(0), channels = input.size(1);
  const int64_t height = input.size(2), width = input.size(3);
  at::Tensor out = at::empty({num_rois, channels, pooled_height, pooled_width}, input.options());  // (K, C, ph, pw)
  if (out.numel() == 0 || height == 0 || width == 0) return out.zero_();  // an empty map: every sample is off it

  const at::Tensor map = input.contiguous();  // (N, C, H, W)
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    const at::Tensor rois_t = rois.to(c10::CppTypeToScalarType<T>::value).contiguous();
    with_index_type(out.numel(), map.numel(), [&](auto zero) {
      using index_t = decltype(zero);
      MINIMTL_LAUNCH(num_blocks(out.numel()), kThreads, stream, roi_align_forward_kernel<scalar_t, T, index_t>)(
          map.data_ptr<scalar_t>(), rois_t.data_ptr<T>(), static_cast<index_t>(out.numel()), batch_size,
          static_cast<index_t>(channels), static_cast<index_t>(height), static_cast<index_t>(width),
        static_cast<index_t>(pooled_height),
          static_cast<index_t>(pooled_width), static_cast<T>(spatial_scale), sampling_ratio, aligned,
          out.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;  // no synchronisation: the caller's next use of `out` is queued behind the kernel
}

// Returns grad_input as a contiguous (N, C, H, W) tensor.
at::Tensor roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                   int64_t pooled_height, int64_t pooled_width, int64_t batch_size, int64_t channels,
                                   int64_t height, int64_t width, int64_t sampling_ratio, bool aligned) {
  check_roi_align_backward_inputs("_roi_align_backward", grad, rois, pooled_height, pooled_width, batch_size, channels,
                                  height, width);
  c10::cuda::CUDAGuard guard(grad.device());
  // Nothing to launch (a launch of zero blocks is an error on a GPU): no RoIs, or an empty map,
  // or no images, whose gradient is empty however many (then invalid) RoIs there are.
  if (grad.numel() == 0 || batch_size == 0 || channels == 0 || height == 0 || width == 0) {
    return at::zeros({batch_size, channels, height, width}, grad.options());
  }

  const int64_t input_numel = batch_size * channels * height * width;
  const at::Tensor grad_c = grad.contiguous();
  at::Tensor grad_input;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    const at::Tensor rois_t = rois.to(c10::CppTypeToScalarType<T>::value).contiguous();
    if (at::globalContext().deterministicAlgorithms()) {
      grad_input = roi_align_backward_deterministic<scalar_t>(grad_c, rois_t, spatial_scale, pooled_height,
                                                              pooled_width, batch_size, channels, height, width,
                                                              sampling_ratio, aligned);
      return;
    }
    // Accumulate in T (float32 for float16/bfloat16 gradients), convert at the end.
    at::Tensor acc = at::zeros({batch_size, channels, height, width}, grad.options().dtype(c10::CppTypeToScalarType<T>::value));
    with_index_type(grad_c.numel(), input_numel, [&](auto zero) {
      using index_t = decltype(zero);
      MINIMTL_LAUNCH(num_blocks(grad_c.numel()), kThreads, c10::cuda::getCurrentCUDAStream(),
                     roi_align_backward_kernel<scalar_t, T, index_t>)(
              grad_c.data_ptr<scalar_t>(), rois_t.data_ptr<T>(), static_cast<index_t>(grad_c.numel()), batch_size,
              static_cast<index_t>(channels), static_cast<index_t>(height), static_cast<index_t>(width),
        static_cast<index_t>(pooled_height),
              static_cast<index_t>(pooled_width), static_cast<T>(spatial_scale), sampling_ratio, aligned,
              FloatAdd<T>{acc.data_ptr<T>()});
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    grad_input = acc.to(grad.scalar_type());
  });
  return grad_input;
}

}  // namespace

#ifndef MINIMTL_CUDA_EMULATION  // (the emulation registers these functions as CPU ops of its own)
TORCH_LIBRARY_IMPL(minimtl, CUDA, m) {
  m.impl("roi_align", &roi_align_forward_cuda);
  m.impl("_roi_align_backward", &roi_align_backward_cuda);
}
#endif

}  // namespace minimtl
