// The arithmetic of one pair of boxes, shared by the CPU and the CUDA kernels.
//
// It is written line for line like minimtl/ops/reference.py, and no product here is contracted
// with an addition into a fused multiply-add: on the CPU the whole build says so
// (-ffp-contract=off), on the GPU each product does (mul_rn: __fmul_rn / __dmul_rn, which nvcc never
// fuses), so the other CUDA code (RoIAlign) keeps its FMAs. Every kernel then produces the
// reference's IoU to the last bit, so NMS takes the same decision everywhere, even when an IoU
// equals the threshold exactly.
//
// Boxes are (x1, y1, x2, y2). The rules for degenerate and non-finite input (documented in
// minimtl/ops/boxes.py) follow from three lines below:
//   * widths are clamped at 0 with a comparison that keeps NaN (like torch.clamp(min=0)), so a box
//     with x2 <= x1 or y2 <= y1 has area 0, and a box with a NaN coordinate has area NaN;
//   * IoU = inter / union only where union > 0, else 0 (NaN > 0 is false): a zero-area pair and
//     any box with area NaN give 0;
//   * GIoU adds its penalty only where the enclosing area is > 0, clamped to [0, 1] (where it lies
//     exactly; a union that overflows to inf, from two finite areas, would push it to -inf), and
//     any NaN left (from inf - inf) becomes 0.
#pragma once

#if defined(__CUDACC__)
#define MINIMTL_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MINIMTL_HOST_DEVICE inline
#endif

namespace minimtl {

// a * b, rounded on its own: never fused with an addition that uses it (see the top of the file).
template <typename T>
MINIMTL_HOST_DEVICE T mul_rn(T a, T b) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) == 8) {
    return __dmul_rn(a, b);
  } else {
    return __fmul_rn(a, b);
  }
#else
  return a * b;
#endif
}

// max(x, 0) that keeps NaN, as torch.clamp does: NaN < 0 is false, so NaN is returned.
template <typename T>
MINIMTL_HOST_DEVICE T clamp_min0(T x) {
  return x < T(0) ? T(0) : x;
}

// Plain comparisons, not fminf/fmaxf: their NaN rules differ between host and device. A NaN here
// cannot reach the result anyway, because the box's area is NaN (see above).
template <typename T>
MINIMTL_HOST_DEVICE T min_(T a, T b) {
  return b < a ? b : a;
}
template <typename T>
MINIMTL_HOST_DEVICE T max_(T a, T b) {
  return a < b ? b : a;
}

template <typename T>
MINIMTL_HOST_DEVICE T box_area(T x1, T y1, T x2, T y2) {
  return mul_rn(clamp_min0(x2 - x1), clamp_min0(y2 - y1));
}

// Area of the intersection of boxes a and b (0 when they do not overlap).
template <typename T>
MINIMTL_HOST_DEVICE T intersection(T ax1, T ay1, T ax2, T ay2, T bx1, T by1, T bx2, T by2) {
  T w = clamp_min0(min_(ax2, bx2) - max_(ax1, bx1));
  T h = clamp_min0(min_(ay2, by2) - max_(ay1, by1));
  return mul_rn(w, h);
}

// IoU from the intersection and the two areas. Both branches are computed and one is selected, so
// the compiler can vectorise a loop of these without a branch.
template <typename T>
MINIMTL_HOST_DEVICE T iou_from_areas(T inter, T area_a, T area_b) {
  T uni = area_a + area_b - inter;
  T safe = uni > T(0) ? uni : T(1);
  T iou = inter / safe;
  return uni > T(0) ? iou : T(0);
}

template <typename T>
MINIMTL_HOST_DEVICE T pair_iou(T ax1, T ay1, T ax2, T ay2, T area_a, T bx1, T by1, T bx2, T by2, T area_b) {
  T inter = intersection(ax1, ay1, ax2, ay2, bx1, by1, bx2, by2);
  return iou_from_areas(inter, area_a, area_b);
}

// GIoU = IoU - (C - U) / C, C the area of the smallest box enclosing both, U the union.
template <typename T>
MINIMTL_HOST_DEVICE T pair_giou(T ax1, T ay1, T ax2, T ay2, T area_a, T bx1, T by1, T bx2, T by2, T area_b) {
  T inter = intersection(ax1, ay1, ax2, ay2, bx1, by1, bx2, by2);
  T uni = area_a + area_b - inter;
  T iou = iou_from_areas(inter, area_a, area_b);
  T cw = clamp_min0(max_(ax2, bx2) - min_(ax1, bx1));
  T ch = clamp_min0(max_(ay2, by2) - min_(ay1, by1));
  T enclose = mul_rn(cw, ch);
  T safe = enclose > T(0) ? enclose : T(1);
  T penalty = (enclose - uni) / safe;
  penalty = penalty < T(0) ? T(0) : (penalty > T(1) ? T(1) : penalty);  // keeps NaN, like torch.clamp
  T giou = iou - penalty;
  giou = enclose > T(0) ? giou : iou;
  return giou == giou ? giou : T(0);  // NaN != NaN: what inf - inf left becomes 0
}

}  // namespace minimtl
