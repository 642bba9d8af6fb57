// The geometry of RoIAlign, shared by the CPU and CUDA kernels: where a RoI's bins and samples
// are, and the bilinear neighbours of a sample. Written line for line like
// minimtl/ops/reference.py (roi_align, samples_per_bin, _neighbours), in the same precision.
//
// Shapes: C channels, H x W map, ph x pw bins per RoI, gh x gw samples per bin.
#pragma once

#include <cmath>
#include <cstdint>

#include "box_math.h"  // MINIMTL_HOST_DEVICE

namespace minimtl {

// The adaptive grid of an absurdly large (or infinite) RoI is capped here, so that the sample
// count stays an integer; the kernels only visit the samples that can land on the map anyway.
constexpr int64_t kMaxSamplesPerBinSide = int64_t{1} << 30;

// Up to this many samples per bin side, a kernel visits them all; beyond, it visits only the ones
// that can land on the map (sample_range).
constexpr int64_t kFewSamples = 64;

template <typename T>
struct RoIGeometry {
  T start_y, start_x;      // top-left corner of the RoI on the map
  T bin_h, bin_w;          // size of one bin
  int64_t grid_h, grid_w;  // samples per bin, along y and x
  T count;                 // samples per bin (the mean's divisor, at least 1)
};

// gh (or gw): sampling_ratio if positive, else ceil(roi_size / bins), about one sample per pixel.
// A RoI of size 0 or less (possible with aligned=True) or NaN has no samples.
template <typename T>
MINIMTL_HOST_DEVICE int64_t samples_per_bin(T roi_size, int64_t bins, int64_t sampling_ratio) {
  if (sampling_ratio > 0) return sampling_ratio;
  const T n = ceil(roi_size / static_cast<T>(bins));
  if (!(n >= T(1))) return 0;  // NaN >= 1 is false
  return n < static_cast<T>(kMaxSamplesPerBinSide) ? static_cast<int64_t>(n) : kMaxSamplesPerBinSide;
}

// roi = (x1, y1, x2, y2) in image coordinates.
template <typename T>
MINIMTL_HOST_DEVICE RoIGeometry<T> roi_geometry(T x1, T y1, T x2, T y2, T spatial_scale, int64_t pooled_height,
                                                int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  // Pixel i covers [i, i + 1) but bilinear interpolation puts its value at i: aligned=True shifts
  // the RoI by half a pixel so the two agree; aligned=False stretches RoIs to at least 1 x 1.
  const T offset = aligned ? T(0.5) : T(0);
  RoIGeometry<T> g;
  g.start_x = x1 * spatial_scale - offset;
  g.start_y = y1 * spatial_scale - offset;
  T roi_w = x2 * spatial_scale - offset - g.start_x;
  T roi_h = y2 * spatial_scale - offset - g.start_y;
  if (!aligned) {
    roi_w = roi_w < T(1) ? T(1) : roi_w;  // like torch.clamp(min=1): NaN stays NaN
    roi_h = roi_h < T(1) ? T(1) : roi_h;
  }
  g.bin_h = roi_h / static_cast<T>(pooled_height);
  g.bin_w = roi_w / static_cast<T>(pooled_width);
  g.grid_h = samples_per_bin(roi_h, pooled_height, sampling_ratio);
  g.grid_w = samples_per_bin(roi_w, pooled_width, sampling_ratio);
  const T count = static_cast<T>(g.grid_h) * static_cast<T>(g.grid_w);
  g.count = count > T(1) ? count : T(1);
  return g;
}

// Sample i of bin p: start + p * bin + (i + 0.5) * bin / grid.
template <typename T, typename I>
MINIMTL_HOST_DEVICE T sample_coord(T start, T bin, I p, I i, int64_t grid) {
  return start + static_cast<T>(p) * bin + (static_cast<T>(i) + T(0.5)) * bin / static_cast<T>(grid);
}

// The samples [*first, *last) of bin p worth visiting: all of them when there are few; otherwise
// those whose coordinate can lie in [-1, size], solved from the formula above (widened by one
// sample on each side against rounding: each visited sample is still tested exactly). Skipping
// the others changes nothing, since a sample off the map contributes 0, and it bounds the work
// of a huge RoI by the size of the map.
template <typename T, typename I>
MINIMTL_HOST_DEVICE void sample_range(T start, T bin, I p, int64_t grid, I size, I* first, I* last) {
  *first = 0;
  *last = static_cast<I>(grid);  // grid <= kMaxSamplesPerBinSide = 2^30: fits an int32_t
  if (grid <= kFewSamples) return;
  const double step = static_cast<double>(bin) / static_cast<double>(grid);
  const double base = static_cast<double>(start) + static_cast<double>(p) * static_cast<double>(bin);
  if (!(step > 0 && step < INFINITY && base > -INFINITY && base < INFINITY)) {  // no sample lands
    *last = 0;
    return;
  }
  double lo = ceil((-1.0 - base) / step - 0.5) - 1.0;
  double hi = floor((static_cast<double>(size) - base) / step - 0.5) + 2.0;  // exclusive
  lo = lo > 0.0 ? lo : 0.0;
  hi = hi < static_cast<double>(grid) ? hi : static_cast<double>(grid);
  *first = static_cast<I>(lo);
  *last = hi > lo ? static_cast<I>(hi) : *first;
}

// One axis of bilinear interpolation: the pixels below and above a sample and their weights.
// I, the pixel index type: int64_t, or int32_t where the caller knows every index fits (the CUDA
// kernels' 32-bit path: fewer registers, cheaper arithmetic).
template <typename T, typename I = int64_t>
struct Neighbours {
  I low, high;
  T w_low, w_high;
};

// Returns false for a sample that does not count (beyond [-1, size], or NaN).
template <typename T, typename I>
MINIMTL_HOST_DEVICE bool neighbours(T coord, I size, Neighbours<T, I>* out) {
  if (!(coord >= T(-1) && coord <= static_cast<T>(size))) return false;
  if (coord < T(0)) coord = T(0);  // in [-1, 0): the first pixel
  I low = static_cast<I>(coord);
  I high = low + 1;
  T frac = coord - static_cast<T>(low);
  if (low >= size - 1) {  // at or past the last pixel: both neighbours are the last pixel
    low = high = size - 1;
    frac = T(0);
  }
  *out = {low, high, T(1) - frac, frac};
  return true;
}

}  // namespace minimtl
