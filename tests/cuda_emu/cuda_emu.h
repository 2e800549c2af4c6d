// cuda_emu.h — run CUDA C++ kernels on the CPU, for tests on machines without a GPU.
//
// Compile a .cu file with the system C++ compiler (C++17), force-including this header and with
// tests/cuda_emu/include on the include path (it holds stand-ins for <cuda_fp16.h>,
// <cuda_bf16.h>, <cuda_runtime.h> and <mma.h>). The harness in tests/cuda_emu/__init__.py does that and
// launches kernels from Python through ctypes.
//
// Model: the blocks of a grid run one after another; the threads of a block run as cooperative
// fibers (ucontext, 128 KiB stacks with a guard page; CUDA_EMU_STACK_KIB changes the size) on one
// OS thread. A fiber runs until it reaches a synchronisation point — __syncthreads() (the whole
// block) or a warp-synchronous call (__syncwarp, a shuffle, a vote) — and a point is released
// once every live thread it concerns has reached it. Warps are the unit of scheduling: a released
// warp may run on, far ahead of the others, up to the next __syncthreads, as on a GPU; so a
// missing __syncthreads shows as a wrong result. The launch seed picks the order: 0 runs the
// lowest ready warp first and lanes in index order; any other seed picks warps and lane orders
// at random (run a kernel under a few seeds).
//
// Strict where CUDA is undefined: a __syncthreads some threads skip or reach a different number of
// times, lanes of a warp at different warp-synchronous calls, a barrier against a shuffle, a mask
// that leaves out a live lane or names a lane that exited without joining, a shuffle that reads an
// absent lane: each fails the launch with a message (and the block) instead of hanging or
// returning garbage. Masks must name exactly the warp's live lanes (partial-warp participation is
// not emulated). Memory is not bounds-checked: an out-of-range access is a crash, as it may be on
// a GPU.
//
// Provided: threadIdx, blockIdx, blockDim, gridDim, warpSize, dim3; __global__, __device__,
// __host__, __forceinline__, __noinline__, __launch_bounds__, __align__, __restrict__; __shared__
// (a static per kernel instantiation, shared by the block's fibers; not cleared between blocks,
// so do not rely on its contents, as on a GPU) and dynamic shared memory through
// CUDA_EMU_DYNAMIC_SHARED / cuda_emu_dynamic_shared(); the dynamic buffer starts 128-byte aligned
// and is filled with 0xFF bytes (NaN as float) before every block;
// __syncthreads, __syncwarp, __shfl_sync, __shfl_up_sync, __shfl_down_sync, __shfl_xor_sync,
// __ballot_sync, __any_sync, __all_sync, __activemask; atomicAdd/Sub/Max/Min/Exch/CAS;
// __threadfence*; __ldg; __expf, __logf, __fdividef, __frcp_rn, __saturatef, rsqrtf, exp2f and
// the <math.h> functions (fminf, fmaxf, INFINITY, ...); min/max for ints and floats;
// __float_as_int, __int_as_float, __float_as_uint, __uint_as_float, __popc, __clz, __ffs;
// __half / half and __nv_bfloat16 / nv_bfloat16 with round-to-nearest-even conversions and
// arithmetic through float; the WMMA fragment API of <mma.h> (nvcuda::wmma: fragment,
// fill_fragment, load_matrix_sync, store_matrix_sync, mma_sync; shapes 16×16×16, 32×8×16,
// 8×32×16; see the WMMA section at the end). Not (yet) provided: __half2, cooperative groups,
// textures, inline PTX.
#pragma once
#define CUDA_EMU 1

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))  // GCC accepts it after `static` too
#define __shared__ static
#define __constant__ static

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1)
      : x(x_), y(y_), z(z_) {}
};
typedef dim3 uint3;

