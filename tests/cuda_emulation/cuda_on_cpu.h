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
//
// Two options, both off unless an op of the emulation switches them on (tests/cuda_emulation/ops.cpp,
// and its Python side tests/cuda_emulation/emulation.py), so that the default run above is unchanged:
//   * a trace (trace_start .. trace_stop): every launch (kernel name, grid, block), every thread it
//     runs, in order, every atomicAdd/atomicOr (which thread, address, value), and, for a pointer
//     argument named in a `watch`, which thread wrote which of its elements. A watched buffer must
//     be one the kernel writes and never reads: before each thread runs, its elements are set to a
//     pattern no kernel writes in practice (a signalling NaN for float32 and float64), and those that
//     differ from it afterwards are the thread's writes (the others get their old bytes back).
//   * a thread order (set_thread_order): each launch runs its threads (a cooperative launch: its
//     blocks) in a shuffled order drawn from a seed, standing in for a GPU that promises no order
//     between threads: a float atomicAdd's sum may then change in its last bits, an integer one not.
// Under either, a cooperative block's threads take turns instead of running as free OS threads: one
// runs at a time, in threadIdx order, until it reaches __syncthreads or returns, so every write and
// atomic belongs to one thread. The cost: a launch under either runs its threads one at a time, and
// a watched buffer is filled and compared once per thread, so keep traced launches small.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
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

// dim3. A size outside an unsigned int, which a real dim3 would silently truncate, is refused.
inline unsigned dim3_size(int64_t v) {
  TORCH_CHECK(v >= 0 && v <= int64_t{0xFFFFFFFF}, "dim3: a grid or block size of ", v,
              " does not fit an unsigned int (a real launch would truncate it)");
  return static_cast<unsigned>(v);
}
struct Dim3 {
  unsigned x, y, z;
  Dim3(int64_t x_ = 1, int64_t y_ = 1, int64_t z_ = 1) : x(dim3_size(x_)), y(dim3_size(y_)), z(dim3_size(z_)) {}
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

// --- The trace and the thread order (see the top of the file); off unless asked for ----------

// "Watch argument `argument` of kernel `kernel` (its name up to any '<'): its first `numel` elements."
struct Watch {
  std::string kernel;
  int64_t argument, numel;
};

// One watched buffer during a launch.
struct Watched {
  char* base;
  size_t size;  // bytes per element
  int64_t numel;
  int64_t watch;  // index into Trace::watches
  std::vector<char> saved;
};

struct Trace {
  std::vector<Watch> watches;
  std::vector<std::string> kernels;  // per launch: the kernel as the host code names it
  std::vector<int64_t> launches;     // per launch: grid x, y, z, block x, y, z
  std::vector<int64_t> threads;      // per thread run (an "event"): launch, blockIdx x, y, threadIdx x, y
  std::vector<int64_t> writes;       // per element written: event, watch, element, bits
  std::vector<int64_t> atomics;      // per atomic: event, address, bits of the value, 0 (add) or 1 (or)
  std::vector<double> atomic_values;  // per atomic: the value (an integer's as a signed 64-bit number)
};
inline Trace* trace = nullptr;
inline thread_local int64_t current_event = -1;  // the running thread's event, for its atomics
inline int64_t thread_order_seed = -1;           // < 0: the default order

// The bytes a watched element holds until a thread writes it: a signalling NaN in float32 and
// float64 (arithmetic never stores one), the same idea in the other sizes.
inline void poison_pattern(size_t size, char* out) {
  const uint64_t pattern = size == 8   ? 0x7FF4A5A5A5A5A5A5ULL
                           : size == 4 ? 0x7FA5A5A5ULL
                           : size == 2 ? 0x7FA5ULL
                                       : 0xA5ULL;
  std::memcpy(out, &pattern, size);  // little-endian: the low bytes
}

inline void poison(std::vector<Watched>& watched) {
  for (Watched& w : watched) {
    w.saved.assign(w.base, w.base + w.size * w.numel);
    char pattern[8];
    poison_pattern(w.size, pattern);
    for (int64_t e = 0; e < w.numel; ++e) std::memcpy(w.base + e * w.size, pattern, w.size);
  }
}

// The elements that no longer hold the pattern were written by `event`; the others get their bytes back.
inline void collect(std::vector<Watched>& watched, int64_t event) {
  for (Watched& w : watched) {
    char pattern[8];
    poison_pattern(w.size, pattern);
    for (int64_t e = 0; e < w.numel; ++e) {
      char* element = w.base + e * w.size;
      if (std::memcmp(element, pattern, w.size) == 0) {
        std::memcpy(element, w.saved.data() + e * w.size, w.size);
        continue;
      }
      int64_t bits = 0;
      std::memcpy(&bits, element, w.size);
      trace->writes.insert(trace->writes.end(), {event, w.watch, e, bits});
    }
  }
}

template <typename A>
void pointer_of(A a, Watched* out) {
  if constexpr (std::is_pointer_v<A> && !std::is_void_v<std::remove_cv_t<std::remove_pointer_t<A>>>) {
    out->base = reinterpret_cast<char*>(const_cast<std::remove_cv_t<std::remove_pointer_t<A>>*>(a));
    out->size = sizeof(*a);
  }
}

// The buffers the trace watches in this launch of `kernel`.
template <typename... Args>
std::vector<Watched> watched_arguments(const std::string& kernel, Args... args) {
  std::vector<Watched> watched;
  for (size_t k = 0; k < trace->watches.size(); ++k) {
    const Watch& watch = trace->watches[k];
    if (kernel.substr(0, kernel.find('<')) != watch.kernel) continue;
    TORCH_CHECK(watch.argument >= 0 && watch.argument < static_cast<int64_t>(sizeof...(Args)), "trace: ", watch.kernel,
                " has ", sizeof...(Args), " arguments, cannot watch argument ", watch.argument);
    Watched w{nullptr, 0, watch.numel, static_cast<int64_t>(k), {}};
    int64_t i = 0;
    ((i++ == watch.argument ? pointer_of(args, &w) : void()), ...);
    TORCH_CHECK(w.base != nullptr, "trace: argument ", watch.argument, " of ", watch.kernel, " is not a pointer");
    watched.push_back(std::move(w));
  }
  return watched;
}

inline int64_t record_thread(int64_t launch, Dim3 block, Dim3 thread) {
  trace->threads.insert(trace->threads.end(), {launch, block.x, block.y, thread.x, thread.y});
  return static_cast<int64_t>(trace->threads.size() / 5) - 1;
}

template <typename T>
void record_atomic(const T* address, T value, int64_t kind) {
  int64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T) < 8 ? sizeof(T) : 8);
  const auto where = static_cast<int64_t>(reinterpret_cast<uintptr_t>(address));
  trace->atomics.insert(trace->atomics.end(), {current_event, where, bits, kind});
  if constexpr (std::is_integral_v<T>) {
    trace->atomic_values.push_back(static_cast<double>(static_cast<int64_t>(value)));
  } else {
    trace->atomic_values.push_back(static_cast<double>(value));
  }
}

