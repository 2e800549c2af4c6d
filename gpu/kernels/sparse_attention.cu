// sparse_attention.cu — masked block-sparse attention, forward and backward, float32 (CUDA cores)
// and float16/bfloat16 (tensor cores through WMMA): flash-style tiles over a gpu.SparseMask's
// block CSR with an online softmax (docs/gpu.md has the mask layout).
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
// Compiled by NVRTC/nvcc and by tests/cuda_emu: only what the shim provides is used. The other
// kernels of this file follow the forward: the float32 backward, then the WMMA forward and
// backward for float16/bfloat16.


#include "tile_common.cuh"
#include "wmma_tiles.cuh"

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

// sparse_attention_bwd_f32<B, D>(q, k, v, dout, lse, delta, q_indptr, q_indices, q_slots, bits,
//                                dq, dk, dv, n, heads, mask_heads, scale)
//   The backward of the forward above, FlashAttention-style. Inputs (b, h, n, D) float32 in the
//   stored order: q, k, v, dout; (b, h, n) float32: lse (the forward's, natural log) and
//   delta = rowsum(dout ∘ out). The mask's backward CSR (q_indptr (mask_heads, nb+1), q_indices,
//   q_slots: the query blocks of each key block) and the same bits as the forward. Outputs:
//   dk, dv (b, h, n, D), written (zeros for a key no query sees); dq (b, h, n, D) float32,
//   zeroed by the launcher, accumulated with atomicAdd (each key block adds its share).
//   With P = exp(scale·q·k − lse), dS = P·(dout·v − delta): dv = Σ_q P·dout, dk = scale·Σ_q dS·q,
//   dq = scale·Σ_k dS·k.
// Launch: grid (⌈n/B⌉·B/KB, b·h) with KB = min(B, 64) keys per thread block (a key block of 128
//   is two thread blocks; queries go in chunks of KB rows), block (8·KB), dynamic shared memory
//   4·(4·KB·(D+1) + 2·KB·(KB+1) + 2·KB) bytes (gpu.kernels.sparse_attention_bwd_config).
//   One key row per eight lanes: per query chunk of each tile of the key block's CSR, each lane
//   recomputes P and dS for KB/8 queries of its key, the row's lanes accumulate dk and dv for
//   their D/8 columns in registers, then the same lanes switch to query rows for the dq step.
template <int B, int D>
__global__ void __launch_bounds__(8 * (B < 64 ? B : 64))
    sparse_attention_bwd_f32(const float* __restrict__ q, const float* __restrict__ k,
                             const float* __restrict__ v, const float* __restrict__ dout,
                             const float* __restrict__ lse, const float* __restrict__ delta,
                             const int* __restrict__ q_indptr, const int* __restrict__ q_indices,
                             const int* __restrict__ q_slots, const unsigned* __restrict__ bits,
                             float* __restrict__ dq, float* __restrict__ dk, float* __restrict__ dv,
                             int n, int heads, int mask_heads, float scale) {
  static_assert(B % 32 == 0 || B == 16, "B is 16, 32, 64 or 128");
  static_assert(D % kLanes == 0, "D is a multiple of 8");
  constexpr int KB = B < 64 ? B : 64;  // keys per thread block, and queries per chunk
  constexpr int SLICES = B / KB;
  constexpr int W = (B + 31) / 32;
  constexpr int QUERIES = KB / kLanes;  // queries each lane scores per chunk
  constexpr int COLS = D / kLanes;
  constexpr int QS = D + 1, PS = KB + 1;
  FG_DYNAMIC_SHARED(float, smem);
  float* sk = smem;               // (KB, D+1): this block's keys
  float* sv = sk + KB * QS;       // (KB, D+1): their values
  float* sq = sv + KB * QS;       // (KB, D+1): the current query chunk
  float* sdo = sq + KB * QS;      // (KB, D+1): its dout
  float* sP = sdo + KB * QS;      // (KB, KB+1): P[key][query]
  float* sdS = sP + KB * PS;      // (KB, KB+1): dS[key][query]
  float* slse = sdS + KB * PS;    // (KB): the chunk's lse, base 2
  float* sdelta = slse + KB;      // (KB)

  const int nb = (n + B - 1) / B;
  const int kb = blockIdx.x / SLICES, first_key = kb * B + (blockIdx.x % SLICES) * KB;
  const long long bh = blockIdx.y;
  const int head = static_cast<int>(bh % heads);
  const int* indptr = q_indptr + (mask_heads == 1 ? 0 : head) * (nb + 1);
  const int c = threadIdx.x / kLanes, g = threadIdx.x % kLanes;  // key row, lane
  const int key_col = first_key - kb * B + c;                     // the key's column in a tile
  const int key = first_key + c;
  const long long base = bh * n * D;
  const float scale2 = scale * kLog2e;

  load_tile<KB, D>(sk, k + base, first_key, n);
  load_tile<KB, D>(sv, v + base, first_key, n);
  float acc_k[COLS], acc_v[COLS];
#pragma unroll
  for (int cc = 0; cc < COLS; ++cc) acc_k[cc] = acc_v[cc] = 0.0f;

  const int begin = indptr[kb], end = indptr[kb + 1];
  for (int t = begin; t < end; ++t) {
    const int qb = q_indices[t], slot = q_slots[t];
    for (int chunk = 0; chunk < SLICES; ++chunk) {
      const int first = qb * B + chunk * KB;  // the chunk's first query
      if (first >= n) break;
      __syncthreads();  // the previous chunk's dq step is done (and sk, sv loaded, at first)
      load_tile<KB, D>(sq, q + base, first, n);
      load_tile<KB, D>(sdo, dout + base, first, n);
      if (threadIdx.x < KB) {
        const int row = first + threadIdx.x;
        slse[threadIdx.x] = row < n ? lse[bh * n + row] * kLog2e : neg_inf();
        sdelta[threadIdx.x] = row < n ? delta[bh * n + row] : 0.0f;
      }
      __syncthreads();

#pragma unroll
      for (int j = 0; j < QUERIES; ++j) {
        const int r = g + j * kLanes, row = first + r;
        bool on = key < n && row < n && slse[r] != neg_inf();
        if (on && slot >= 0) {
          const int tile_row = chunk * KB + r;
          on = (bits[(static_cast<long long>(slot) * B + tile_row) * W + (key_col >> 5)] >>
                (key_col & 31)) & 1u;
        }
        float prob = 0.0f, ds = 0.0f;
        if (on) {
          float s = 0.0f, dp = 0.0f;
#pragma unroll 8
          for (int d = 0; d < D; ++d) {
            s += sq[r * QS + d] * sk[c * QS + d];
            dp += sdo[r * QS + d] * sv[c * QS + d];
          }
          prob = exp2f(s * scale2 - slse[r]);
          ds = prob * (dp - sdelta[r]);
        }
        sP[c * PS + r] = prob;
        sdS[c * PS + r] = ds;
      }
      __syncwarp();  // the key row's P and dS, written by its eight lanes, are visible to them
      for (int r = 0; r < KB; ++r) {
        const float prob = sP[c * PS + r], ds = sdS[c * PS + r];
        if (prob != 0.0f) {
#pragma unroll
          for (int cc = 0; cc < COLS; ++cc) {
            const int col = g + cc * kLanes;
            acc_v[cc] += prob * sdo[r * QS + col];
            acc_k[cc] += ds * sq[r * QS + col];
          }
        }
      }
      __syncthreads();  // every dS of the chunk is written: the dq step reads them across warps

      const int r = c, row = first + r;  // now: query row r of the chunk, same lanes
      if (row < n) {
#pragma unroll
        for (int cc = 0; cc < COLS; ++cc) {
          const int col = g + cc * kLanes;
          float x = 0.0f;
          for (int kk = 0; kk < KB; ++kk) x += sdS[kk * PS + r] * sk[kk * QS + col];
          if (x != 0.0f) atomicAdd(dq + base + static_cast<long long>(row) * D + col, x * scale);
        }
      }
    }
  }

  if (key < n) {
#pragma unroll
    for (int cc = 0; cc < COLS; ++cc) {
      const long long at = base + static_cast<long long>(key) * D + g + cc * kLanes;
      dk[at] = acc_k[cc] * scale;
      dv[at] = acc_v[cc];
    }
  }
}