namespace cuda_emu {

constexpr size_t kSharedAlign = 128;  // alignment of the dynamic shared buffer

enum class State { Ready, AtWarp, AtBlock, Done };
enum class WarpOp { None, Sync, Shuffle, Vote, Matrix };

struct Fiber {
  ucontext_t ctx;
  char* stack = nullptr;
  dim3 tid;
  unsigned lane = 0, warp = 0;
  State state = State::Ready;
  WarpOp op = WarpOp::None;
  unsigned mask = 0;  // the mask of the warp-synchronous call it waits at
  const char* what = "";
  unsigned long warp_calls = 0, block_calls = 0;
};

struct Warp {
  uint64_t slot[2][32][2];  // double-buffered by call parity: one sync per exchange
  unsigned joined[2] = {0, 0};  // the lanes that took part in the last exchange of each parity
  unsigned lanes = 0;           // lanes that exist (the last warp of a block may be partial)
  std::vector<float> wmma[2];   // mma_sync's A, B, C gathered from the lanes, by call parity
};

struct Runtime {
  std::mutex lock;
  dim3 grid_dim, block_dim, block_idx;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  std::vector<char*> stacks;
  size_t stack_size = 0;
  Fiber* current = nullptr;
  ucontext_t scheduler;
  std::function<void()> body;
  std::vector<unsigned char> dynamic_shared;  // kSharedAlign bytes more than asked for
  size_t dynamic_offset = 0;                    // where the aligned buffer starts in it
  bool failed = false;
  std::string error;
  uint64_t rng = 0;
};

inline Runtime& rt() {
  static Runtime r;
  return r;
}

inline Fiber& self() { return *rt().current; }

// Record the first error and return to the scheduler for good: the launch is abandoned.
[[noreturn]] inline void fail(const std::string& message) {
  Runtime& r = rt();
  if (!r.failed) {
    r.failed = true;
    char where[160];
    snprintf(where, sizeof where, " (block (%u, %u, %u), thread (%u, %u, %u))", r.block_idx.x,
             r.block_idx.y, r.block_idx.z, r.current->tid.x, r.current->tid.y, r.current->tid.z);
    r.error = message + where;
  }
  r.current->state = State::Done;
  swapcontext(&r.current->ctx, &r.scheduler);
  __builtin_unreachable();
}

inline void wait(State state) {
  Runtime& r = rt();
  Fiber& f = *r.current;
  f.state = state;
  __atomic_signal_fence(__ATOMIC_SEQ_CST);
  swapcontext(&f.ctx, &r.scheduler);
  __atomic_signal_fence(__ATOMIC_SEQ_CST);
}

inline void block_sync() {
  self().block_calls++;
  wait(State::AtBlock);
}

inline unsigned live_lanes(const Fiber& f) {
  Runtime& r = rt();
  unsigned live = 0;
  for (unsigned l = 0; l < r.warps[f.warp].lanes; ++l) {
    if (r.fibers[f.warp * 32 + l].state != State::Done || &r.fibers[f.warp * 32 + l] == &f) {
      live |= 1u << l;
    }
  }
  return live;
}

// One warp-synchronous exchange: store this lane's bytes, wait for the warp, return the slots.
// The slots of that exchange stay valid until the lane's next-but-one warp-synchronous call.
template <class T>
inline const uint64_t (*exchange(T value, WarpOp op, unsigned mask, const char* what))[2] {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 16,
                "warp exchange of a type larger than 16 bytes");
  Fiber& f = self();
  Warp& w = rt().warps[f.warp];
  const unsigned parity = f.warp_calls & 1;
  memset(w.slot[parity][f.lane], 0, sizeof w.slot[parity][f.lane]);
  memcpy(w.slot[parity][f.lane], &value, sizeof(T));
  f.warp_calls++;
  f.op = op;
  f.mask = mask;
  f.what = what;
  wait(State::AtWarp);
  return w.slot[parity];
}

template <class T>
inline T shuffle(unsigned mask, T var, int src, const char* what) {
  const uint64_t(*slots)[2] = exchange(var, WarpOp::Shuffle, mask, what);
  Fiber& f = self();
  if (src == static_cast<int>(f.lane)) return var;
  Runtime& r = rt();
  if (src < 0 || src >= static_cast<int>(r.warps[f.warp].lanes)) {
    fail(std::string(what) + ": reads a lane that does not exist in this block");
  }
  if (!((r.warps[f.warp].joined[(f.warp_calls - 1) & 1] >> src) & 1)) {
    fail(std::string(what) + ": reads a lane that has exited");
  }
  T out;
  memcpy(&out, slots[src], sizeof(T));
  return out;
}

// ---- launching --------------------------------------------------------------------------------
inline void trampoline() {
  Runtime& r = rt();
  r.body();
  r.current->state = State::Done;
  swapcontext(&r.current->ctx, &r.scheduler);
}

inline uint64_t next_random() {
  uint64_t& x = rt().rng;  // xorshift64*
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  return x * 2685821657736338717ull;
}

// A scheduler-side error: names the block, fails the launch.
inline bool stop(const std::string& message) {
  Runtime& r = rt();
  r.failed = true;
  r.error = message + " (block (" + std::to_string(r.block_idx.x) + ", " +
            std::to_string(r.block_idx.y) + ", " + std::to_string(r.block_idx.z) + "))";
  return false;
}