// A fixed shuffle (Fisher-Yates on splitmix64), the same with every compiler.
template <typename Item>
void shuffle(std::vector<Item>& items, int64_t seed) {
  uint64_t state = static_cast<uint64_t>(seed);
  for (size_t i = items.size(); i > 1; --i) {
    uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    std::swap(items[i - 1], items[z % i]);
  }
}

// A cooperative block under a trace or a thread order: its threads take turns, one at a time, in threadIdx order,
// each until it reaches __syncthreads or returns; when every thread still running has reached the
// barrier, the next phase starts. The running thread alone touches memory, so what changes while it
// runs is its doing.
class TakingTurns {
 public:
  TakingTurns(std::vector<int64_t> events, std::vector<Watched>* watched)
      : events_(std::move(events)), state_(events_.size(), kReady), watched_(watched) {}

  void start(int64_t me) {
    std::unique_lock<std::mutex> lock(mutex_);
    wake_.wait(lock, [&] { return turn_ == me; });
    begin(me);
  }
  void sync(int64_t me) {
    end(me);
    std::unique_lock<std::mutex> lock(mutex_);
    state_[me] = kWaiting;
    pass_turn();
    wake_.wait(lock, [&] { return turn_ == me; });
    begin(me);
  }
  void finish(int64_t me) {
    end(me);
    std::unique_lock<std::mutex> lock(mutex_);
    state_[me] = kDone;
    pass_turn();
  }

