// Just enough of CUDA to run a kernel file's kernels and host code on the CPU, for tests on
// machines without a GPU (tests/test_cuda_emulation.py). Include it, then the .cu file, with
// MINIMTL_CUDA_EMULATION defined (csrc/cuda/launch.cuh).
//
// A launch runs the blocks one after another. By default the threads of a block run one after
// another too, which is exact for kernels whose threads never wait for each other (RoIAlign, IoU):
// each thread's arithmetic, indexing and memory accesses are the real ones, and atomics are plain
// read-modify-writes. Kernels that use __syncthreads (NMS) run inside a `Cooperative` scope, where
// each thread of a block is an OS thread and __syncthreads a barrier; __shared__ arrays are static
// variables, shared by the block's threads (blocks never overlap). Tensors live in CPU memory, so a
// stray index is caught by AddressSanitizer (scripts/sanitize.sh) instead of compute-sanitizer.
// What it cannot show: the GPU's races and memory model, the order of its atomic additions, speed.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#ifndef MINIMTL_CUDA_EMULATION
#error "define MINIMTL_CUDA_EMULATION before including cuda_on_cpu.h"
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define CUDART_NAN NAN
#define CUDART_INF INFINITY

// Device math the kernels call unqualified, as CUDA's headers declare it.
using std::ceil;
using std::floor;
using std::isfinite;
using std::isnan;
using std::ldexp;
using std::max;
using std::min;
inline long long __double2ll_rn(double x) { return std::llrint(x); }  // round to nearest, ties to even
inline int __ffsll(long long x) { return __builtin_ffsll(x); }  // 1 + the index of the lowest set bit; 0 for 0

namespace minimtl_emulation {

struct Dim3 {
  unsigned x, y, z;
  Dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
inline thread_local Dim3 threadIdx, blockIdx;  // the running thread's coordinates
inline Dim3 blockDim, gridDim;

// Inside a Cooperative scope, launches run each block's threads as OS threads that meet at
// __syncthreads; outside, __syncthreads is an error.
inline bool cooperative = false;

// What __syncthreads waits at: every running thread of the block arrives, then all go on. A thread
// that has returned from the kernel is not waited for. (std::barrier would do, but it is C++20, and
// extensions of older torch versions are built as C++17.)
class BlockBarrier {
 public:
  explicit BlockBarrier(int64_t threads) : expected_(threads) {}

  void arrive_and_wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    const int64_t phase = phase_;
    if (++arrived_ == expected_) {
      next_phase();
      return;
    }
    wake_.wait(lock, [&] { return phase_ != phase; });
  }

  void drop() {  // the calling thread has returned: later phases wait for one thread fewer
    std::unique_lock<std::mutex> lock(mutex_);
    if (--expected_ > 0 && arrived_ == expected_) next_phase();
  }

 private:
  void next_phase() {
    arrived_ = 0;
    ++phase_;
    wake_.notify_all();
  }
  std::mutex mutex_;
  std::condition_variable wake_;
  int64_t expected_, arrived_ = 0, phase_ = 0;
};
inline BlockBarrier* block_barrier = nullptr;
struct Cooperative {
  Cooperative() { cooperative = true; }
  ~Cooperative() { cooperative = false; }
};

// MINIMTL_INT32_INDEX_LIMIT (roi_align.cu): lowered by a test to take the 64-bit index path.
inline int64_t int32_index_limit = int64_t{1} << 30;

template <typename Kernel>
struct Launch {
  Dim3 grid, block;
  Kernel kernel;
  template <typename... Args>
  void operator()(Args... args) const {
    gridDim = grid;
    blockDim = block;
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        if (cooperative) {
          run_block_in_threads(Dim3(bx, by, 0), args...);
          continue;
        }
        for (unsigned ty = 0; ty < block.y; ++ty)
          for (unsigned tx = 0; tx < block.x; ++tx) {
            blockIdx = Dim3(bx, by, 0);
            threadIdx = Dim3(tx, ty, 0);
            kernel(args...);
          }
      }
  }

  template <typename... Args>
  void run_block_in_threads(Dim3 b, Args... args) const {
    BlockBarrier barrier(static_cast<int64_t>(block.x) * block.y);
    block_barrier = &barrier;
    std::vector<std::thread> threads;
    for (unsigned ty = 0; ty < block.y; ++ty)
      for (unsigned tx = 0; tx < block.x; ++tx)
        threads.emplace_back([&, tx, ty] {
          blockIdx = b;
          threadIdx = Dim3(tx, ty, 0);
          kernel(args...);
          barrier.drop();
        });
    for (std::thread& t : threads) t.join();
    block_barrier = nullptr;
  }
};

inline Dim3 dims(int64_t x) { return Dim3(static_cast<unsigned>(x)); }
inline Dim3 dims(Dim3 d) { return d; }

template <typename Kernel>
Launch<Kernel> launch(Dim3 grid, Dim3 block, void* /*stream*/, Kernel kernel) {
  return {grid, block, kernel};
}

}  // namespace minimtl_emulation

using minimtl_emulation::blockDim;
using minimtl_emulation::blockIdx;
using minimtl_emulation::gridDim;
using minimtl_emulation::threadIdx;
using dim3 = minimtl_emulation::Dim3;

// The kernel is called through a generic lambda, so that its remaining template arguments are
// deduced from the call's arguments, as in a real launch.
#define MINIMTL_LAUNCH(blocks, threads, stream, ...)                                                       \
  ::minimtl_emulation::launch(::minimtl_emulation::dims(blocks), ::minimtl_emulation::dims(threads), stream, \
                              [&](auto... args) { __VA_ARGS__(args...); })
#define MINIMTL_INT32_INDEX_LIMIT (::minimtl_emulation::int32_index_limit)

inline void __syncthreads() {
  TORCH_CHECK(minimtl_emulation::block_barrier != nullptr,
              "__syncthreads outside a minimtl_emulation::Cooperative scope: run this kernel's op in one");
  minimtl_emulation::block_barrier->arrive_and_wait();
}

template <typename T>
T atomicAdd(T* address, T value) {
  const T old = *address;
  *address = old + value;  // unsigned long long wraps modulo 2^64, as on the GPU
  return old;
}
inline int atomicOr(int* address, int value) {
  const int old = *address;
  *address = old | value;
  return old;
}

// The host API, for CPU memory and a stream that is always idle.
using cudaStream_t = void*;
enum cudaMemcpyKind { cudaMemcpyDeviceToHost };
inline int cudaMemsetAsync(void* p, int value, size_t n, cudaStream_t) { return std::memset(p, value, n), 0; }
inline int cudaMemcpyAsync(void* to, const void* from, size_t n, cudaMemcpyKind, cudaStream_t) {
  return std::memcpy(to, from, n), 0;
}
inline int cudaStreamSynchronize(cudaStream_t) { return 0; }
#define C10_CUDA_CHECK(call) TORCH_CHECK((call) == 0, #call " failed")
#define C10_CUDA_KERNEL_LAUNCH_CHECK()

namespace c10::cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};
inline cudaStream_t getCurrentCUDAStream() { return nullptr; }
}  // namespace c10::cuda