// Release warp w when every live lane waits at a warp-synchronous call; false on misuse.
inline bool release_warp(size_t w, bool& released) {
  Runtime& r = rt();
  const unsigned lanes = r.warps[w].lanes;
  unsigned live = 0, waiting = 0;
  Fiber* first = nullptr;
  for (unsigned l = 0; l < lanes; ++l) {
    Fiber& f = r.fibers[w * 32 + l];
    if (f.state == State::Done) continue;
    live |= 1u << l;
    if (f.state != State::AtWarp) continue;
    waiting |= 1u << l;
    if (!first) first = &f;
    if (f.warp_calls != first->warp_calls || f.op != first->op) {
      return stop("lanes of warp " + std::to_string(w) +
                  " reached different warp-synchronous calls (divergent shuffle or vote)");
    }
  }
  released = false;
  if (!first || waiting != live) return true;
  const unsigned exists = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1u;
  for (unsigned l = 0; l < lanes; ++l) {  // each call's mask must name exactly the live lanes
    Fiber& f = r.fibers[w * 32 + l];
    if (f.state != State::AtWarp || (f.mask & exists) == live) continue;
    return stop(std::string(f.what) + " in warp " + std::to_string(w) +
                ((f.mask & live) != live
                     ? ": the mask leaves out a live lane (partial-warp masks are not emulated)"
                     : ": the mask names a lane that exited without joining the call"));
  }
  r.warps[w].joined[(first->warp_calls - 1) & 1] = live;
  for (unsigned l = 0; l < lanes; ++l) {
    Fiber& f = r.fibers[w * 32 + l];
    if (f.state == State::AtWarp) f.state = State::Ready;
  }
  released = true;
  return true;
}

// Run one block. The unit of scheduling is a warp: the chosen warp's ready lanes run until each
// blocks, and a released warp may be chosen again, so one warp can run far ahead of the others
// up to the next __syncthreads — as warps do on a GPU. Seed 0: the lowest warp with a ready lane
// goes first, lanes in index order. Other seeds: a random warp each time, lanes in random order.
inline bool run_block() {
  Runtime& r = rt();
  const size_t n = r.fibers.size(), nw = r.warps.size();
  for (size_t i = 0; i < n; ++i) {
    Fiber& f = r.fibers[i];
    f.state = State::Ready;
    f.op = WarpOp::None;
    f.warp_calls = f.block_calls = 0;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = r.stack_size;
    f.ctx.uc_link = &r.scheduler;
    makecontext(&f.ctx, trampoline, 0);
  }
  std::fill(r.dynamic_shared.begin(), r.dynamic_shared.end(), 0xFF);
  std::vector<size_t> ready_warps;
  unsigned order[32];
  for (;;) {
    ready_warps.clear();
    for (size_t w = 0; w < nw; ++w) {
      for (unsigned l = 0; l < r.warps[w].lanes; ++l) {
        if (r.fibers[w * 32 + l].state == State::Ready) {
          ready_warps.push_back(w);
          break;
        }
      }
      if (!r.rng && !ready_warps.empty()) break;
    }
    if (!ready_warps.empty()) {
      const size_t w = r.rng ? ready_warps[next_random() % ready_warps.size()] : ready_warps[0];
      const unsigned lanes = r.warps[w].lanes;
      for (unsigned l = 0; l < lanes; ++l) order[l] = l;
      if (r.rng) {
        for (unsigned l = lanes; l > 1; --l) std::swap(order[l - 1], order[next_random() % l]);
      }
      for (unsigned i = 0; i < lanes; ++i) {
        Fiber& f = r.fibers[w * 32 + order[i]];
        if (f.state != State::Ready) continue;
        r.current = &f;
        swapcontext(&r.scheduler, &f.ctx);
        if (r.failed) return false;
      }
      bool released = false;
      if (!release_warp(w, released)) return false;
      continue;
    }
    // nothing can run: every thread has exited or waits at __syncthreads, or it is a deadlock
    size_t done = 0, at_block = 0;
    unsigned long calls = 0;
    for (Fiber& f : r.fibers) {
      if (f.state == State::Done) ++done;
      if (f.state == State::AtBlock) {
        if (at_block && f.block_calls != calls) {
          return stop("threads of a block reached __syncthreads a different number of times");
        }
        calls = f.block_calls;
        ++at_block;
      }
    }
    if (done == n) return true;
    if (at_block + done < n) {
      return stop(
          "deadlock: some threads wait at __syncthreads while lanes of their warp wait at a "
          "warp-synchronous call");
    }
    if (done > 0) {
      return stop("threads exited while others wait at __syncthreads (a barrier some skip)");
    }
    for (Fiber& f : r.fibers) f.state = State::Ready;
  }
}

inline char* map_stack(size_t size) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  void* p = mmap(nullptr, size + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  mprotect(p, page, PROT_NONE);  // a guard page: a stack overflow faults instead of corrupting
  return static_cast<char*>(p) + page;
}

