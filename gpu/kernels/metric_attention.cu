// metric_attention.cu — metric tensor attention, forward and backward, float32: q = p·M per
// query tile, then flash-style attention whose keys and values are the same tensor p (docs/gpu.md,
// "Metric attention").
//
// metric_attention_fwd_f32<B, D>(p, m_packed, kv_indptr, kv_indices, kv_slots, bits, perm, out,
//                                lse, n, heads, mask_heads, causal, scale)
//   p, out : (b, h, n, D) float32, contiguous (in the mask's stored order when it is permuted);
//   m_packed : (h, D(D+1)/2) float32, each row the upper triangle of a symmetric M including the
//   diagonal, row-major ((0,0), (0,1), …, (D−1,D−1)); lse (b, h, n) float32.
//   Without a mask, kv_indptr, kv_indices, kv_slots, bits and perm are null. With a
//   gpu.SparseMask: its forward CSR (int32, global offsets), its partial tiles' words and its
//   perm_hn (mask_heads, n) int32 or null: the token at each stored position, which the causal
//   test compares (a permuted mask's causal AND is not block-structured in the stored order).
//   out[q] = Σ_k softmax_k(scale·(p[q]·M)·p[k])·p[k] over the allowed keys: token(k) ≤ token(q)
//   when causal ≠ 0, AND the mask's bit when there is a mask; lse[q] = log Σ exp(scale·q·k), for
//   the backward. A query with no allowed key gets zeros and lse = −inf.
// Launch: grid (⌈n/B⌉, b·h), block (8·B), dynamic shared memory 4·(2·B·(D+1) + B·(B+1)) bytes
//   (gpu.kernels.metric_attention_fwd_config; above 48 KiB the launcher raises the kernel's
//   MaxDynamicSharedMemorySize attribute).
//
// One thread block per (query block, batch·head), eight lanes per query row. The block first
// stages its own p rows and forms q = p·M in shared memory, reading M straight from the packed
// row (D² cached reads per block, no D×D shared tile). Then per key tile — every tile up to the
// diagonal (causal) or all of them without a mask, the row's CSR with one — p is staged once and
// serves twice: each lane scores B/8 keys of its row against it (bits read only in partial
// tiles), the row max and sum go through __shfl_xor_sync inside the row's eight lanes, the
// probabilities go to shared memory (a row's lanes are a quarter of one warp: __syncwarp orders
// them), and the same tile is then read as the values — no second load, unlike the sparse
// kernel's K then V. Scores are in base 2 (exp2f), as in FlashAttention.
//
// Compiled by NVRTC/nvcc and by tests/cuda_emu: only what the shim provides is used.
// To come: fp16/bf16 with tensor-core tiles. The backward kernel follows the forward.

#include "tile_common.cuh"

namespace {

// M[i][j] of the packed upper triangle (row-major, diagonal included), D×D
template <int D>
__device__ __forceinline__ float metric_at(const float* __restrict__ m, int i, int j) {
  const int a = i < j ? i : j, c = i < j ? j : i;
  return m[a * D - a * (a - 1) / 2 + (c - a)];
}

}  // namespace

