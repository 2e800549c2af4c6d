// Pieces shared by the flash-style kernels of gpu/kernels: dynamic shared memory that works
// under nvcc and tests/cuda_emu, the 8-lane row reductions and the padded tile loader.
// Included as "tile_common.cuh": the emulator and the nvcc test put this folder on the include
// path; a CuPy RawModule needs options=("-I", <this folder>).

#pragma once

#ifdef CUDA_EMU
#define FG_DYNAMIC_SHARED(T, name) CUDA_EMU_DYNAMIC_SHARED(T, name)
#else
#define FG_DYNAMIC_SHARED(T, name)                             \
  extern __shared__ __align__(16) unsigned char name##_raw[]; \
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

}  // namespace