// ---- float16 / bfloat16 on tensor cores (WMMA) --------------------------------------------------
// The same algorithms with the products on 16×16×16 WMMA tiles (T inputs, float accumulators) and
// the softmax, masks and reductions in float. Tiles of T are padded to d+8 elements per row (rows
// stay 16-byte aligned, as WMMA needs, and shift banks); float tiles to +4. Every thread block
// zero-pads rows past n, so the products run on whole 16-row tiles.
namespace {

// The forward for T = __half or __nv_bfloat16: as sparse_attention_fwd_f32 (grid, threads, eight
// lanes per query row for the softmax), with S = Q·Kᵀ and O += P·V on WMMA tiles shared out
// among the warps. O lives in shared memory as float (the online softmax rescales its rows, which
// a fragment cannot do: which entries a lane holds is unspecified); the T probabilities overwrite
// the first half of their own float score row once the row's lanes have read it.
template <class T, int B, int D>
__device__ __forceinline__ void fwd_wmma(const T* __restrict__ q, const T* __restrict__ k,
                                         const T* __restrict__ v, const int* __restrict__ kv_indptr,
                                         const int* __restrict__ kv_indices,
                                         const int* __restrict__ kv_slots,
                                         const unsigned* __restrict__ bits, T* __restrict__ out,
                                         float* __restrict__ lse, int n, int heads, int mask_heads,
                                         float scale) {
  static_assert(B % 16 == 0 && D % 16 == 0, "whole 16×16 tiles");
  constexpr int THREADS = B * kLanes, WARPS = THREADS / 32;
  constexpr int W = (B + 31) / 32, KEYS = B / kLanes, COLS = D / kLanes;
  constexpr int HS = D + 8;     // T tile pitch
  constexpr int SS = B + 4;     // float score pitch
  constexpr int PS = 2 * SS;    // T probability pitch: row r of P starts where score row r does
  constexpr int OS = D + 4;     // float output pitch
  constexpr int TB = B / 16, TD = D / 16;
  FG_DYNAMIC_SHARED(unsigned char, smem);
  T* sq = reinterpret_cast<T*>(smem);                         // (B, D+8): queries
  T* skv = sq + B * HS;                                       // (B, D+8): K, then V
  float* ss = reinterpret_cast<float*>(skv + B * HS);         // (B, B+4): scores
  T* sp = reinterpret_cast<T*>(ss);                           // (B, 2B+8): probabilities
  float* so = ss + B * SS;                                    // (B, D+4): output accumulator

  const int nb = (n + B - 1) / B;
  const int qb = blockIdx.x;
  const long long bh = blockIdx.y;
  const int head = static_cast<int>(bh % heads);
  const int* indptr = kv_indptr + (mask_heads == 1 ? 0 : head) * (nb + 1);
  const int r = threadIdx.x / kLanes, g = threadIdx.x % kLanes, warp = threadIdx.x / 32;
  const long long base = bh * n * D;
  const float scale2 = scale * kLog2e;

  load_rows16<B, D, HS, THREADS>(sq, q + base, qb * B, n);
  for (int e = threadIdx.x; e < B * D; e += THREADS) so[(e / D) * OS + e % D] = 0.0f;
  float m = neg_inf(), l = 0.0f;

  const int begin = indptr[qb], end = indptr[qb + 1];
  for (int t = begin; t < end; ++t) {
    const int kb = kv_indices[t], slot = kv_slots[t];
    __syncthreads();  // the previous P·V is done with skv and sp (sq and so ready, the first time)
    load_rows16<B, D, HS, THREADS>(skv, k + base, kb * B, n);
    __syncthreads();
    for (int tile = warp; tile < TB * TB; tile += WARPS) {  // S = Q·Kᵀ
      const int i = tile / TB, j = tile % TB;
      frag_acc acc;
      wmma::fill_fragment(acc, 0.0f);
      mma_abt<T, D>(acc, sq + i * 16 * HS, HS, skv + j * 16 * HS, HS);
      wmma::store_matrix_sync(ss + i * 16 * SS + j * 16, acc, SS, wmma::mem_row_major);
    }
    __syncthreads();  // scores are in ss; K is consumed
    load_rows16<B, D, HS, THREADS>(skv, v + base, kb * B, n);

    const unsigned* row_bits = bits + (static_cast<long long>(slot < 0 ? 0 : slot) * B + r) * W;
    float s[KEYS], tile_max = neg_inf();
#pragma unroll
    for (int j = 0; j < KEYS; ++j) {
      const int key = g + j * kLanes;
      const bool on = slot < 0 || ((row_bits[key >> 5] >> (key & 31)) & 1u);
      s[j] = on ? ss[r * SS + key] * scale2 : neg_inf();
      tile_max = fmaxf(tile_max, s[j]);
    }
    // row_max is a warp-synchronous call of the row's lanes: all of them have read their
    // scores before any overwrites the row with probabilities
    const float m_new = fmaxf(m, row_max(tile_max));
    const float alpha = m_new == neg_inf() ? 1.0f : exp2f(m - m_new);
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < KEYS; ++j) {
      const T p = float_to<T>(s[j] == neg_inf() ? 0.0f : exp2f(s[j] - m_new));
      sp[r * PS + g + j * kLanes] = p;
      sum += as_float(p);  // the rounded value: the one P·V multiplies
    }
    l = l * alpha + row_sum(sum);
    m = m_new;
    if (alpha != 1.0f) {
#pragma unroll
      for (int c = 0; c < COLS; ++c) so[r * OS + g + c * kLanes] *= alpha;
    }
    __syncthreads();  // P, the rescaled O and V are in shared memory
    for (int tile = warp; tile < TB * TD; tile += WARPS) {  // O += P·V
      const int i = tile / TD, j = tile % TD;
      frag_acc acc;
      wmma::load_matrix_sync(acc, so + i * 16 * OS + j * 16, OS, wmma::mem_row_major);
      mma_ab<T, B>(acc, sp + i * 16 * PS, PS, skv + j * 16, HS);
      wmma::store_matrix_sync(so + i * 16 * OS + j * 16, acc, OS, wmma::mem_row_major);
    }
  }
  __syncthreads();  // the last P·V is in so

