// Pieces shared by the flash-style kernels of gpu/kernels: dynamic shared memory that works
// under nvcc and tests/cuda_emu, the 8-lane row reductions, the padded float tile loader, and for
// the half-precision kernels: float conversions of every tile type and a 16-byte row loader.
// Included as "tile_common.cuh": the emulator and the nvcc test put this folder on the include
// path; a CuPy RawModule needs options=("-I", <this folder>).

#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#ifdef CUDA_EMU
#define FG_DYNAMIC_SHARED(T, name) CUDA_EMU_DYNAMIC_SHARED(T, name)
#else
// 128-byte aligned: WMMA loads and stores need 32-byte aligned tiles
#define FG_DYNAMIC_SHARED(T, name)                              \
  extern __shared__ __align__(128) unsigned char name##_raw[]; \
  T* name = reinterpret_cast<T*>(name##_raw)
#endif

namespace {

constexpr int kLanes = 8;  // lanes per query row; a warp holds four rows
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__device__ __forceinline__ float neg_inf() { return -__int_as_float(0x7f800000); }

__device__ __forceinline__ float row_max(float x) {
#pragma unroll
  for (int o = kLanes / 2; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

__device__ __forceinline__ float row_sum(float x) {
#pragma unroll
  for (int o = kLanes / 2; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// rows first_row .. first_row+B−1 of a (n, D) matrix into a (B, D+1) shared tile, zeros past n
template <int B, int D>
__device__ __forceinline__ void load_tile(float* __restrict__ tile, const float* __restrict__ src,
                                          int first_row, int n) {
  for (int e = threadIdx.x; e < B * D; e += B * kLanes) {
    const int r = e / D, c = e % D, row = first_row + r;
    tile[r * (D + 1) + c] = row < n ? src[static_cast<long long>(row) * D + c] : 0.0f;
  }
}

// float from an element of any tile type, and back with round to nearest even
__device__ __forceinline__ float as_float(float x) { return x; }
__device__ __forceinline__ float as_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float as_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <class T>
__device__ __forceinline__ T float_to(float x);
template <>
__device__ __forceinline__ float float_to<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half float_to<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 float_to<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// one 16-byte copy (both addresses 16-byte aligned); zeros when src is null
__device__ __forceinline__ void copy16(void* dst, const void* src) {
#ifdef CUDA_EMU
  if (src) {
    memcpy(dst, src, 16);
  } else {
    memset(dst, 0, 16);
  }
#else
  *reinterpret_cast<uint4*>(dst) = src ? *reinterpret_cast<const uint4*>(src) : make_uint4(0, 0, 0, 0);
#endif
}

// rows first_row .. first_row+R−1 of a row-major (n, D) matrix of T into an (R, LD) shared tile,
// 16 bytes per copy, zeros past n, by THREADS threads. src and every row must be 16-byte aligned
// (D·sizeof(T) a multiple of 16; the launcher checks the base pointer).
template <int R, int D, int LD, int THREADS, class T>
__device__ __forceinline__ void load_rows16(T* __restrict__ tile, const T* __restrict__ src,
                                            int first_row, int n) {
  constexpr int V = 16 / sizeof(T);  // elements per copy
  static_assert(D % V == 0 && LD % V == 0, "rows must be whole 16-byte chunks");
  constexpr int CHUNKS = D / V;
  for (int e = threadIdx.x; e < R * CHUNKS; e += THREADS) {
    const int r = e / CHUNKS, c = (e % CHUNKS) * V, row = first_row + r;
    copy16(tile + r * LD + c, row < n ? src + static_cast<long long>(row) * D + c : nullptr);
  }
}

}  // namespace
