// Pieces shared by the flash-style kernels of gpu/kernels: dynamic shared memory that works
// under nvcc and tests/cuda_emu, the 8-lane row reductions, float conversions of every tile type,
// the padded float tile loader and a 16-byte row loader, and the steps every forward and backward
// takes alike: the online-softmax update of a query row, the P·V sum and the row's output and lse
// on CUDA cores, the mask bit test, the backward's per-chunk lse and delta, and the row-wise
// shared → global writes (plain and atomicAdd).
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

// rows first_row .. first_row+B−1 of a (n, D) matrix of T into a (B, D+1) float shared tile,
// converted on the way, zeros past n
template <int B, int D, class T>
__device__ __forceinline__ void load_tile(float* __restrict__ tile, const T* __restrict__ src,
                                          int first_row, int n) {
  for (int e = threadIdx.x; e < B * D; e += B * kLanes) {
    const int r = e / D, c = e % D, row = first_row + r;
    tile[r * (D + 1) + c] = row < n ? as_float(src[static_cast<long long>(row) * D + c]) : 0.0f;
  }
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

// bit `col` of a mask tile row's words (bit c of word c/32)
__device__ __forceinline__ bool mask_bit(const unsigned* __restrict__ words, int col) {
  return (words[col >> 5] >> (col & 31)) & 1u;
}

// a · b over D floats (two shared rows)
template <int D>
__device__ __forceinline__ float row_dot(const float* __restrict__ a, const float* __restrict__ b) {
  float dot = 0.0f;
#pragma unroll 8
  for (int c = 0; c < D; ++c) dot += a[c] * b[c];
  return dot;
}

// One key tile's online-softmax step of a query row, by the row's eight lanes (lane g): s[j] is
// the base-2 score of key g + 8j, −inf where the key is masked. Writes the tile's probabilities
// exp2(s − m_new), rounded to T, to prow[key]; the running max m and sum l (of the rounded values:
// the ones P·V multiplies) move on; returns alpha, the factor that rescales the row's output so
// far. row_max is warp-synchronous over the row's lanes: all of them have their scores before
// any writes a probability (the half kernels' probabilities overwrite their own score row).
template <int KEYS, class T>
__device__ __forceinline__ float online_softmax(const float (&s)[KEYS], float& m, float& l,
                                                T* __restrict__ prow, int g) {
  float tile_max = neg_inf();
#pragma unroll
  for (int j = 0; j < KEYS; ++j) tile_max = fmaxf(tile_max, s[j]);
  const float m_new = fmaxf(m, row_max(tile_max));
  const float alpha = m_new == neg_inf() ? 1.0f : exp2f(m - m_new);
  float sum = 0.0f;
#pragma unroll
  for (int j = 0; j < KEYS; ++j) {
    const T p = float_to<T>(s[j] == neg_inf() ? 0.0f : exp2f(s[j] - m_new));
    prow[g + j * kLanes] = p;
    sum += as_float(p);
  }
  l = l * alpha + row_sum(sum);
  m = m_new;
  return alpha;
}

// acc[c] += Σ_key prow[key] · tile[key][g + 8c] over the B keys of a (B, D+1) float tile (lane g
// of a row; zero probabilities are skipped)
template <int B, int D, int COLS>
__device__ __forceinline__ void accumulate_pv(float (&acc)[COLS], const float* __restrict__ prow,
                                              const float* __restrict__ tile, int g) {
  for (int key = 0; key < B; ++key) {
    const float p = prow[key];
    if (p != 0.0f) {
#pragma unroll
      for (int c = 0; c < COLS; ++c) acc[c] += p * tile[key * (D + 1) + g + c * kLanes];
    }
  }
}

// The end of a query row, lane g: out_row[g + 8c] = acc[c] / l and *lse_at = ln Σ exp from the
// base-2 max m and sum l (by lane 0); zeros and −inf for a row that saw no key
template <int COLS, class T>
__device__ __forceinline__ void write_row(T* __restrict__ out_row, float* __restrict__ lse_at,
                                          const float (&acc)[COLS], float m, float l, int g) {
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
  for (int c = 0; c < COLS; ++c) out_row[g + c * kLanes] = float_to<T>(acc[c] * inv);
  if (g == 0) *lse_at = l > 0.0f ? (m + log2f(l)) * kLn2 : neg_inf();
}

// the same from the row's output in a float shared tile (the half kernels' O), lane g's columns
template <int COLS, class T>
__device__ __forceinline__ void write_row_from(T* __restrict__ out_row, float* __restrict__ lse_at,
                                               const float* __restrict__ o_row, float m, float l,
                                               int g) {
  float o[COLS];
#pragma unroll
  for (int c = 0; c < COLS; ++c) o[c] = o_row[g + c * kLanes];
  write_row(out_row, lse_at, o, m, l, g);
}

// lane g's columns of a row in a float shared tile ×alpha (the online softmax's rescaling of the
// half kernels' O), nothing to do when alpha is 1
template <int COLS>
__device__ __forceinline__ void scale_row(float* __restrict__ row, float alpha, int g) {
  if (alpha != 1.0f) {
#pragma unroll
    for (int c = 0; c < COLS; ++c) row[g + c * kLanes] *= alpha;
  }
}

// The backward's per-chunk statistics of queries first .. first+KB−1 (lse_bh, delta_bh: this
// batch·head's rows): lse in base 2 (−inf past n) and delta (0 past n)
template <int KB>
__device__ __forceinline__ void load_chunk_stats(float* __restrict__ slse,
                                                 float* __restrict__ sdelta,
                                                 const float* __restrict__ lse_bh,
                                                 const float* __restrict__ delta_bh, int first,
                                                 int n) {
  if (threadIdx.x < KB) {
    const int row = first + threadIdx.x;
    slse[threadIdx.x] = row < n ? lse_bh[row] * kLog2e : neg_inf();
    sdelta[threadIdx.x] = row < n ? delta_bh[row] : 0.0f;
  }
}

// The float backward's P and dS of one (key, query) pair from shared rows: s = q·k and dp = dout·v
// in one pass, P = exp2(s·scale2 − lse2) with lse2 the query's lse in base 2, dS = P·(dp − delta)
template <int D>
__device__ __forceinline__ void prob_and_ds(const float* __restrict__ q_row,
                                            const float* __restrict__ k_row,
                                            const float* __restrict__ do_row,
                                            const float* __restrict__ v_row, float scale2,
                                            float lse2, float delta, float& prob, float& ds) {
  float s = 0.0f, dp = 0.0f;
#pragma unroll 8
  for (int d = 0; d < D; ++d) {
    s += q_row[d] * k_row[d];
    dp += do_row[d] * v_row[d];
  }
  prob = exp2f(s * scale2 - lse2);
  ds = prob * (dp - delta);
}

// The float backward's dq step for query row r of a chunk, lane g: Σ_key dS[key][r]·K[key][col]
// over the KB keys of a (KB, KB+1) dS tile and a (KB, D+1) key tile, added ×scale to dq_row
template <int KB, int D>
__device__ __forceinline__ void add_dq_row(float* __restrict__ dq_row,
                                           const float* __restrict__ sds,
                                           const float* __restrict__ skeys, int r, int g,
                                           float scale) {
#pragma unroll
  for (int cc = 0; cc < D / kLanes; ++cc) {
    const int col = g + cc * kLanes;
    float x = 0.0f;
    for (int kk = 0; kk < KB; ++kk) x += sds[kk * (KB + 1) + r] * skeys[kk * (D + 1) + col];
    if (x != 0.0f) atomicAdd(dq_row + col, x * scale);
  }
}

// zeros into an (R, C) float shared tile of pitch LD, by THREADS threads
template <int R, int C, int LD, int THREADS>
__device__ __forceinline__ void zero_tile(float* __restrict__ tile) {
  for (int e = threadIdx.x; e < R * C; e += THREADS) tile[(e / C) * LD + e % C] = 0.0f;
}

// rows first_row .. of an (R, D) float shared tile of pitch LD, ×factor, to rows of a (n, D)
// matrix of T, rows past n left out, by THREADS threads
template <int R, int D, int LD, int THREADS, class T>
__device__ __forceinline__ void store_rows(T* __restrict__ dst, const float* __restrict__ tile,
                                           int first_row, int n, float factor) {
  for (int e = threadIdx.x; e < R * D; e += THREADS) {
    const int r = e / D, col = e % D, row = first_row + r;
    if (row < n) {
      dst[static_cast<long long>(row) * D + col] = float_to<T>(tile[r * LD + col] * factor);
    }
  }
}

// the same rows atomically added to a float (n, D) matrix, ×factor, zeros skipped
template <int R, int D, int LD, int THREADS>
__device__ __forceinline__ void atomic_add_rows(float* __restrict__ dst,
                                                const float* __restrict__ tile, int first_row,
                                                int n, float factor) {
  for (int e = threadIdx.x; e < R * D; e += THREADS) {
    const int r = e / D, col = e % D, row = first_row + r;
    const float x = tile[r * LD + col];
    if (row < n && x != 0.0f) atomicAdd(dst + static_cast<long long>(row) * D + col, x * factor);
  }
}

}  // namespace