template <int B, int D>
__global__ void __launch_bounds__(B * 8)
    metric_attention_fwd_f32(const float* __restrict__ p, const float* __restrict__ m_packed,
                             const int* __restrict__ kv_indptr, const int* __restrict__ kv_indices,
                             const int* __restrict__ kv_slots, const unsigned* __restrict__ bits,
                             const int* __restrict__ perm, float* __restrict__ out,
                             float* __restrict__ lse, int n, int heads, int mask_heads, int causal,
                             float scale) {
  static_assert(B % 32 == 0 || B == 16, "B is 16, 32, 64 or 128");
  static_assert(D % kLanes == 0, "D is a multiple of 8");
  constexpr int W = (B + 31) / 32;  // bitmask words per row
  constexpr int KEYS = B / kLanes;  // keys each lane scores per tile
  constexpr int COLS = D / kLanes;  // q and output columns each lane owns
  constexpr int QS = D + 1, PS = B + 1;
  constexpr int L = D * (D + 1) / 2;
  FG_DYNAMIC_SHARED(float, smem);
  float* sq = smem;               // (B, D+1): this block's queries q = p·M
  float* skv = smem + B * QS;     // (B, D+1): the current p tile, keys and values at once
  float* sp = smem + 2 * B * QS;  // (B, B+1): the current tile's probabilities

  const int nb = (n + B - 1) / B;
  const int qb = blockIdx.x;
  const long long bh = blockIdx.y;
  const int head = static_cast<int>(bh % heads);
  const int mask_head = mask_heads == 1 ? 0 : head;
  const float* m = m_packed + static_cast<long long>(head) * L;
  const int* tokens = perm == nullptr ? nullptr : perm + static_cast<long long>(mask_head) * n;
  const int r = threadIdx.x / kLanes, g = threadIdx.x % kLanes;
  const int row = qb * B + r;
  const int row_token = row >= n ? n : (tokens == nullptr ? row : tokens[row]);
  const long long base = bh * n * D;
  const float scale2 = scale * kLog2e;  // scores in base 2

  // q = p·M for this block's rows: stage p, each lane forms its D/8 columns of its row
  load_tile<B, D>(skv, p + base, qb * B, n);
  __syncthreads();
#pragma unroll
  for (int cc = 0; cc < COLS; ++cc) {
    const int c = g + cc * kLanes;
    float dot = 0.0f;
    for (int k = 0; k < D; ++k) dot += skv[r * QS + k] * metric_at<D>(m, k, c);
    sq[r * QS + c] = dot;
  }

  float mx = neg_inf(), l = 0.0f, acc[COLS];
#pragma unroll
  for (int c = 0; c < COLS; ++c) acc[c] = 0.0f;

  const bool masked = kv_indptr != nullptr;
  const int* indptr = masked ? kv_indptr + mask_head * (nb + 1) : nullptr;
  // without a mask: every key tile, or those up to the diagonal (no key past the block's rows)
  const int begin = masked ? indptr[qb] : 0;
  const int end = masked ? indptr[qb + 1] : (causal ? qb + 1 : nb);
  for (int t = begin; t < end; ++t) {
    const int kb = masked ? kv_indices[t] : t;
    const int slot = masked ? kv_slots[t] : -1;
    __syncthreads();  // the previous tile is consumed (and sq is written, the first time)
    load_tile<B, D>(skv, p + base, kb * B, n);
    __syncthreads();

    const unsigned* row_bits =
        slot < 0 ? nullptr : bits + (static_cast<long long>(slot) * B + r) * W;
    float s[KEYS], tile_max = neg_inf();
#pragma unroll
    for (int j = 0; j < KEYS; ++j) {
      const int key = g + j * kLanes, pos = kb * B + key;
      bool on = pos < n && (row_bits == nullptr || ((row_bits[key >> 5] >> (key & 31)) & 1u));
      if (on && causal) on = (tokens == nullptr ? pos : tokens[pos]) <= row_token;
      float dot = 0.0f;
      if (on) {
#pragma unroll 8
        for (int c = 0; c < D; ++c) dot += sq[r * QS + c] * skv[key * QS + c];
      }
      s[j] = on ? dot * scale2 : neg_inf();
      tile_max = fmaxf(tile_max, s[j]);
    }
    const float m_new = fmaxf(mx, row_max(tile_max));
    const float alpha = m_new == neg_inf() ? 1.0f : exp2f(mx - m_new);
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < KEYS; ++j) {
      const float prob = s[j] == neg_inf() ? 0.0f : exp2f(s[j] - m_new);
      sp[r * PS + g + j * kLanes] = prob;
      sum += prob;
    }
    l = l * alpha + row_sum(sum);
    mx = m_new;
#pragma unroll
    for (int c = 0; c < COLS; ++c) acc[c] *= alpha;

    __syncwarp();  // the row's probabilities, written by its eight lanes, are visible to them
    for (int key = 0; key < B; ++key) {
      const float prob = sp[r * PS + key];
      if (prob != 0.0f) {
#pragma unroll
        for (int c = 0; c < COLS; ++c) acc[c] += prob * skv[key * QS + g + c * kLanes];
      }
    }
    // the next tile's __syncthreads comes before its probabilities overwrite the row
  }

  if (row < n) {
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
    for (int c = 0; c < COLS; ++c) out[base + static_cast<long long>(row) * D + g + c * kLanes] = acc[c] * inv;
    if (g == 0) lse[bh * n + row] = l > 0.0f ? (mx + log2f(l)) * kLn2 : neg_inf();
  }
}

