// Tensor-core tile products shared by the half-precision kernels (sparse_attention.cu,
// metric_attention.cu): 16×16×16 WMMA fragments with T inputs (__half or __nv_bfloat16) and float
// accumulators. Pointers must be 32-byte aligned and pitches multiples of 16 bytes, as WMMA needs
// (the kernels pad their shared tiles for it); tests/cuda_emu checks both.

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

}  // namespace