inline int launch(dim3 grid, dim3 block, size_t shared_bytes, uint64_t seed,
                  std::function<void()> body) {
  Runtime& r = rt();
  std::lock_guard<std::mutex> guard(r.lock);
  r.failed = false;
  r.error.clear();
  const unsigned long threads = 1ul * block.x * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 ||
      grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
    r.failed = true;
    r.error = "invalid launch configuration: grid (" + std::to_string(grid.x) + ", " +
              std::to_string(grid.y) + ", " + std::to_string(grid.z) + "), block (" +
              std::to_string(block.x) + ", " + std::to_string(block.y) + ", " +
              std::to_string(block.z) + ")";
    return 1;
  }
  if (shared_bytes > 232448) {  // the per-block opt-in maximum of sm_90 (227 KiB)
    r.failed = true;
    r.error = "dynamic shared memory of " + std::to_string(shared_bytes) +
              " bytes exceeds 232448 (227 KiB)";
    return 1;
  }
  const char* env = getenv("CUDA_EMU_STACK_KIB");
  const size_t stack_size = (env ? static_cast<size_t>(atol(env)) : 128) * 1024;
  if (stack_size != r.stack_size) {
    for (char* s : r.stacks) munmap(s - sysconf(_SC_PAGESIZE), r.stack_size + sysconf(_SC_PAGESIZE));
    r.stacks.clear();
    r.stack_size = stack_size;
  }
  while (r.stacks.size() < threads) {
    char* s = map_stack(stack_size);
    if (!s) {
      r.failed = true;
      r.error = "could not map fiber stacks";
      return 1;
    }
    r.stacks.push_back(s);
  }
  r.fibers.assign(threads, Fiber());
  r.warps.assign((threads + 31) / 32, Warp());
  for (unsigned long t = 0; t < threads; ++t) {
    Fiber& f = r.fibers[t];
    f.stack = r.stacks[t];
    f.tid = dim3(t % block.x, (t / block.x) % block.y, t / (1ul * block.x * block.y));
    f.lane = t % 32;
    f.warp = t / 32;
    r.warps[f.warp].lanes = f.lane + 1;
  }
  r.grid_dim = grid;
  r.block_dim = block;
  r.body = std::move(body);
  r.dynamic_shared.assign(shared_bytes + kSharedAlign, 0xFF);
  {  // a GPU's dynamic shared memory starts aligned (WMMA needs 32 bytes); so does ours
    const uintptr_t at = reinterpret_cast<uintptr_t>(r.dynamic_shared.data());
    r.dynamic_offset = (kSharedAlign - at % kSharedAlign) % kSharedAlign;
  }
  r.rng = seed;
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        r.block_idx = dim3(x, y, z);
        if (!run_block()) return 1;
      }
    }
  }
  return 0;
}

// ---- kernel parameters: unpacked from an array of pointers, like cuLaunchKernel's -------------
template <class T>
std::string type_code() {
  using U = typename std::remove_cv<T>::type;
  if constexpr (std::is_pointer<U>::value) {
    return "*" + type_code<typename std::remove_pointer<U>::type>();
  } else if constexpr (std::is_same<U, bool>::value) {
    return "b8";
  } else if constexpr (std::is_integral<U>::value) {
    return (std::is_signed<U>::value ? "i" : "u") + std::to_string(8 * sizeof(U));
  } else if constexpr (std::is_same<U, float>::value) {
    return "f32";
  } else if constexpr (std::is_same<U, double>::value) {
    return "f64";
  } else if constexpr (std::is_same<U, void>::value) {
    return "v";
  } else {
    return U::emu_type_code();  // __half, __nv_bfloat16
  }
}

template <class... A>
const char* signature(void (*)(A...)) {
  static const std::string s = [] {
    std::string out;
    ((out += type_code<A>() + ","), ...);
    return out;
  }();
  return s.c_str();
}

template <class... A, size_t... I>
std::tuple<A...> unpack(void** args, std::index_sequence<I...>) {
  return std::tuple<A...>(*static_cast<typename std::remove_reference<A>::type*>(args[I])...);
}

template <class... A>
int launch_kernel(void (*kernel)(A...), const unsigned* grid, const unsigned* block,
                  unsigned long long shared_bytes, unsigned long long seed, void** args) {
  std::tuple<A...> values = unpack<A...>(args, std::index_sequence_for<A...>{});
  return launch(dim3(grid[0], grid[1], grid[2]), dim3(block[0], block[1], block[2]),
                shared_bytes, seed, [kernel, &values] { std::apply(kernel, values); });
}

}  // namespace cuda_emu

// ---- built-in variables -----------------------------------------------------------------------
#define threadIdx (::cuda_emu::self().tid)
#define blockIdx (::cuda_emu::rt().block_idx)
#define blockDim (::cuda_emu::rt().block_dim)
#define gridDim (::cuda_emu::rt().grid_dim)
#define warpSize 32