 private:
  enum State { kReady, kWaiting, kDone };
  void begin(int64_t me) {
    current_event = events_[me];
    if (watched_ != nullptr) poison(*watched_);
  }
  void end(int64_t me) {
    if (watched_ != nullptr) collect(*watched_, events_[me]);
  }
  void pass_turn() {  // with the lock held
    const int64_t n = static_cast<int64_t>(state_.size());
    for (int64_t t = turn_ + 1; t < n; ++t) {
      if (state_[t] == kReady) {
        turn_ = t;
        wake_.notify_all();
        return;
      }
    }
    turn_ = -1;  // every thread has had its turn: the barrier opens
    for (int64_t t = 0; t < n; ++t) {
      if (state_[t] == kWaiting) state_[t] = kReady;
      if (state_[t] == kReady && turn_ < 0) turn_ = t;
    }
    wake_.notify_all();
  }
  std::vector<int64_t> events_;
  std::vector<State> state_;
  std::vector<Watched>* watched_;
  std::mutex mutex_;
  std::condition_variable wake_;
  int64_t turn_ = 0;
};
inline TakingTurns* taking_turns = nullptr;
inline thread_local int64_t turn_index = -1;  // the thread's place in its block

// MINIMTL_INT32_INDEX_LIMIT (roi_align.cu): lowered by a test to take the 64-bit index path.
inline int64_t int32_index_limit = int64_t{1} << 30;

template <typename Kernel>
struct Launch {
  Dim3 grid, block;
  Kernel kernel;
  const char* name;  // the kernel as the host code names it, e.g. "pairwise_kernel<scalar_t, T, generalized>"
  template <typename... Args>
  void operator()(Args... args) const {
    gridDim = grid;
    blockDim = block;
    if (trace != nullptr || thread_order_seed >= 0) {
      run_traced(args...);
      return;
    }
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

  // The launch under a trace or a thread order: the same threads, one at a time, recorded.
  template <typename... Args>
  void run_traced(Args... args) const {
    int64_t launch = -1;
    std::vector<Watched> watched;
    if (trace != nullptr) {
      launch = static_cast<int64_t>(trace->kernels.size());
      trace->kernels.emplace_back(name);
      trace->launches.insert(trace->launches.end(), {grid.x, grid.y, grid.z, block.x, block.y, block.z});
      watched = watched_arguments(name, args...);
    }
    std::vector<Dim3> blocks;
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) blocks.emplace_back(bx, by, 0);
    if (cooperative) {
      if (thread_order_seed >= 0) shuffle(blocks, thread_order_seed);
      for (const Dim3& b : blocks) run_block_taking_turns(b, launch, watched, args...);
      return;
    }
    std::vector<std::pair<Dim3, Dim3>> order;  // (block, thread)
    for (const Dim3& b : blocks)
      for (unsigned ty = 0; ty < block.y; ++ty)
        for (unsigned tx = 0; tx < block.x; ++tx) order.emplace_back(b, Dim3(tx, ty, 0));
    if (thread_order_seed >= 0) shuffle(order, thread_order_seed);
    for (const auto& [b, t] : order) {
      blockIdx = b;
      threadIdx = t;
      if (trace != nullptr) {
        current_event = record_thread(launch, b, t);
        poison(watched);
      }
      kernel(args...);
      if (trace != nullptr) collect(watched, current_event);
    }
    current_event = -1;
  }

  template <typename... Args>
  void run_block_taking_turns(Dim3 b, int64_t launch, std::vector<Watched>& watched, Args... args) const {
    std::vector<int64_t> events;
    for (unsigned ty = 0; ty < block.y; ++ty)
      for (unsigned tx = 0; tx < block.x; ++tx)
        events.push_back(trace != nullptr ? record_thread(launch, b, Dim3(tx, ty, 0)) : -1);
    TakingTurns turns(events, trace != nullptr ? &watched : nullptr);
    taking_turns = &turns;
    std::vector<std::thread> threads;
    for (unsigned ty = 0; ty < block.y; ++ty)
      for (unsigned tx = 0; tx < block.x; ++tx)
        threads.emplace_back([&, tx, ty] {
          const int64_t me = static_cast<int64_t>(ty) * block.x + tx;
          turn_index = me;
          turns.start(me);
          blockIdx = b;
          threadIdx = Dim3(tx, ty, 0);
          kernel(args...);
          turns.finish(me);
        });
    for (std::thread& t : threads) t.join();
    taking_turns = nullptr;
  }
};