  const int row = qb * B + r;
  if (row < n) {
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
    for (int c = 0; c < COLS; ++c) {
      const int col = g + c * kLanes;
      out[base + static_cast<long long>(row) * D + col] = float_to<T>(so[r * OS + col] * inv);
    }
    if (g == 0) lse[bh * n + row] = l > 0.0f ? (m + log2f(l)) * kLn2 : neg_inf();
  }
}

// The backward for T = __half or __nv_bfloat16: as sparse_attention_bwd_f32 (grid, KB keys per
// thread block, query chunks of KB rows, eight lanes per key row for the elementwise part), with
// Sᵀ = K·Qᵀ, dPᵀ = V·doutᵀ, dv += Pᵀ·dout, dk += dSᵀ·Q and the chunk's dq = dS·K on WMMA tiles.
// dk and dv stay in accumulator fragments for the whole walk (no rescaling: each warp owns fixed
// output tiles); the chunk's dq goes through shared memory to atomicAdd on a float buffer.
template <class T, int B, int D>
__device__ __forceinline__ void bwd_wmma(const T* __restrict__ q, const T* __restrict__ k,
                                         const T* __restrict__ v, const T* __restrict__ dout,
                                         const float* __restrict__ lse,
                                         const float* __restrict__ delta,
                                         const int* __restrict__ q_indptr,
                                         const int* __restrict__ q_indices,
                                         const int* __restrict__ q_slots,
                                         const unsigned* __restrict__ bits, float* __restrict__ dq,
                                         T* __restrict__ dk, T* __restrict__ dv, int n, int heads,
                                         int mask_heads, float scale) {
  static_assert(B % 16 == 0 && D % 16 == 0, "whole 16×16 tiles");
  constexpr int KB = B < 64 ? B : 64, SLICES = B / KB;
  constexpr int THREADS = KB * kLanes, WARPS = THREADS / 32;
  constexpr int W = (B + 31) / 32, QUERIES = KB / kLanes;
  constexpr int HS = D + 8, FS = KB + 4, PS = 2 * FS, OS = D + 4;
  constexpr int TK = KB / 16, TD = D / 16;
  constexpr int OWN = (TK * TD + WARPS - 1) / WARPS;  // dk (and dv) tiles per warp
  FG_DYNAMIC_SHARED(unsigned char, smem);
  T* sk = reinterpret_cast<T*>(smem);                  // (KB, D+8): this block's keys
  T* sv = sk + KB * HS;                                // (KB, D+8): their values
  T* sq = sv + KB * HS;                                // (KB, D+8): the query chunk
  T* sdo = sq + KB * HS;                               // (KB, D+8): its dout
  float* sst = reinterpret_cast<float*>(sdo + KB * HS);  // (KB, KB+4): Sᵀ[key][query]
  float* sdpt = sst + KB * FS;                         // (KB, KB+4): dPᵀ[key][query]
  T* spt = reinterpret_cast<T*>(sst);                  // (KB, 2KB+8): Pᵀ over Sᵀ
  T* sdst = reinterpret_cast<T*>(sdpt);                // (KB, 2KB+8): dSᵀ over dPᵀ
  float* sdq = sdpt + KB * FS;                         // (KB, D+4): the chunk's dq; at the end dk, dv
  float* slse = sdq + KB * OS;                         // (KB): base 2
  float* sdelta = slse + KB;                           // (KB)

  const int nb = (n + B - 1) / B;
  const int kb = blockIdx.x / SLICES, first_key = kb * B + (blockIdx.x % SLICES) * KB;
  const long long bh = blockIdx.y;
  const int head = static_cast<int>(bh % heads);
  const int* indptr = q_indptr + (mask_heads == 1 ? 0 : head) * (nb + 1);
  const int c = threadIdx.x / kLanes, g = threadIdx.x % kLanes, warp = threadIdx.x / 32;
  const int key_col = first_key - kb * B + c, key = first_key + c;
  const long long base = bh * n * D;
  const float scale2 = scale * kLog2e;

  load_rows16<KB, D, HS, THREADS>(sk, k + base, first_key, n);
  load_rows16<KB, D, HS, THREADS>(sv, v + base, first_key, n);
  frag_acc acc_k[OWN], acc_v[OWN];
#pragma unroll
  for (int o = 0; o < OWN; ++o) {
    wmma::fill_fragment(acc_k[o], 0.0f);
    wmma::fill_fragment(acc_v[o], 0.0f);
  }

  const int begin = indptr[kb], end = indptr[kb + 1];
  for (int t = begin; t < end; ++t) {
    const int qb = q_indices[t], slot = q_slots[t];
    for (int chunk = 0; chunk < SLICES; ++chunk) {
      const int first = qb * B + chunk * KB;
      if (first >= n) break;
      __syncthreads();  // the previous chunk is done with sq, sdo, spt, sdst and sdq
      load_rows16<KB, D, HS, THREADS>(sq, q + base, first, n);
      load_rows16<KB, D, HS, THREADS>(sdo, dout + base, first, n);
      if (threadIdx.x < KB) {
        const int row = first + threadIdx.x;
        slse[threadIdx.x] = row < n ? lse[bh * n + row] * kLog2e : neg_inf();
        sdelta[threadIdx.x] = row < n ? delta[bh * n + row] : 0.0f;
      }
      __syncthreads();
      for (int job = warp; job < 2 * TK * TK; job += WARPS) {  // Sᵀ = K·Qᵀ, dPᵀ = V·doutᵀ
        const int which = job / (TK * TK), i = (job / TK) % TK, j = job % TK;
        frag_acc acc;
        wmma::fill_fragment(acc, 0.0f);
        mma_abt<T, D>(acc, (which ? sv : sk) + i * 16 * HS, HS, (which ? sdo : sq) + j * 16 * HS,
                      HS);
        wmma::store_matrix_sync((which ? sdpt : sst) + i * 16 * FS + j * 16, acc, FS,
                                wmma::mem_row_major);
      }
      __syncthreads();

      float prob[QUERIES], ds[QUERIES];
#pragma unroll
      for (int j = 0; j < QUERIES; ++j) {
        const int r = g + j * kLanes, row = first + r;
        bool on = key < n && row < n && slse[r] != neg_inf();
        if (on && slot >= 0) {
          const int tile_row = chunk * KB + r;
          on = (bits[(static_cast<long long>(slot) * B + tile_row) * W + (key_col >> 5)] >>
                (key_col & 31)) & 1u;
        }
        prob[j] = on ? exp2f(sst[c * FS + r] * scale2 - slse[r]) : 0.0f;
        ds[j] = on ? prob[j] * (sdpt[c * FS + r] - sdelta[r]) : 0.0f;
      }
      __syncwarp();  // the key row's lanes have read their Sᵀ and dPᵀ before overwriting them
#pragma unroll
      for (int j = 0; j < QUERIES; ++j) {
        spt[c * PS + g + j * kLanes] = float_to<T>(prob[j]);
        sdst[c * PS + g + j * kLanes] = float_to<T>(ds[j]);
      }
      __syncthreads();
#pragma unroll
      for (int o = 0; o < OWN; ++o) {  // dv += Pᵀ·dout, dk += dSᵀ·Q on this warp's tiles
        const int tile = warp + o * WARPS;
        if (tile < TK * TD) {
          const int i = tile / TD, j = tile % TD;
          mma_ab<T, KB>(acc_v[o], spt + i * 16 * PS, PS, sdo + j * 16, HS);
          mma_ab<T, KB>(acc_k[o], sdst + i * 16 * PS, PS, sq + j * 16, HS);
        }
      }
      for (int tile = warp; tile < TK * TD; tile += WARPS) {  // the chunk's dq = dS·K
        const int i = tile / TD, j = tile % TD;
        frag_acc acc;
        wmma::fill_fragment(acc, 0.0f);
        mma_atb<T, KB>(acc, sdst + i * 16, PS, sk + j * 16, HS);
        wmma::store_matrix_sync(sdq + i * 16 * OS + j * 16, acc, OS, wmma::mem_row_major);
      }
      __syncthreads();
      for (int e = threadIdx.x; e < KB * D; e += THREADS) {
        const int r = e / D, col = e % D, row = first + r;
        const float x = sdq[r * OS + col];
        if (row < n && x != 0.0f) {
          atomicAdd(dq + base + static_cast<long long>(row) * D + col, x * scale);
        }
      }
    }
  }

  // dk then dv through sdq (float) to T in global memory
  for (int pass = 0; pass < 2; ++pass) {
    __syncthreads();  // the last chunk's atomics (or the previous pass) are done with sdq
#pragma unroll
    for (int o = 0; o < OWN; ++o) {
      const int tile = warp + o * WARPS;
      if (tile < TK * TD) {
        const int i = tile / TD, j = tile % TD;
        float* at = sdq + i * 16 * OS + j * 16;
        if (pass) {  // two calls, not `pass ? acc_v[o] : acc_k[o]`: that sends them to local memory
          wmma::store_matrix_sync(at, acc_v[o], OS, wmma::mem_row_major);
        } else {
          wmma::store_matrix_sync(at, acc_k[o], OS, wmma::mem_row_major);
        }
      }
    }
    __syncthreads();
    T* dst = pass ? dv : dk;
    const float factor = pass ? 1.0f : scale;
    for (int e = threadIdx.x; e < KB * D; e += THREADS) {
      const int r = e / D, col = e % D, row = first_key + r;
      if (row < n) dst[base + static_cast<long long>(row) * D + col] = float_to<T>(sdq[r * OS + col] * factor);
    }
  }
}

}  // namespace

