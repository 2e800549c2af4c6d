// sparse_attention.cu — masked block-sparse attention, forward, float32: flash-style tiles over a
// gpu.SparseMask's block CSR with an online softmax (docs/gpu.md has the mask layout).
//
// sparse_attention_fwd_f32<B, D>(q, k, v, kv_indptr, kv_indices, kv_slots, bits, out, lse,
//                                n, heads, mask_heads, scale)
//   q, k, v, out : (b, h, n, D) float32, contiguous, in the mask's stored (permuted) order;
//   kv_indptr (mask_heads, nb+1), kv_indices, kv_slots : the mask's forward CSR (int32, global
//   offsets); bits (P, B, ⌈B/32⌉) : the partial tiles' words (uint32); lse (b, h, n) float32.
//   out[q] = Σ_k softmax(scale·q·k)·v[k] over the allowed keys; lse[q] = log Σ exp(scale·q·k),
//   for the backward. A query with no allowed key gets zeros and lse = −inf.
// Launch: grid (⌈n/B⌉, b·h), block (8·B), dynamic shared memory 4·(2·B·(D+1) + B·(B+1)) bytes
//   (gpu.kernels.sparse_attention_fwd_config; above 48 KiB the launcher raises the kernel's
//   MaxDynamicSharedMemorySize attribute).
//
// One thread block per (query block, batch·head): eight lanes per query row. Per key tile of the
// row's CSR: K is staged in shared memory, each lane scores B/8 keys of its row (the bitmask is
// read only for partial tiles; full tiles read no bits), the row max and sum go through
// __shfl_xor_sync inside the row's eight lanes, the probabilities go to shared memory, V replaces
// K, and each lane accumulates D/8 output columns. Rows are padded by one float in shared memory
// so that the column walks do not hit one bank. Scores are kept in base 2 (exp2f), as in
// FlashAttention.
//
// Compiled by NVRTC/nvcc and by tests/cuda_emu: only what the shim provides is used.
// To come in later sessions: fp16/bf16 with WMMA tensor-core tiles, the backward kernel.

#include "tile_common.cuh"

template <int B, int D>
__global__ void __launch_bounds__(B * 8)
    sparse_attention_fwd_f32(const float* __restrict__ q, const float* __restrict__ k,
                             const float* __restrict__ v, const int* __restrict__ kv_indptr,
                             const int* __restrict__ kv_indices, const int* __restrict__ kv_slots,
                             const unsigned* __restrict__ bits, float* __restrict__ out,
                             float* __restrict__ lse, int n, int heads, int mask_heads,
                             float scale) {
  static_assert(B % 32 == 0 || B == 16, "B is 16, 32, 64 or 128");
  static_assert(D % kLanes == 0, "D is a multiple of 8");
  constexpr int W = (B + 31) / 32;  // bitmask words per row
  constexpr int KEYS = B / kLanes;  // keys each lane scores per tile
  constexpr int COLS = D / kLanes;  // output columns each lane accumulates
  constexpr int QS = D + 1, PS = B + 1;
  FG_DYNAMIC_SHARED(float, smem);
  float* sq = smem;               // (B, D+1): this block's queries
  float* skv = smem + B * QS;     // (B, D+1): the current K tile, then its V tile
  float* sp = smem + 2 * B * QS;  // (B, B+1): the current tile's probabilities

  const int nb = (n + B - 1) / B;
  const int qb = blockIdx.x;
  const long long bh = blockIdx.y;
  const int head = static_cast<int>(bh % heads);
  const int* indptr = kv_indptr + (mask_heads == 1 ? 0 : head) * (nb + 1);
  const int r = threadIdx.x / kLanes, g = threadIdx.x % kLanes;
  const long long base = bh * n * D;
  const float scale2 = scale * kLog2e;  // scores in base 2

  load_tile<B, D>(sq, q + base, qb * B, n);
  float m = neg_inf(), l = 0.0f, acc[COLS];
#pragma unroll
  for (int c = 0; c < COLS; ++c) acc[c] = 0.0f;

  const int begin = indptr[qb], end = indptr[qb + 1];
  for (int t = begin; t < end; ++t) {
    const int kb = kv_indices[t], slot = kv_slots[t];
    __syncthreads();  // the previous V tile is consumed (and sq is loaded, the first time)
    load_tile<B, D>(skv, k + base, kb * B, n);
    __syncthreads();

    const unsigned* row_bits = bits + (static_cast<long long>(slot < 0 ? 0 : slot) * B + r) * W;
    float s[KEYS], tile_max = neg_inf();
#pragma unroll
    for (int j = 0; j < KEYS; ++j) {
      const int key = g + j * kLanes;
      const bool on = slot < 0 || ((row_bits[key >> 5] >> (key & 31)) & 1u);
      float dot = 0.0f;
      if (on) {
#pragma unroll 8
        for (int c = 0; c < D; ++c) dot += sq[r * QS + c] * skv[key * QS + c];
      }
      s[j] = on ? dot * scale2 : neg_inf();
      tile_max = fmaxf(tile_max, s[j]);
    }
    const float m_new = fmaxf(m, row_max(tile_max));
    const float alpha = m_new == neg_inf() ? 1.0f : exp2f(m - m_new);
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < KEYS; ++j) {
      const float p = s[j] == neg_inf() ? 0.0f : exp2f(s[j] - m_new);
      sp[r * PS + g + j * kLanes] = p;
      sum += p;
    }
    l = l * alpha + row_sum(sum);
    m = m_new;
#pragma unroll
    for (int c = 0; c < COLS; ++c) acc[c] *= alpha;

    __syncthreads();  // every lane is done with K
    load_tile<B, D>(skv, v + base, kb * B, n);
    __syncthreads();
    for (int key = 0; key < B; ++key) {
      const float p = sp[r * PS + key];
      if (p != 0.0f) {
#pragma unroll
        for (int c = 0; c < COLS; ++c) acc[c] += p * skv[key * QS + g + c * kLanes];
      }
    }
  }

  const int row = qb * B + r;
  if (row < n) {
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
    for (int c = 0; c < COLS; ++c) out[base + static_cast<long long>(row) * D + g + c * kLanes] = acc[c] * inv;
    if (g == 0) lse[bh * n + row] = l > 0.0f ? (m + log2f(l)) * kLn2 : neg_inf();
  }
}
