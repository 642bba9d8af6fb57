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