// sparse_attention_fwd_{f16,bf16}<B, D>: the arguments of sparse_attention_fwd_f32 with q, k, v
//   and out of the half type (lse stays float32). Launch: grid (⌈n/B⌉, b·h), block (8·B),
//   dynamic shared memory 4·B·(D+8) + 4·B·(B+D+8) bytes (gpu.kernels.sparse_attention_fwd_wmma_config).
template <int B, int D>
__global__ void __launch_bounds__(B * 8)
    sparse_attention_fwd_f16(const __half* __restrict__ q, const __half* __restrict__ k,
                             const __half* __restrict__ v, const int* __restrict__ kv_indptr,
                             const int* __restrict__ kv_indices, const int* __restrict__ kv_slots,
                             const unsigned* __restrict__ bits, __half* __restrict__ out,
                             float* __restrict__ lse, int n, int heads, int mask_heads,
                             float scale) {
  fwd_wmma<__half, B, D>(q, k, v, kv_indptr, kv_indices, kv_slots, bits, out, lse, n, heads,
                         mask_heads, scale);
}

template <int B, int D>
__global__ void __launch_bounds__(B * 8)
    sparse_attention_fwd_bf16(const __nv_bfloat16* __restrict__ q,
                              const __nv_bfloat16* __restrict__ k,
                              const __nv_bfloat16* __restrict__ v,
                              const int* __restrict__ kv_indptr, const int* __restrict__ kv_indices,
                              const int* __restrict__ kv_slots, const unsigned* __restrict__ bits,
                              __nv_bfloat16* __restrict__ out, float* __restrict__ lse, int n,
                              int heads, int mask_heads, float scale) {
  fwd_wmma<__nv_bfloat16, B, D>(q, k, v, kv_indptr, kv_indices, kv_slots, bits, out, lse, n,
                                heads, mask_heads, scale);
}