// metric_attention_bwd_f32<B, D>(p, q, dout, lse, delta, q_indptr, q_indices, q_slots, bits, perm,
//                                dkv, dq, n, heads, mask_heads, causal, scale)
//   The backward of the forward above, FlashAttention-style, one thread block per (key block,
//   batch·head), eight lanes per key row. Inputs (b, h, n, D) float32 in the stored order: p,
//   q = p·M (formed by the launcher), dout; (b, h, n) float32: lse (the forward's) and
//   delta = rowsum(dout ∘ out). The mask arguments are its backward CSR (q_indptr, q_indices,
//   q_slots: the query tiles of each key block) and the same bits and perm as the forward, or
//   all null. Outputs: dkv (b, h, n, D), written: dK + dV, the key and value paths to p, summed
//   because keys and values are both p; dq (b, h, n, D), zeroed by the launcher, accumulated with
//   atomicAdd (each key block adds its share). The launcher finishes with dp = dq·M + dkv and
//   the packed dM = pᵀ·dq with both halves of each off-diagonal entry (docs/gpu.md).
// Launch: grid (⌈n/B⌉, b·h), block (8·B), dynamic shared memory
//   4·(3·B·(D+1) + 2·B·(B+1) + 2·B) bytes (gpu.kernels.metric_attention_bwd_config).
template <int B, int D>
__global__ void __launch_bounds__(B * 8)
    metric_attention_bwd_f32(const float* __restrict__ p, const float* __restrict__ q,
                             const float* __restrict__ dout, const float* __restrict__ lse,
                             const float* __restrict__ delta, const int* __restrict__ q_indptr,
                             const int* __restrict__ q_indices, const int* __restrict__ q_slots,
                             const unsigned* __restrict__ bits, const int* __restrict__ perm,
                             float* __restrict__ dkv, float* __restrict__ dq, int n, int heads,
                             int mask_heads, int causal, float scale) {
  static_assert(B % 32 == 0 || B == 16, "B is 16, 32, 64 or 128");
  static_assert(D % kLanes == 0, "D is a multiple of 8");
  constexpr int W = (B + 31) / 32;
  constexpr int QUERIES = B / kLanes;  // queries each lane scores per tile
  constexpr int COLS = D / kLanes;
  constexpr int QS = D + 1, PS = B + 1;
  FG_DYNAMIC_SHARED(float, smem);
  float* skv = smem;                 // (B, D+1): this block's p rows, the keys and the values
  float* sq = smem + B * QS;         // (B, D+1): the current query tile's q
  float* sdo = smem + 2 * B * QS;    // (B, D+1): its dout
  float* sP = smem + 3 * B * QS;     // (B, B+1): P[key][query]
  float* sdS = sP + B * PS;          // (B, B+1): dS[key][query]
  float* slse = sdS + B * PS;        // (B): lse of the tile's queries, in base 2
  float* sdelta = slse + B;          // (B)

  const int nb = (n + B - 1) / B;
  const int kb = blockIdx.x;
  const long long bh = blockIdx.y;
  const int head = static_cast<int>(bh % heads);
  const int mask_head = mask_heads == 1 ? 0 : head;
  const int* tokens = perm == nullptr ? nullptr : perm + static_cast<long long>(mask_head) * n;
  const int c = threadIdx.x / kLanes, g = threadIdx.x % kLanes;  // key row, lane
  const int key = kb * B + c;
  const int key_token = key >= n ? n : (tokens == nullptr ? key : tokens[key]);
  const long long base = bh * n * D;
  const float scale2 = scale * kLog2e;

  load_tile<B, D>(skv, p + base, kb * B, n);
  float acc[COLS];
#pragma unroll
  for (int cc = 0; cc < COLS; ++cc) acc[cc] = 0.0f;

  const bool masked = q_indptr != nullptr;
  const int* indptr = masked ? q_indptr + mask_head * (nb + 1) : nullptr;
  const int begin = masked ? indptr[kb] : (causal ? kb : 0);
  const int end = masked ? indptr[kb + 1] : nb;
  for (int t = begin; t < end; ++t) {
    const int qb = masked ? q_indices[t] : t;
    const int slot = masked ? q_slots[t] : -1;
    __syncthreads();  // the previous tile's dq step is done (and skv is loaded, the first time)
    load_tile<B, D>(sq, q + base, qb * B, n);
    load_tile<B, D>(sdo, dout + base, qb * B, n);
    if (threadIdx.x < B) {
      const int row = qb * B + threadIdx.x;
      slse[threadIdx.x] = row < n ? lse[bh * n + row] * kLog2e : neg_inf();
      sdelta[threadIdx.x] = row < n ? delta[bh * n + row] : 0.0f;
    }
    __syncthreads();

#pragma unroll
    for (int j = 0; j < QUERIES; ++j) {
      const int r = g + j * kLanes, row = qb * B + r;
      bool on = key < n && row < n && slse[r] != neg_inf();
      if (on && slot >= 0) {
        on = (bits[(static_cast<long long>(slot) * B + r) * W + (c >> 5)] >> (c & 31)) & 1u;
      }
      if (on && causal) on = key_token <= (tokens == nullptr ? row : tokens[row]);
      float prob = 0.0f, ds = 0.0f;
      if (on) {
        float s = 0.0f, dp = 0.0f;
#pragma unroll 8
        for (int d = 0; d < D; ++d) {
          s += sq[r * QS + d] * skv[c * QS + d];
          dp += sdo[r * QS + d] * skv[c * QS + d];
        }
        prob = exp2f(s * scale2 - slse[r]);
        ds = prob * (dp - sdelta[r]);
      }
      sP[c * PS + r] = prob;
      sdS[c * PS + r] = ds;
    }
    __syncwarp();  // the key row's P and dS, written by its eight lanes, are visible to them
    for (int r = 0; r < B; ++r) {
      const float prob = sP[c * PS + r], ds = sdS[c * PS + r] * scale;
      if (prob != 0.0f || ds != 0.0f) {
#pragma unroll
        for (int cc = 0; cc < COLS; ++cc) {
          const int col = g + cc * kLanes;
          acc[cc] += prob * sdo[r * QS + col] + ds * sq[r * QS + col];
        }
      }
    }
    __syncthreads();  // every dS of the tile is written: the dq step reads them across warps

    const int r = c, row = qb * B + r;  // now: query row r of the tile, same lanes
    if (row < n) {
#pragma unroll
      for (int cc = 0; cc < COLS; ++cc) {
        const int col = g + cc * kLanes;
        float v = 0.0f;
        for (int k = 0; k < B; ++k) v += sdS[k * PS + r] * skv[k * QS + col];
        if (v != 0.0f) atomicAdd(dq + base + static_cast<long long>(row) * D + col, v * scale);
      }
    }
  }

  if (key < n) {
#pragma unroll
    for (int cc = 0; cc < COLS; ++cc) dkv[base + static_cast<long long>(key) * D + g + cc * kLanes] = acc[cc];
  }
}