inline void* cuda_emu_dynamic_shared() {
  ::cuda_emu::Runtime& r = ::cuda_emu::rt();
  return r.dynamic_shared.data() + r.dynamic_offset;
}
// `extern __shared__ T name[];` in a kernel reads CUDA_EMU_DYNAMIC_SHARED(T, name) here.
#define CUDA_EMU_DYNAMIC_SHARED(T, name) T* name = static_cast<T*>(cuda_emu_dynamic_shared())

// ---- synchronisation, warp functions ----------------------------------------------------------
inline void __syncthreads() { ::cuda_emu::block_sync(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::cuda_emu::exchange(0, ::cuda_emu::WarpOp::Sync, mask, "__syncwarp");
}
inline void __threadfence() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
inline unsigned __activemask() { return ::cuda_emu::live_lanes(::cuda_emu::self()); }

template <class T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
  const int lane = static_cast<int>(::cuda_emu::self().lane);
  const int src = (lane & ~(width - 1)) + (src_lane & (width - 1));
  return ::cuda_emu::shuffle(mask, var, src, "__shfl_sync");
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  const int lane = static_cast<int>(::cuda_emu::self().lane);
  const int src = (lane & (width - 1)) < static_cast<int>(delta) ? lane : lane - delta;
  return ::cuda_emu::shuffle(mask, var, src, "__shfl_up_sync");
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  const int lane = static_cast<int>(::cuda_emu::self().lane);
  const int src = (lane & (width - 1)) + static_cast<int>(delta) >= width ? lane : lane + delta;
  return ::cuda_emu::shuffle(mask, var, src, "__shfl_down_sync");
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
  const int lane = static_cast<int>(::cuda_emu::self().lane);
  const int src = lane ^ lane_mask;
  return ::cuda_emu::shuffle(mask, var, src / width > lane / width ? lane : src, "__shfl_xor_sync");
}

inline unsigned __ballot_sync(unsigned mask, int predicate) {
  const uint64_t(*slots)[2] =
      ::cuda_emu::exchange(predicate != 0, ::cuda_emu::WarpOp::Vote, mask, "__ballot_sync");
  ::cuda_emu::Fiber& f = ::cuda_emu::self();
  unsigned ballot = 0;
  for (unsigned l = 0; l < ::cuda_emu::rt().warps[f.warp].lanes; ++l) {
    if ((mask >> l) & 1 && slots[l][0]) ballot |= 1u << l;
  }
  return ballot;
}
inline int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }
inline int __all_sync(unsigned mask, int predicate) {
  const unsigned live = ::cuda_emu::live_lanes(::cuda_emu::self());
  return (__ballot_sync(mask, predicate) & live & mask) == (live & mask);
}

// ---- atomics: fibers of one OS thread never interleave inside a call ------------------------
template <class T>
inline T atomicAdd(T* address, T value) {
  T old = *address;
  *address = old + value;
  return old;
}
template <class T>
inline T atomicSub(T* address, T value) {
  T old = *address;
  *address = old - value;
  return old;
}
template <class T>
inline T atomicMax(T* address, T value) {
  T old = *address;
  *address = old > value ? old : value;
  return old;
}
template <class T>
inline T atomicMin(T* address, T value) {
  T old = *address;
  *address = old < value ? old : value;
  return old;
}
template <class T>
inline T atomicExch(T* address, T value) {
  T old = *address;
  *address = value;
  return old;
}
template <class T>
inline T atomicCAS(T* address, T compare, T value) {
  T old = *address;
  if (old == compare) *address = value;
  return old;
}