// sparse_attention_bwd_{f16,bf16}<B, D>: the arguments of sparse_attention_bwd_f32 with q, k, v,
//   dout, dk and dv of the half type (lse, delta and the dq accumulator stay float32). Launch as
//   sparse_attention_bwd_f32 with the shared memory of gpu.kernels.sparse_attention_bwd_wmma_config.
template <int B, int D>
__global__ void __launch_bounds__(8 * (B < 64 ? B : 64))
    sparse_attention_bwd_f16(const __half* __restrict__ q, const __half* __restrict__ k,
                             const __half* __restrict__ v, const __half* __restrict__ dout,
                             const float* __restrict__ lse, const float* __restrict__ delta,
                             const int* __restrict__ q_indptr, const int* __restrict__ q_indices,
                             const int* __restrict__ q_slots, const unsigned* __restrict__ bits,
                             float* __restrict__ dq, __half* __restrict__ dk,
                             __half* __restrict__ dv, int n, int heads, int mask_heads,
                             float scale) {
  bwd_wmma<__half, B, D>(q, k, v, dout, lse, delta, q_indptr, q_indices, q_slots, bits, dq, dk, dv,
                         n, heads, mask_heads, scale);
}

template <int B, int D>
__global__ void __launch_bounds__(8 * (B < 64 ? B : 64))
    sparse_attention_bwd_bf16(const __nv_bfloat16* __restrict__ q,
                              const __nv_bfloat16* __restrict__ k,
                              const __nv_bfloat16* __restrict__ v,
                              const __nv_bfloat16* __restrict__ dout,
                              const float* __restrict__ lse, const float* __restrict__ delta,
                              const int* __restrict__ q_indptr, const int* __restrict__ q_indices,
                              const int* __restrict__ q_slots, const unsigned* __restrict__ bits,
                              float* __restrict__ dq, __nv_bfloat16* __restrict__ dk,
                              __nv_bfloat16* __restrict__ dv, int n, int heads, int mask_heads,
                              float scale) {
  bwd_wmma<__nv_bfloat16, B, D>(q, k, v, dout, lse, delta, q_indptr, q_indices, q_slots, bits, dq,
                                dk, dv, n, heads, mask_heads, scale);
}
