// MINIMTL_LAUNCH(blocks, threads, stream, kernel)(args...) is kernel<<<blocks, threads, 0, stream>>>(args...),
// and the CUDA headers a kernel file needs. Written this way so that one file can also run without
// a GPU: tests/cuda_emulation compiles a kernel file for the CPU with MINIMTL_CUDA_EMULATION
// defined, and its own MINIMTL_LAUNCH runs the grid's threads on the CPU (cuda_on_cpu.h). A kernel
// file that wants this uses static __shared__ arrays only (no dynamic shared memory).
#pragma once

#ifndef MINIMTL_CUDA_EMULATION
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <math_constants.h>

#define MINIMTL_LAUNCH(blocks, threads, stream, ...) __VA_ARGS__<<<blocks, threads, 0, stream>>>
#endif

namespace minimtl {
// The most static shared memory (__shared__ arrays of fixed size) one block may declare. nvcc's
// ptxas refuses a kernel over it; a kernel file also states it with a static_assert over its
// arrays, so that the CPU emulation, which has no such limit, refuses it too.
constexpr size_t kMaxStaticSharedBytes = 48 * 1024;
}  // namespace minimtl