// ---- math and bit intrinsics ------------------------------------------------------------------
template <class T>
inline T __ldg(const T* p) {
  return *p;
}
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __exp10f(float x) { return exp10f(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline int __float_as_int(float x) {
  int i;
  memcpy(&i, &x, 4);
  return i;
}
inline float __int_as_float(int i) {
  float x;
  memcpy(&x, &i, 4);
  return x;
}
inline unsigned __float_as_uint(float x) {
  unsigned i;
  memcpy(&i, &x, 4);
  return i;
}
inline float __uint_as_float(unsigned i) {
  float x;
  memcpy(&x, &i, 4);
  return x;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }

// ---- half and bfloat16: storage types, conversions round to nearest even ----------------------
namespace cuda_emu {
inline unsigned short float_to_half_bits(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u, a = x & 0x7fffffffu;
  if (a >= 0x7f800000u) return sign | 0x7c00u | (a > 0x7f800000u ? 0x200u : 0u);  // inf, NaN
  if (a >= 0x477ff000u) return sign | 0x7c00u;  // ≥ 65520 rounds to infinity
  if (a >= 0x38800000u) {                        // a normal half
    uint32_t r = a - 0x38000000u;                // rebias the exponent from 127 to 15
    r += 0xfffu + ((r >> 13) & 1u);
    return static_cast<unsigned short>(sign | (r >> 13));
  }
  const int e = static_cast<int>(a >> 23);
  if (e < 102) return static_cast<unsigned short>(sign);  // below 2^-25: rounds to zero
  const uint32_t mant = (a & 0x7fffffu) | 0x800000u;
  const int shift = 126 - e;  // to units of 2^-24, the half subnormal step
  uint32_t q = mant >> shift;
  const uint32_t rem = mant & ((1u << shift) - 1u), halfway = 1u << (shift - 1);
  if (rem > halfway || (rem == halfway && (q & 1u))) ++q;
  return static_cast<unsigned short>(sign | q);
}

inline float half_bits_to_float(unsigned short h) {
  const uint32_t sign = (h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  uint32_t x;
  if (e == 0) {
    const float v = ldexpf(static_cast<float>(mant), -24);
    return sign ? -v : v;
  }
  x = e == 31 ? sign | 0x7f800000u | (mant << 13) : sign | ((e + 112) << 23) | (mant << 13);
  float f;
  memcpy(&f, &x, 4);
  return f;
}

inline unsigned short float_to_bfloat16_bits(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<unsigned short>((x >> 16) | 0x40u);
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<unsigned short>(x >> 16);
}

inline float bfloat16_bits_to_float(unsigned short b) {
  const uint32_t x = static_cast<uint32_t>(b) << 16;
  float f;
  memcpy(&f, &x, 4);
  return f;
}
}  // namespace cuda_emu

struct __half {
  unsigned short __x;
  __half() = default;
  __half(float f) : __x(::cuda_emu::float_to_half_bits(f)) {}
  __half(double d) : __x(::cuda_emu::float_to_half_bits(static_cast<float>(d))) {}
  __half(int i) : __x(::cuda_emu::float_to_half_bits(static_cast<float>(i))) {}
  operator float() const { return ::cuda_emu::half_bits_to_float(__x); }
  static std::string emu_type_code() { return "f16"; }
};
struct __nv_bfloat16 {
  unsigned short __x;
  __nv_bfloat16() = default;
  __nv_bfloat16(float f) : __x(::cuda_emu::float_to_bfloat16_bits(f)) {}
  __nv_bfloat16(double d) : __x(::cuda_emu::float_to_bfloat16_bits(static_cast<float>(d))) {}
  __nv_bfloat16(int i) : __x(::cuda_emu::float_to_bfloat16_bits(static_cast<float>(i))) {}
  operator float() const { return ::cuda_emu::bfloat16_bits_to_float(__x); }
  static std::string emu_type_code() { return "bf16"; }
};
typedef __half half;
typedef __nv_bfloat16 nv_bfloat16;

#define CUDA_EMU_HALF_OPS(T)                                                             \
  inline T operator+(T a, T b) { return T(static_cast<float>(a) + static_cast<float>(b)); } \
  inline T operator-(T a, T b) { return T(static_cast<float>(a) - static_cast<float>(b)); } \
  inline T operator*(T a, T b) { return T(static_cast<float>(a) * static_cast<float>(b)); } \
  inline T operator/(T a, T b) { return T(static_cast<float>(a) / static_cast<float>(b)); } \
  inline T operator-(T a) { return T(-static_cast<float>(a)); }                             \
  inline bool operator<(T a, T b) { return static_cast<float>(a) < static_cast<float>(b); } \
  inline bool operator>(T a, T b) { return static_cast<float>(a) > static_cast<float>(b); } \
  inline bool operator==(T a, T b) { return static_cast<float>(a) == static_cast<float>(b); }
CUDA_EMU_HALF_OPS(__half)
CUDA_EMU_HALF_OPS(__nv_bfloat16)
#undef CUDA_EMU_HALF_OPS

inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __half2float(__half h) { return static_cast<float>(h); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return static_cast<float>(b); }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.__x; }
inline __half __ushort_as_half(unsigned short u) {
  __half h;
  h.__x = u;
  return h;
}
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) {
  __nv_bfloat16 b;
  b.__x = u;
  return b;
}
inline __half __hadd(__half a, __half b) { return a + b; }
inline __half __hmul(__half a, __half b) { return a * b; }
inline __half __hfma(__half a, __half b, __half c) {
  return __half(static_cast<float>(a) * static_cast<float>(b) + static_cast<float>(c));
}
inline __nv_bfloat16 __hadd(__nv_bfloat16 a, __nv_bfloat16 b) { return a + b; }
inline __nv_bfloat16 __hmul(__nv_bfloat16 a, __nv_bfloat16 b) { return a * b; }

// ---- WMMA (nvcuda::wmma, <mma.h>): warp-wide matrix fragments ---------------------------------
// The 16×16×16, 32×8×16 and 8×32×16 shapes with __half or __nv_bfloat16 A and B and float or
// __half accumulators, with the element counts of CUDA's fragments (num_elements). Which matrix
// entries a lane holds is unspecified in CUDA; here each kind of fragment uses a scrambled map
// (a few entries held by several lanes, as CUDA's half A/B fragments do), so a kernel that treats
// x[i] as a known row or column — anything but the same operation on every element — computes
// garbage here as it may on a GPU. load/store/mma_sync are warp-synchronous calls of the whole
// warp (32 live lanes) with the same pointer, ldm and layout in every lane, else the launch fails;
// pointers must be 32-byte aligned and ldm a multiple of 16 bytes, as CUDA requires. load reads
// memory before the lanes meet and store writes after, so a missing barrier before a load or
// after a store shows under a random schedule. mma_sync multiplies in float: products of half or
// bfloat16 values are exact in float, the sum's order is the emulator's.
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

namespace detail {
template <class T>
constexpr bool is_half_type = std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value;

// (rows, cols) of a fragment's matrix and its elements per lane, as in CUDA's <mma.h>
template <class Use, int M, int N, int K, class T>
struct traits {
  static_assert((M == 16 && N == 16 && K == 16) || (M == 32 && N == 8 && K == 16) ||
                    (M == 8 && N == 32 && K == 16),
                "the emulator's WMMA shapes are 16x16x16, 32x8x16 and 8x32x16");
  static constexpr bool a = std::is_same<Use, matrix_a>::value;
  static constexpr bool b = std::is_same<Use, matrix_b>::value;
  static_assert(a || b || std::is_same<Use, accumulator>::value, "unknown fragment use");
  static_assert(a || b ? is_half_type<T> : (std::is_same<T, float>::value || std::is_same<T, __half>::value),
                "A/B fragments hold __half or __nv_bfloat16, accumulators float or __half");
  static constexpr int rows = a ? M : (b ? K : M);
  static constexpr int cols = a ? K : N;
  static constexpr int size = rows * cols;
  // CUDA: __half A/B hold 16 per lane (entries repeated across lanes); the rest size/32
  static constexpr int elements = (a || b) && std::is_same<T, __half>::value ? 16 : size / 32;
  static constexpr int use = a ? 0 : (b ? 1 : 2);
};

// entry (position in the row-major rows×cols matrix) of element i of lane `lane`: an odd
// multiplier and an offset scramble the lane-major order (a bijection modulo a power of two)
template <int Use, int Size, int Elements>
inline int entry(unsigned lane, int i) {
  constexpr int mult[3] = {37, 91, 53}, add[3] = {11, 5, 29};
  return static_cast<int>((static_cast<unsigned>(mult[Use]) * ((lane * Elements + i) % Size) + add[Use]) %
                          Size);
}

struct call {  // what every lane of a warp-wide WMMA call must agree on
  const void* ptr;
  unsigned ldm;
  int layout;
};

// One warp-wide WMMA call: every lane of a full warp takes part, with the same arguments.
inline void matrix_call(const call& mine, const char* what) {
  ::cuda_emu::Fiber& f = ::cuda_emu::self();
  if (::cuda_emu::rt().warps[f.warp].lanes != 32 || ::cuda_emu::live_lanes(f) != 0xffffffffu) {
    ::cuda_emu::fail(std::string(what) + ": needs all 32 lanes of the warp");
  }
  const uint64_t(*slots)[2] =
      ::cuda_emu::exchange(mine, ::cuda_emu::WarpOp::Matrix, 0xffffffffu, what);
  for (unsigned l = 0; l < 32; ++l) {
    call other;
    memcpy(&other, slots[l], sizeof other);
    if (other.ptr != mine.ptr || other.ldm != mine.ldm || other.layout != mine.layout) {
      ::cuda_emu::fail(std::string(what) +
                       ": lanes of the warp passed different pointers, ldm or layouts");
    }
  }
}

template <class T>
inline void check_memory(const T* p, unsigned ldm, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) {
    ::cuda_emu::fail(std::string(what) + ": the pointer must be 256-bit (32-byte) aligned");
  }
  if ((ldm * sizeof(T)) % 16 != 0) {
    ::cuda_emu::fail(std::string(what) + ": ldm must be a multiple of 16 bytes (" +
                     std::to_string(16 / sizeof(T)) + " elements), got " + std::to_string(ldm));
  }
}
}  // namespace detail

