// The schemas of every minimtl operator, and the Python module `minimtl._C` that loads them.
//
// This file only *declares* the operators (TORCH_LIBRARY). Each backend registers its kernels
// beside its code with TORCH_LIBRARY_IMPL(minimtl, CPU | CUDA, m): csrc/cpu/*.cpp and
// csrc/cuda/*.cu. Python adds the fake (shape-only) kernels for torch.compile and the autograd
// formulas in minimtl/ops/*.py. No pybind11 functions: everything is reached as torch.ops.minimtl.*.

#include <Python.h>
#include <torch/library.h>
#include <torch/version.h>  // TORCH_VERSION_MAJOR/MINOR/PATCH

TORCH_LIBRARY(minimtl, m) {
  // Boxes are (x1, y1, x2, y2). Pairwise, fused in one pass: Tensor[N, 4], Tensor[M, 4] -> [N, M].
  m.def("box_iou(Tensor boxes1, Tensor boxes2) -> Tensor");
  m.def("generalized_box_iou(Tensor boxes1, Tensor boxes2) -> Tensor");

  // Greedy non-maximum suppression: indices (int64) of the kept boxes, by decreasing score.
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");

  // RoIAlign: rois are Tensor[K, 5] of (batch_index, x1, y1, x2, y2); -> Tensor[K, C, ph, pw].
  // The backward is an operator of its own (wired up in minimtl/ops/roi_align.py); it returns
  // grad_input (N, C, H, W), in whichever memory layout the kernel accumulates it in.
  m.def(
      "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
      "int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, "
      "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, "
      "int sampling_ratio, bool aligned) -> Tensor");
}

// Build facts that `import minimtl` checks, so that a stale or mismatched build is reported with
// the command that fixes it (see minimtl/_extension.py).
#define MINIMTL_STR_(x) #x
#define MINIMTL_STR(x) MINIMTL_STR_(x)
#ifndef MINIMTL_SOURCE_HASH
#define MINIMTL_SOURCE_HASH 0xunknown
#endif
#ifdef MINIMTL_WITH_CUDA
#define MINIMTL_CUDA_FLAG 1
#else
#define MINIMTL_CUDA_FLAG 0
#endif

extern "C" {
// An otherwise empty module: importing it loads this shared library, which runs the static
// initialisers of TORCH_LIBRARY and TORCH_LIBRARY_IMPL above and in the kernel files.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
  if (PyModule_AddStringConstant(module, "source_hash", MINIMTL_STR(MINIMTL_SOURCE_HASH)) < 0 ||
      PyModule_AddStringConstant(module, "torch_version", MINIMTL_STR(TORCH_VERSION_MAJOR) "." MINIMTL_STR(
                                     TORCH_VERSION_MINOR) "." MINIMTL_STR(TORCH_VERSION_PATCH)) < 0 ||
      PyModule_AddIntConstant(module, "with_cuda", MINIMTL_CUDA_FLAG) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
}
