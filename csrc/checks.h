// Input checks shared by the CPU and CUDA kernels. Messages are for people: they name the operator,
// the argument, what was expected and what came (minimtl/ops/_checks.py says the same in Python,
// for the fake kernels that torch.compile runs instead of these).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

namespace minimtl {

inline void check_boxes(const char* op, const char* name, const at::Tensor& boxes) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, op, ": ", name,
              " must be a Tensor[N, 4] of (x1, y1, x2, y2) boxes, got shape ", boxes.sizes());
  TORCH_CHECK(at::isFloatingType(boxes.scalar_type()), op, ": ", name,
              " must be floating point (float16, bfloat16, float32 or float64), got ", boxes.scalar_type());
}

inline void check_scores(const char* op, const at::Tensor& scores, int64_t n) {
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == n, op, ": scores must be a Tensor[N] with one score per box (N = ",
              n, "), got shape ", scores.sizes());
  TORCH_CHECK(at::isFloatingType(scores.scalar_type()), op,
              ": scores must be floating point (float16, bfloat16, float32 or float64), got ", scores.scalar_type());
}

inline void check_idxs(const char* op, const at::Tensor& idxs, int64_t n) {
  TORCH_CHECK(idxs.dim() == 1 && idxs.size(0) == n, op, ": idxs must be a Tensor[N] with one class index per box (N = ",
              n, "), got shape ", idxs.sizes());
  TORCH_CHECK(at::isIntegralType(idxs.scalar_type(), /*includeBool=*/false), op,
              ": idxs must be an integer tensor (e.g. int64), got ", idxs.scalar_type());
}

inline void check_threshold(const char* op, double iou_threshold) {
  TORCH_CHECK(iou_threshold == iou_threshold, op, ": iou_threshold must be a number, got NaN");
}

// Every tensor on one device: the dispatcher picks a kernel from the "highest" device among the
// arguments, so a CPU tensor can reach a CUDA kernel (and the other way round) unless we check.
inline void check_same_device(const char* op, const char* name_a, const at::Tensor& a, const char* name_b,
                              const at::Tensor& b) {
  TORCH_CHECK(a.device() == b.device(), op, ": ", name_a, " and ", name_b,
              " must be on the same device, got ", a.device(), " and ", b.device());
}

inline void check_same_dtype(const char* op, const char* name_a, const at::Tensor& a, const char* name_b,
                             const at::Tensor& b) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), op, ": ", name_a, " and ", name_b,
              " must have the same dtype, got ", a.scalar_type(), " and ", b.scalar_type());
}

// Everything box_iou and generalized_box_iou need of their inputs.
inline void check_pairwise_inputs(const char* op, const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_boxes(op, "boxes1", boxes1);
  check_boxes(op, "boxes2", boxes2);
  check_same_device(op, "boxes1", boxes1, "boxes2", boxes2);
  check_same_dtype(op, "boxes1", boxes1, "boxes2", boxes2);
}

// Everything nms (idxs null) and batched_nms need of their inputs.
inline void check_nms_inputs(const char* op, const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs,
                             double iou_threshold) {
  check_boxes(op, "boxes", boxes);
  check_scores(op, scores, boxes.size(0));
  check_same_device(op, "boxes", boxes, "scores", scores);
  if (idxs) {
    check_idxs(op, *idxs, boxes.size(0));
    check_same_device(op, "boxes", boxes, "idxs", *idxs);
  }
  check_threshold(op, iou_threshold);
}

// rois[:, 0] must hold integer batch indices in [0, batch_size): anything else would read outside
// the input. Computed with tensor ops, so it works on any device. The CPU kernels call it first.
// The CUDA kernels do not (the answer would make the host wait for the GPU on every call): each
// thread skips a bad row itself, and minimtl.ops.roi_align checks a caller's RoIs in Python
// (minimtl/ops/_checks.py, the same message).
inline void check_batch_indices(const char* op, const at::Tensor& rois, int64_t batch_size) {
  if (rois.size(0) == 0) return;
  const at::Tensor index = rois.select(1, 0);
  const at::Tensor bad = index.lt(0).logical_or_(index.ge(batch_size)).logical_or_(index.ne(index.floor()));  // NaN != NaN
  if (!bad.any().item<bool>()) return;
  const int64_t k = bad.nonzero().select(1, 0)[0].item<int64_t>();
  TORCH_CHECK(false, op, ": rois[:, 0] must hold integer batch indices in [0, ", batch_size, "), got ",
              index[k].item<double>(), " in row ", k);
}

inline void check_rois(const char* op, const at::Tensor& rois) {
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, op,
              ": rois must be a Tensor[K, 5] of (batch_index, x1, y1, x2, y2), got shape ", rois.sizes());
  TORCH_CHECK(at::isFloatingType(rois.scalar_type()), op, ": rois must be floating point, got ", rois.scalar_type());
}

inline void check_output_size(const char* op, int64_t pooled_height, int64_t pooled_width) {
  TORCH_CHECK(pooled_height > 0 && pooled_width > 0, op, ": output_size must be positive, got (", pooled_height,
              ", ", pooled_width, ")");
}

// Everything roi_align needs of its inputs' shapes and types (the batch indices: check_batch_indices).
inline void check_roi_align_inputs(const char* op, const at::Tensor& input, const at::Tensor& rois,
                                   int64_t pooled_height, int64_t pooled_width) {
  TORCH_CHECK(input.dim() == 4, op, ": input must be a Tensor[N, C, H, W], got shape ", input.sizes());
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), op,
              ": input must be floating point (float16, bfloat16, float32 or float64), got ", input.scalar_type());
  check_rois(op, rois);
  check_same_device(op, "input", input, "rois", rois);
  check_output_size(op, pooled_height, pooled_width);
}

// Everything _roi_align_backward needs of its inputs' shapes and types (as above).
inline void check_roi_align_backward_inputs(const char* op, const at::Tensor& grad, const at::Tensor& rois,
                                            int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                            int64_t channels, int64_t height, int64_t width) {
  check_rois(op, rois);
  check_same_device(op, "grad", grad, "rois", rois);
  check_output_size(op, pooled_height, pooled_width);
  TORCH_CHECK(batch_size >= 0 && channels >= 0 && height >= 0 && width >= 0, op,
              ": the input's size must not be negative, got (", batch_size, ", ", channels, ", ", height, ", ", width, ")");
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == channels &&
                  grad.size(2) == pooled_height && grad.size(3) == pooled_width,
              op, ": grad must be a Tensor[K, C, ph, pw] = [", rois.size(0), ", ", channels, ", ", pooled_height, ", ",
              pooled_width, "], got shape ", grad.sizes());
  TORCH_CHECK(at::isFloatingType(grad.scalar_type()), op, ": grad must be floating point, got ", grad.scalar_type());
}

}  // namespace minimtl