template <class Use, int M, int N, int K, class T, class Layout = void>
class fragment {
  using tr = detail::traits<Use, M, N, K, T>;
  static_assert(std::is_same<Use, accumulator>::value ? std::is_same<Layout, void>::value
                                                      : (std::is_same<Layout, row_major>::value ||
                                                         std::is_same<Layout, col_major>::value),
                "A/B fragments take row_major or col_major, accumulators no layout");

 public:
  enum { num_elements = tr::elements, num_storage_elements = tr::elements };
  typedef T element_type;
  typedef T storage_element_type;
  T x[num_elements];

  static constexpr int rows = tr::rows, cols = tr::cols, size = tr::size, use = tr::use;
  static int entry(int i) {
    return detail::entry<use, size, num_elements>(::cuda_emu::self().lane, i);
  }
};

template <class Use, int M, int N, int K, class T, class L>
inline void fill_fragment(fragment<Use, M, N, K, T, L>& f,
                          const typename fragment<Use, M, N, K, T, L>::element_type& value) {
  for (int i = 0; i < f.num_elements; ++i) f.x[i] = value;
}

template <class F, class T>
inline void load_entries(F& f, const T* p, unsigned ldm, bool col) {
  for (int i = 0; i < f.num_elements; ++i) {
    const int e = F::entry(i), r = e / F::cols, c = e % F::cols;
    f.x[i] = p[col ? static_cast<size_t>(c) * ldm + r : static_cast<size_t>(r) * ldm + c];
  }
}

