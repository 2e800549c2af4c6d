// Tensor-core tile products shared by the half-precision kernels (sparse_attention.cu,
// metric_attention.cu): 16×16×16 WMMA fragments with T inputs (__half or __nv_bfloat16) and float
// accumulators. Pointers must be 32-byte aligned and pitches multiples of 16 bytes, as WMMA needs
// (the kernels pad their shared tiles for it); tests/cuda_emu checks both. Below the three
// fragment products: the tile loops over whole shared-memory matrices, their 16×16 output tiles
// shared out among the thread block's WARPS warps (warp: this warp's index).

#pragma once

#include <mma.h>

namespace {

namespace wmma = nvcuda::wmma;
using frag_acc = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;
template <class T>
using frag_a_row = wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major>;
template <class T>
using frag_a_col = wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::col_major>;
template <class T>
using frag_b_row = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major>;
template <class T>
using frag_b_col = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major>;

// acc += A·Bᵀ over K: A (16, K) row-major at a (pitch lda), B (16, K) row-major at b (pitch ldb)
template <class T, int K>
__device__ __forceinline__ void mma_abt(frag_acc& acc, const T* a, int lda, const T* b, int ldb) {
  frag_a_row<T> fa;
  frag_b_col<T> fb;  // Bᵀ (K, 16) column-major is B row-major
#pragma unroll
  for (int kk = 0; kk < K; kk += 16) {
    wmma::load_matrix_sync(fa, a + kk, lda);
    wmma::load_matrix_sync(fb, b + kk, ldb);
    wmma::mma_sync(acc, fa, fb, acc);
  }
}

// acc += A·B over K: A (16, K) row-major at a, B (K, 16) row-major at b
template <class T, int K>
__device__ __forceinline__ void mma_ab(frag_acc& acc, const T* a, int lda, const T* b, int ldb) {
  frag_a_row<T> fa;
  frag_b_row<T> fb;
#pragma unroll
  for (int kk = 0; kk < K; kk += 16) {
    wmma::load_matrix_sync(fa, a + kk, lda);
    wmma::load_matrix_sync(fb, b + kk * ldb, ldb);
    wmma::mma_sync(acc, fa, fb, acc);
  }
}

// acc += Aᵀ·B over K: A (K, 16) row-major at a (so Aᵀ is column-major), B (K, 16) row-major at b
template <class T, int K>
__device__ __forceinline__ void mma_atb(frag_acc& acc, const T* a, int lda, const T* b, int ldb) {
  frag_a_col<T> fa;
  frag_b_row<T> fb;
#pragma unroll
  for (int kk = 0; kk < K; kk += 16) {
    wmma::load_matrix_sync(fa, a + kk * lda, lda);
    wmma::load_matrix_sync(fb, b + kk * ldb, ldb);
    wmma::mma_sync(acc, fa, fb, acc);
  }
}

// f(i, j) for each 16×16 tile (row i, column j) of an (M, N) result that this warp computes:
// tiles warp, warp + WARPS, … in row-major order
template <int M, int N, int WARPS, class F>
__device__ __forceinline__ void for_warp_tiles(int warp, F&& f) {
  constexpr int TN = N / 16;
  for (int tile = warp; tile < (M / 16) * TN; tile += WARPS) f(tile / TN, tile % TN);
}

// dst (M, N) float, pitch ldd, = A·Bᵀ: A (M, K) row-major at a, B (N, K) row-major at b
template <class T, int M, int N, int K, int WARPS>
__device__ __forceinline__ void tiles_abt(float* dst, int ldd, const T* a, int lda, const T* b,
                                          int ldb, int warp) {
  for_warp_tiles<M, N, WARPS>(warp, [&](int i, int j) {
    frag_acc acc;
    wmma::fill_fragment(acc, 0.0f);
    mma_abt<T, K>(acc, a + i * 16 * lda, lda, b + j * 16 * ldb, ldb);
    wmma::store_matrix_sync(dst + i * 16 * ldd + j * 16, acc, ldd, wmma::mem_row_major);
  });
}

// two such products in one job list, so that every warp has work on small tiles:
// dst0 = A0·B0ᵀ and dst1 = A1·B1ᵀ, all (M, N) from (·, K), one pitch for each kind
template <class T, int M, int N, int K, int WARPS>
__device__ __forceinline__ void tiles_abt2(float* dst0, float* dst1, int ldd, const T* a0,
                                           const T* a1, int lda, const T* b0, const T* b1,
                                           int ldb, int warp) {
  constexpr int TM = M / 16, TN = N / 16;
  for (int job = warp; job < 2 * TM * TN; job += WARPS) {
    const int which = job / (TM * TN), i = (job / TN) % TM, j = job % TN;
    frag_acc acc;
    wmma::fill_fragment(acc, 0.0f);
    mma_abt<T, K>(acc, (which ? a1 : a0) + i * 16 * lda, lda, (which ? b1 : b0) + j * 16 * ldb,
                  ldb);
    wmma::store_matrix_sync((which ? dst1 : dst0) + i * 16 * ldd + j * 16, acc, ldd,
                            wmma::mem_row_major);
  }
}

// dst (M, N) float, pitch ldd, += A·B: A (M, K) row-major at a, B (K, N) row-major at b
template <class T, int M, int N, int K, int WARPS>
__device__ __forceinline__ void tiles_add_ab(float* dst, int ldd, const T* a, int lda, const T* b,
                                             int ldb, int warp) {
  for_warp_tiles<M, N, WARPS>(warp, [&](int i, int j) {
    frag_acc acc;
    wmma::load_matrix_sync(acc, dst + i * 16 * ldd + j * 16, ldd, wmma::mem_row_major);
    mma_ab<T, K>(acc, a + i * 16 * lda, lda, b + j * 16, ldb);
    wmma::store_matrix_sync(dst + i * 16 * ldd + j * 16, acc, ldd, wmma::mem_row_major);
  });
}

// dst (M, N) float, pitch ldd, = Aᵀ·B: A (K, M) row-major at a, B (K, N) row-major at b
template <class T, int M, int N, int K, int WARPS>
__device__ __forceinline__ void tiles_atb(float* dst, int ldd, const T* a, int lda, const T* b,
                                          int ldb, int warp) {
  for_warp_tiles<M, N, WARPS>(warp, [&](int i, int j) {
    frag_acc acc;
    wmma::fill_fragment(acc, 0.0f);
    mma_atb<T, K>(acc, a + i * 16, lda, b + j * 16, ldb);
    wmma::store_matrix_sync(dst + i * 16 * ldd + j * 16, acc, ldd, wmma::mem_row_major);
  });
}

// Accumulators a warp keeps for a whole walk: output tile warp + o·WARPS of an (M, N) result in
// acc[o] (OWN = ⌈tiles / WARPS⌉; no rescaling, so they never leave the fragments).
// acc[o] += A·B on them: A (M, K) row-major at a, B (K, N) row-major at b
template <class T, int M, int N, int K, int WARPS, int OWN>
__device__ __forceinline__ void own_add_ab(frag_acc (&acc)[OWN], const T* a, int lda, const T* b,
                                           int ldb, int warp) {
  constexpr int TN = N / 16;
#pragma unroll
  for (int o = 0; o < OWN; ++o) {
    const int tile = warp + o * WARPS;
    if (tile < (M / 16) * TN) {
      const int i = tile / TN, j = tile % TN;
      mma_ab<T, K>(acc[o], a + i * 16 * lda, lda, b + j * 16, ldb);
    }
  }
}

// ... and their tiles stored into dst (M, N) float, pitch ldd
template <int M, int N, int WARPS, int OWN>
__device__ __forceinline__ void own_store(float* dst, int ldd, const frag_acc (&acc)[OWN],
                                          int warp) {
  constexpr int TN = N / 16;
#pragma unroll
  for (int o = 0; o < OWN; ++o) {
    const int tile = warp + o * WARPS;
    if (tile < (M / 16) * TN) {
      const int i = tile / TN, j = tile % TN;
      wmma::store_matrix_sync(dst + i * 16 * ldd + j * 16, acc[o], ldd, wmma::mem_row_major);
    }
  }
}

}  // namespace