inline Dim3 dims(int64_t x) { return Dim3(x); }  // a launch's grid or block given as one integer
inline Dim3 dims(Dim3 d) { return d; }

// What a GPU refuses with cudaErrorInvalidConfiguration (compute capability 9.0, and every one
// since 3.0): an empty grid or block, more than 1024 threads a block or more than 1024 x 1024 x 64
// along its axes, a grid beyond 2^31 - 1 x 65535 x 65535. The emulation refuses the same launches,
// so that such a bug fails on a CPU too instead of running silently. (Static shared memory over
// 48 KiB is refused earlier, by the compiler: ptxas for nvcc, the static_asserts of the kernel
// files for the emulation; see launch.cuh.)
inline void check_launch(Dim3 grid, Dim3 block, const char* name) {
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  const bool ok = grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && grid.x <= 0x7FFFFFFFu && grid.y <= 65535 &&
                  grid.z <= 65535 && threads >= 1 && threads <= 1024 && block.x <= 1024 && block.y <= 1024 &&
                  block.z <= 64;
  TORCH_CHECK(ok, "cudaErrorInvalidConfiguration (emulated): launch of ", name, " with grid (", grid.x, ", ", grid.y,
              ", ", grid.z, ") and block (", block.x, ", ", block.y, ", ", block.z,
              "); a grid needs 1 to 2^31 - 1 x 65535 x 65535 blocks, a block 1 to 1024 threads");
  TORCH_CHECK(grid.z == 1 && block.z == 1, "launch of ", name, ": the emulation runs the x and y axes only, got grid.z = ",
              grid.z, " and block.z = ", block.z);
}

template <typename Kernel>
Launch<Kernel> launch(Dim3 grid, Dim3 block, void* /*stream*/, Kernel kernel, const char* name) {
  check_launch(grid, block, name);
  return {grid, block, kernel, name};
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
                              [&](auto... args) { __VA_ARGS__(args...); }, #__VA_ARGS__)
#define MINIMTL_INT32_INDEX_LIMIT (::minimtl_emulation::int32_index_limit)

inline void __syncthreads() {
  if (minimtl_emulation::taking_turns != nullptr) {  // under a trace or a thread order
    minimtl_emulation::taking_turns->sync(minimtl_emulation::turn_index);
    return;
  }
  TORCH_CHECK(minimtl_emulation::block_barrier != nullptr,
              "__syncthreads outside a minimtl_emulation::Cooperative scope: run this kernel's op in one");
  minimtl_emulation::block_barrier->arrive_and_wait();
}

template <typename T>
T atomicAdd(T* address, T value) {
  if (minimtl_emulation::trace != nullptr) minimtl_emulation::record_atomic(address, value, 0);
  const T old = *address;
  *address = old + value;  // unsigned long long wraps modulo 2^64, as on the GPU
  return old;
}
inline int atomicOr(int* address, int value) {
  if (minimtl_emulation::trace != nullptr) minimtl_emulation::record_atomic(address, value, 1);
  const int old = *address;
  *address = old | value;
  return old;
}

// The host API, for CPU memory and a stream that is always idle.
using cudaStream_t = void*;
enum cudaMemcpyKind { cudaMemcpyDeviceToHost };
inline int cudaMemsetAsync(void* p, int value, size_t n, cudaStream_t) { return std::memset(p, value, n), 0; }
// Each copy to the host and each stream synchronisation is counted (host_waits): on a GPU each
// makes the CPU wait for the kernels queued before it, so a test can assert that an op has none.
namespace minimtl_emulation {
inline int64_t host_waits = 0;
}
inline int cudaMemcpyAsync(void* to, const void* from, size_t n, cudaMemcpyKind, cudaStream_t) {
  ++minimtl_emulation::host_waits;
  return std::memcpy(to, from, n), 0;
}
inline int cudaStreamSynchronize(cudaStream_t) { return ++minimtl_emulation::host_waits, 0; }
#define C10_CUDA_CHECK(call) TORCH_CHECK((call) == 0, #call " failed")
#define C10_CUDA_KERNEL_LAUNCH_CHECK()

namespace c10::cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};
inline cudaStream_t getCurrentCUDAStream() { return nullptr; }
}  // namespace c10::cuda
