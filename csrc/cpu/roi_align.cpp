// RoIAlign on the CPU: forward (a gather) and backward (the same taps as a scatter).
//
// Reference: minimtl/ops/reference.py (roi_align); the geometry is csrc/roi_align_math.h, shared
// with the CUDA kernel.
//
// What decides the speed is the memory layout. In NCHW a bilinear tap reads one value per channel,
// each from a different place (H * W apart): a scattered load per channel. Here the map is read
// channels-last (NHWC), where the C values of one pixel are contiguous: a tap becomes
// `acc[c] += w * pixel[c]` over c, one vectorised loop. The sample positions and their four
// weights depend only on the RoI and the bin, so they are computed once per RoI (separately in y
// and x: the samples of all bins form one grid) and shared by all channels.
//
// Forward: parallel over RoIs x channel blocks. Backward: parallel over images x channel blocks.
// Every task writes its own part of grad_input, in a fixed order: no races, no atomics, and the
// same bits from run to run.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../checks.h"
#include "../roi_align_math.h"
#include "simd.h"

namespace minimtl {
namespace {

constexpr int64_t kChannelBlock = 64;  // channels per task

// The samples of one RoI along one axis, bin by bin: the samples of bin p that count are
// taps[start[p] : start[p + 1]] (a sample off the map is simply not listed).
template <typename T>
struct AxisTaps {
  std::vector<Neighbours<T>> taps;
  std::vector<int64_t> start;
};

template <typename T>
AxisTaps<T> axis_taps(T roi_start, T bin, int64_t bins, int64_t grid, int64_t size) {
  AxisTaps<T> out;
  out.start.reserve(bins + 1);
  for (int64_t p = 0; p < bins; ++p) {
    out.start.push_back(static_cast<int64_t>(out.taps.size()));
    int64_t first, last;
    sample_range(roi_start, bin, p, grid, size, &first, &last);
    for (int64_t i = first; i < last; ++i) {
      Neighbours<T> n;
      if (neighbours(sample_coord(roi_start, bin, p, i, grid), size, &n)) out.taps.push_back(n);
    }
  }
  out.start.push_back(static_cast<int64_t>(out.taps.size()));
  return out;
}

// The geometry and taps of RoI k.
template <typename T>
struct RoITaps {
  int64_t batch;
  T count;
  AxisTaps<T> y, x;
};

template <typename T>
RoITaps<T> roi_taps(const T* roi, T spatial_scale, int64_t ph, int64_t pw, int64_t sampling_ratio, bool aligned,
                    int64_t height, int64_t width) {
  const RoIGeometry<T> g = roi_geometry(roi[1], roi[2], roi[3], roi[4], spatial_scale, ph, pw, sampling_ratio, aligned);
  return {static_cast<int64_t>(roi[0]), g.count, axis_taps(g.start_y, g.bin_h, ph, g.grid_h, height),
          axis_taps(g.start_x, g.bin_w, pw, g.grid_w, width)};
}

// Forward for RoI k and channels [c0, c0 + nc): out[k, c0:c0+nc, p, q] for every bin (p, q).
// `map` is the RoI's image, channels-last: pixel (y, x) starts at map + (y * W + x) * C.
template <typename scalar_t, typename T>
MINIMTL_SIMD_CLONES void forward_roi(const RoITaps<T>& r, const scalar_t* __restrict map, int64_t channels,
                                     int64_t width, int64_t c0, int64_t nc, int64_t ph, int64_t pw,
                                     scalar_t* __restrict out /* (C, ph, pw) of RoI k */, T* __restrict acc) {
  for (int64_t p = 0; p < ph; ++p) {
    for (int64_t q = 0; q < pw; ++q) {
      std::fill(acc, acc + nc, T(0));
      for (int64_t a = r.y.start[p]; a < r.y.start[p + 1]; ++a) {
        const Neighbours<T>& ty = r.y.taps[a];
        for (int64_t b = r.x.start[q]; b < r.x.start[q + 1]; ++b) {
          const Neighbours<T>& tx = r.x.taps[b];
          const T w1 = ty.w_low * tx.w_low, w2 = ty.w_low * tx.w_high;
          const T w3 = ty.w_high * tx.w_low, w4 = ty.w_high * tx.w_high;
          const scalar_t* __restrict v1 = map + (ty.low * width + tx.low) * channels + c0;
          const scalar_t* __restrict v2 = map + (ty.low * width + tx.high) * channels + c0;
          const scalar_t* __restrict v3 = map + (ty.high * width + tx.low) * channels + c0;
          const scalar_t* __restrict v4 = map + (ty.high * width + tx.high) * channels + c0;
          for (int64_t c = 0; c < nc; ++c) {  // the four taps, for every channel of the block
            acc[c] += w1 * static_cast<T>(v1[c]) + w2 * static_cast<T>(v2[c]) + w3 * static_cast<T>(v3[c]) +
                      w4 * static_cast<T>(v4[c]);
          }
        }
      }
      for (int64_t c = 0; c < nc; ++c) out[((c0 + c) * ph + p) * pw + q] = static_cast<scalar_t>(acc[c] / r.count);
    }
  }
}

// Backward for RoI k and channels [c0, c0 + nc): the forward's taps, run backwards. Each sample
// received grad[k, c, p, q] / count; it hands w1..w4 of that to its four pixels.
template <typename scalar_t, typename T>
MINIMTL_SIMD_CLONES void backward_roi(const RoITaps<T>& r, const scalar_t* __restrict grad /* (C, ph, pw) of RoI k */,
                                      int64_t channels, int64_t width, int64_t c0, int64_t nc, int64_t ph, int64_t pw,
                                      T* __restrict grad_map /* channels-last, the RoI's image */, T* __restrict g) {
  for (int64_t p = 0; p < ph; ++p) {
    for (int64_t q = 0; q < pw; ++q) {
      for (int64_t c = 0; c < nc; ++c) g[c] = static_cast<T>(grad[((c0 + c) * ph + p) * pw + q]) / r.count;
      for (int64_t a = r.y.start[p]; a < r.y.start[p + 1]; ++a) {
        const Neighbours<T>& ty = r.y.taps[a];
        for (int64_t b = r.x.start[q]; b < r.x.start[q + 1]; ++b) {
          const Neighbours<T>& tx = r.x.taps[b];
          const T w1 = ty.w_low * tx.w_low, w2 = ty.w_low * tx.w_high;
          const T w3 = ty.w_high * tx.w_low, w4 = ty.w_high * tx.w_high;
          // The four pixels can coincide (at the map's edge), so they are updated one after the
          // other, never through aliasing pointers in one loop.
          T* g1 = grad_map + (ty.low * width + tx.low) * channels + c0;
          for (int64_t c = 0; c < nc; ++c) g1[c] += w1 * g[c];
          T* g2 = grad_map + (ty.low * width + tx.high) * channels + c0;
          for (int64_t c = 0; c < nc; ++c) g2[c] += w2 * g[c];
          T* g3 = grad_map + (ty.high * width + tx.low) * channels + c0;
          for (int64_t c = 0; c < nc; ++c) g3[c] += w3 * g[c];
          T* g4 = grad_map + (ty.high * width + tx.high) * channels + c0;
          for (int64_t c = 0; c < nc; ++c) g4[c] += w4 * g[c];
        }
      }
    }
  }
}

int64_t num_channel_blocks(int64_t channels) {
  return (channels + kChannelBlock - 1) / kChannelBlock;
}

at::Tensor roi_align_forward_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                 int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  check_roi_align_inputs("roi_align", input, rois, pooled_height, pooled_width);
  check_batch_indices("roi_align", rois, input.size(0));
  const int64_t num_rois = rois.size(0), channels = input.size(1), height = input.size(2), width = input.size(3);
  at::Tensor out = at::empty({num_rois, channels, pooled_height, pooled_width}, input.options());  // (K, C, ph, pw)
  if (out.numel() == 0) return out;
  if (height == 0 || width == 0) return out.zero_();  // an empty map: every sample is off it