template <class F, class T>
inline void sync_call(const F&, const T* p, unsigned ldm, int layout, const char* what) {
  detail::check_memory(p, ldm, what);
  detail::matrix_call(detail::call{p, ldm, layout}, what);
}

template <class Use, int M, int N, int K, class T, class L>
inline void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const T* p, unsigned ldm) {
  static_assert(!std::is_same<Use, accumulator>::value, "an accumulator load takes a layout_t");
  const bool col = std::is_same<L, col_major>::value;
  load_entries(f, p, ldm, col);  // before the lanes meet: a missing barrier before shows
  sync_call(f, p, ldm, col, "load_matrix_sync");
}

template <int M, int N, int K, class T>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const T* p, unsigned ldm,
                             layout_t layout) {
  load_entries(f, p, ldm, layout == mem_col_major);
  sync_call(f, p, ldm, layout == mem_col_major, "load_matrix_sync");
}

template <int M, int N, int K, class T>
inline void store_matrix_sync(T* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm,
                              layout_t layout) {
  using F = fragment<accumulator, M, N, K, T>;
  sync_call(f, p, ldm, layout == mem_col_major, "store_matrix_sync");
  for (int i = 0; i < f.num_elements; ++i) {  // after the lanes meet: a missing barrier shows
    const int e = F::entry(i), r = e / F::cols, c = e % F::cols;
    p[layout == mem_col_major ? static_cast<size_t>(c) * ldm + r : static_cast<size_t>(r) * ldm + c] =
        f.x[i];
  }
}

template <int M, int N, int K, class TAB, class LA, class LB, class TC, class TD>
inline void mma_sync(fragment<accumulator, M, N, K, TD>& d, const fragment<matrix_a, M, N, K, TAB, LA>& a,
                     const fragment<matrix_b, M, N, K, TAB, LB>& b,
                     const fragment<accumulator, M, N, K, TC>& c) {
  using FA = fragment<matrix_a, M, N, K, TAB, LA>;
  using FB = fragment<matrix_b, M, N, K, TAB, LB>;
  using FC = fragment<accumulator, M, N, K, TC>;
  ::cuda_emu::Fiber& f = ::cuda_emu::self();
  std::vector<float>& scratch = ::cuda_emu::rt().warps[f.warp].wmma[f.warp_calls & 1];
  scratch.resize(FA::size + FB::size + FC::size);
  float *sa = scratch.data(), *sb = sa + FA::size, *sc = sb + FB::size;
  for (int i = 0; i < a.num_elements; ++i) sa[FA::entry(i)] = static_cast<float>(a.x[i]);
  for (int i = 0; i < b.num_elements; ++i) sb[FB::entry(i)] = static_cast<float>(b.x[i]);
  for (int i = 0; i < c.num_elements; ++i) sc[FC::entry(i)] = static_cast<float>(c.x[i]);
  detail::matrix_call(detail::call{nullptr, 0, 0}, "mma_sync");
  for (int i = 0; i < d.num_elements; ++i) {  // c may be d: its entries are read from scratch
    const int e = FC::entry(i), r = e / N, col = e % N;
    float acc = sc[e];
    for (int k = 0; k < K; ++k) acc += sa[r * K + k] * sb[k * N + col];
    d.x[i] = TD(acc);
  }
}
}  // namespace wmma
}  // namespace nvcuda
