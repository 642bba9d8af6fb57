// Boxes as a structure of arrays, in the compute type T (float, or double for float64 input).
//
// A Tensor[N, 4] stores x1 y1 x2 y2 x1 y1 x2 y2 ...: a loop over boxes would read every coordinate
// with a stride of 4. Copied once into x1[N], y1[N], x2[N], y2[N] (and the area, used by every
// pair), the inner loops of box_iou and NMS read each with one contiguous vector load. The copy is
// O(N); the loops it speeds up are O(N * M).
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "../box_math.h"

namespace minimtl {

template <typename T>
struct BoxArrays {
  std::vector<T> x1, y1, x2, y2, area;

  explicit BoxArrays(int64_t n) : x1(n), y1(n), x2(n), y2(n), area(n) {}
};

// The boxes of a Tensor[*, 4] of scalar_t, in the order given by `order` (all n of them, in their
// own order, when `order` is null). Reads any strides: no contiguous copy is needed.
template <typename T, typename scalar_t>
BoxArrays<T> load_boxes(const at::Tensor& boxes, const int64_t* order, int64_t n) {
  BoxArrays<T> out(n);
  auto b = boxes.accessor<scalar_t, 2>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t k = order ? order[i] : i;
    out.x1[i] = static_cast<T>(b[k][0]);
    out.y1[i] = static_cast<T>(b[k][1]);
    out.x2[i] = static_cast<T>(b[k][2]);
    out.y2[i] = static_cast<T>(b[k][3]);
    out.area[i] = box_area(out.x1[i], out.y1[i], out.x2[i], out.y2[i]);
  }
  return out;
}

}  // namespace minimtl