  const at::Tensor map = input.contiguous(at::MemoryFormat::ChannelsLast);  // (N, H, W, C) in memory
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align", [&] {
    using T = at::opmath_type<scalar_t>;  // float for float16/bfloat16/float32, double for float64
    const at::Tensor rois_t = rois.to(c10::CppTypeToScalarType<T>::value).contiguous();
    const T* roi_ptr = rois_t.data_ptr<T>();
    const scalar_t* map_ptr = map.data_ptr<scalar_t>();
    scalar_t* out_ptr = out.data_ptr<scalar_t>();
    const int64_t blocks = num_channel_blocks(channels);
    at::parallel_for(0, num_rois * blocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> acc(kChannelBlock);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t k = task / blocks, c0 = (task % blocks) * kChannelBlock;
        const RoITaps<T> r = roi_taps(roi_ptr + 5 * k, static_cast<T>(spatial_scale), pooled_height, pooled_width,
                                      sampling_ratio, aligned, height, width);
        forward_roi(r, map_ptr + r.batch * height * width * channels, channels, width, c0,
                    std::min(kChannelBlock, channels - c0), pooled_height, pooled_width,
                    out_ptr + k * channels * pooled_height * pooled_width, acc.data());
      }
    });
  });
  return out;
}

// Returns grad_input as (N, C, H, W) with channels-last strides: the layout it is accumulated in.
at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                  int64_t pooled_height, int64_t pooled_width, int64_t batch_size, int64_t channels,
                                  int64_t height, int64_t width, int64_t sampling_ratio, bool aligned) {
  check_roi_align_backward_inputs("_roi_align_backward", grad, rois, pooled_height, pooled_width, batch_size, channels,
                                  height, width);
  check_batch_indices("_roi_align_backward", rois, batch_size);
  // grad_input, zeroed, as (N, C, H, W) with channels-last strides.
  const auto zeros = [&](at::ScalarType dtype) {
    return at::empty({batch_size, channels, height, width}, grad.options().dtype(dtype), at::MemoryFormat::ChannelsLast)
        .zero_();
  };
  const int64_t num_rois = rois.size(0);
  if (num_rois == 0 || channels == 0 || height == 0 || width == 0) return zeros(grad.scalar_type());

  at::Tensor grad_input;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward", [&] {
    using T = at::opmath_type<scalar_t>;
    // Accumulate in T (float32 for float16/bfloat16 gradients), convert at the end.
    at::Tensor acc = zeros(c10::CppTypeToScalarType<T>::value);
    const at::Tensor rois_t = rois.to(c10::CppTypeToScalarType<T>::value).contiguous();
    const at::Tensor grad_c = grad.contiguous();
    const T* roi_ptr = rois_t.data_ptr<T>();
    const scalar_t* grad_ptr = grad_c.data_ptr<scalar_t>();
    T* acc_ptr = acc.data_ptr<T>();

    // The RoIs of each image, in order: a task (image, channel block) visits exactly those.
    std::vector<std::vector<int64_t>> rois_of(batch_size);
    for (int64_t k = 0; k < num_rois; ++k) rois_of[static_cast<int64_t>(roi_ptr[5 * k])].push_back(k);

    const int64_t blocks = num_channel_blocks(channels);
    at::parallel_for(0, batch_size * blocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> g(kChannelBlock);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / blocks, c0 = (task % blocks) * kChannelBlock;
        for (const int64_t k : rois_of[n]) {
          const RoITaps<T> r = roi_taps(roi_ptr + 5 * k, static_cast<T>(spatial_scale), pooled_height, pooled_width,
                                        sampling_ratio, aligned, height, width);
          backward_roi(r, grad_ptr + k * channels * pooled_height * pooled_width, channels, width, c0,
                       std::min(kChannelBlock, channels - c0), pooled_height, pooled_width,
                       acc_ptr + n * height * width * channels, g.data());
        }
      }
    });
    grad_input = acc.to(grad.scalar_type());  // keeps the channels-last layout
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(minimtl, CPU, m) {
  m.impl("roi_align", &roi_align_forward_cpu);
  m.impl("_roi_align_backward", &roi_align_backward_cpu);
}

}  // namespace minimtl
