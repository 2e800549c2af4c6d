// metric_attention.cu — metric tensor attention, forward and backward: q = p·M per query tile,
// then flash-style attention whose keys and values are the same tensor p (docs/gpu.md, "Metric
// attention"). Entry points per element type T of p, M and out: _f32 (float), _f16 (__half),
// _bf16 (__nv_bfloat16); the inputs are read in T, and every sum is accumulated in float32.
//
// metric_attention_fwd_{f32,f16,bf16}<B, D>(p, m_packed, kv_indptr, kv_indices, kv_slots, bits,
//                                          perm, out, lse, n, heads, mask_heads, causal, scale)
//   p, out : (b, h, n, D) T, contiguous (in the mask's stored order when it is permuted);
//   m_packed : (h, D(D+1)/2) T, each row the upper triangle of a symmetric M including the
//   diagonal, row-major ((0,0), (0,1), …, (D−1,D−1)); lse (b, h, n) float32.
//   Without a mask, kv_indptr, kv_indices, kv_slots, bits and perm are null. With a
//   gpu.SparseMask: its forward CSR (int32, global offsets), its partial tiles' words and its
//   perm_hn (mask_heads, n) int32 or null: the token at each stored position, which the causal
//   test compares (a permuted mask's causal AND is not block-structured in the stored order).
//   out[q] = Σ_k softmax_k(scale·(p[q]·M)·p[k])·p[k] over the allowed keys: token(k) ≤ token(q)
//   when causal ≠ 0, AND the mask's bit when there is a mask; lse[q] = log Σ exp(scale·q·k), for
//   the backward. A query with no allowed key gets zeros and lse = −inf.
// Launch: grid (⌈n/B⌉, b·h), block (8·B), dynamic shared memory 4·(2·B·(D+1) + B·(B+1)) bytes
//   for every T (gpu.kernels.metric_attention_fwd_config; above 48 KiB the launcher raises the
//   kernel's MaxDynamicSharedMemorySize attribute).
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
// f16/bf16 run their products on tensor cores (WMMA: metric_fwd_wmma and metric_bwd_wmma below),
// f32 on CUDA cores (metric_fwd, metric_bwd).
//
// Compiled by NVRTC/nvcc and by tests/cuda_emu: only what the shim provides is used.


#include "tile_common.cuh"
#include "wmma_tiles.cuh"

namespace {

// M[i][j] of the packed upper triangle (row-major, diagonal included), D×D, as float
template <int D, class T>
__device__ __forceinline__ float metric_at(const T* __restrict__ m, int i, int j) {
  const int a = i < j ? i : j, c = i < j ? j : i;
  return as_float(m[a * D - a * (a - 1) / 2 + (c - a)]);
}

}  // namespace

template <int B, int D, class T>
__device__ __forceinline__ void metric_fwd(const T* __restrict__ p, const T* __restrict__ m_packed,
                                           const int* __restrict__ kv_indptr,
                                           const int* __restrict__ kv_indices,
                                           const int* __restrict__ kv_slots,
                                           const unsigned* __restrict__ bits,
                                           const int* __restrict__ perm, T* __restrict__ out,
                                           float* __restrict__ lse, int n, int heads,
                                           int mask_heads, int causal, float scale) {
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
  const T* m = m_packed + static_cast<long long>(head) * L;
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
    float s[KEYS];
#pragma unroll
    for (int j = 0; j < KEYS; ++j) {
      const int key = g + j * kLanes, pos = kb * B + key;
      bool on = pos < n && (row_bits == nullptr || mask_bit(row_bits, key));
      if (on && causal) on = (tokens == nullptr ? pos : tokens[pos]) <= row_token;
      s[j] = on ? row_dot<D>(sq + r * QS, skv + key * QS) * scale2 : neg_inf();
    }
    const float alpha = online_softmax(s, mx, l, sp + r * PS, g);
#pragma unroll
    for (int c = 0; c < COLS; ++c) acc[c] *= alpha;

    __syncwarp();  // the row's probabilities, written by its eight lanes, are visible to them
    accumulate_pv<B, D>(acc, sp + r * PS, skv, g);
    // the next tile's __syncthreads comes before its probabilities overwrite the row
  }

  if (row < n) {
    write_row(out + base + static_cast<long long>(row) * D, lse + bh * n + row, acc, mx, l, g);
  }
}

// metric_attention_bwd_{f32,f16,bf16}<B, D>(p, q, dout, lse, delta, q_indptr, q_indices, q_slots,
//                                          bits, perm, dkv, dq, n, heads, mask_heads, causal, scale)
//   The backward of the forward above, FlashAttention-style, one thread block per (key block,
//   batch·head), eight lanes per key row. Inputs (b, h, n, D) in the stored order: p and dout of
//   the element type T, q = p·M float32 (formed by the launcher in float32 from p); (b, h, n)
//   float32: lse (the forward's) and
//   delta = rowsum(dout ∘ out). The mask arguments are its backward CSR (q_indptr, q_indices,
//   q_slots: the query tiles of each key block) and the same bits and perm as the forward, or
//   all null. Outputs: dkv (b, h, n, D), written: dK + dV, the key and value paths to p, summed
//   because keys and values are both p; dq (b, h, n, D), zeroed by the launcher, accumulated with
//   atomicAdd (each key block adds its share); both float32 for every T. The launcher finishes
//   with dp = dq·M + dkv and the packed dM = pᵀ·dq with both halves of each off-diagonal entry
//   (docs/gpu.md).
// Launch: grid (⌈n/B⌉·B/KB, b·h) with KB = min(B, 64) keys per thread block — a key block of 128
//   is two thread blocks, and the query tiles are walked in chunks of KB rows, so the tiles fit
//   in shared memory — block (8·KB), dynamic shared memory 4·(3·KB·(D+1) + 2·KB·(KB+1) + 2·KB)
//   bytes (gpu.kernels.metric_attention_bwd_config).
template <int B, int D, class T>
__device__ __forceinline__ void metric_bwd(const T* __restrict__ p, const float* __restrict__ q,
                                           const T* __restrict__ dout,
                                           const float* __restrict__ lse,
                                           const float* __restrict__ delta,
                                           const int* __restrict__ q_indptr,
                                           const int* __restrict__ q_indices,
                                           const int* __restrict__ q_slots,
                                           const unsigned* __restrict__ bits,
                                           const int* __restrict__ perm, float* __restrict__ dkv,
                                           float* __restrict__ dq, int n, int heads,
                                           int mask_heads, int causal, float scale) {
  static_assert(B % 32 == 0 || B == 16, "B is 16, 32, 64 or 128");
  static_assert(D % kLanes == 0, "D is a multiple of 8");
  constexpr int KB = B < 64 ? B : 64;  // keys of this thread block; also the query chunk
  constexpr int SUB = B / KB;          // thread blocks per key block, query chunks per tile
  constexpr int W = (B + 31) / 32;
  constexpr int QUERIES = KB / kLanes;  // queries each lane scores per chunk
  constexpr int COLS = D / kLanes;
  constexpr int QS = D + 1, PS = KB + 1;
  FG_DYNAMIC_SHARED(float, smem);
  float* skv = smem;                 // (KB, D+1): this block's p rows, the keys and the values
  float* sq = smem + KB * QS;        // (KB, D+1): the current query chunk's q
  float* sdo = smem + 2 * KB * QS;   // (KB, D+1): its dout
  float* sP = smem + 3 * KB * QS;    // (KB, KB+1): P[key][query]
  float* sdS = sP + KB * PS;         // (KB, KB+1): dS[key][query]
  float* slse = sdS + KB * PS;       // (KB): lse of the chunk's queries, in base 2
  float* sdelta = slse + KB;         // (KB)

  const int nb = (n + B - 1) / B;
  const int kb = blockIdx.x / SUB;              // the key block (the mask's tile column)
  const int ko = (blockIdx.x % SUB) * KB;       // this thread block's first key in it
  const long long bh = blockIdx.y;
  const int head = static_cast<int>(bh % heads);
  const int mask_head = mask_heads == 1 ? 0 : head;
  const int* tokens = perm == nullptr ? nullptr : perm + static_cast<long long>(mask_head) * n;
  const int c = threadIdx.x / kLanes, g = threadIdx.x % kLanes;  // key row, lane
  const int kc = ko + c;                                         // its column in the mask tile
  const int key = kb * B + kc;
  const int key_token = key >= n ? n : (tokens == nullptr ? key : tokens[key]);
  const long long base = bh * n * D;
  const float scale2 = scale * kLog2e;

  load_tile<KB, D>(skv, p + base, kb * B + ko, n);
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
    for (int qo = 0; qo < B; qo += KB) {  // the tile's queries, KB rows at a time
      const int first = qb * B + qo;       // the chunk's first query
      // without a mask, a causal chunk wholly before this block's keys sees none of them (the
      // test is the same for every thread: the barriers below stay uniform)
      if (!masked && causal && first + KB <= kb * B + ko) continue;
      __syncthreads();  // the previous chunk's dq step is done (and skv loaded, the first time)
      load_tile<KB, D>(sq, q + base, first, n);
      load_tile<KB, D>(sdo, dout + base, first, n);
      load_chunk_stats<KB>(slse, sdelta, lse + bh * n, delta + bh * n, first, n);
      __syncthreads();

#pragma unroll
      for (int j = 0; j < QUERIES; ++j) {
        const int r = g + j * kLanes, row = first + r;
        bool on = key < n && row < n && slse[r] != neg_inf();
        if (on && slot >= 0) {
          on = mask_bit(bits + (static_cast<long long>(slot) * B + qo + r) * W, kc);
        }
        if (on && causal) on = key_token <= (tokens == nullptr ? row : tokens[row]);
        float prob = 0.0f, ds = 0.0f;
        if (on) {
          prob_and_ds<D>(sq + r * QS, skv + c * QS, sdo + r * QS, skv + c * QS, scale2, slse[r],
                         sdelta[r], prob, ds);
        }
        sP[c * PS + r] = prob;
        sdS[c * PS + r] = ds;
      }
      __syncwarp();  // the key row's P and dS, written by its eight lanes, are visible to them
      for (int r = 0; r < KB; ++r) {
        const float prob = sP[c * PS + r], ds = sdS[c * PS + r] * scale;
        if (prob != 0.0f || ds != 0.0f) {
#pragma unroll
          for (int cc = 0; cc < COLS; ++cc) {
            const int col = g + cc * kLanes;
            acc[cc] += prob * sdo[r * QS + col] + ds * sq[r * QS + col];
          }
        }
      }
      __syncthreads();  // every dS of the chunk is written: the dq step reads them across warps

      const int r = c, row = first + r;  // now: query row r of the chunk, same lanes
      if (row < n) {
        add_dq_row<KB, D>(dq + base + static_cast<long long>(row) * D, sdS, skv, r, g, scale);
      }
    }
  }

  if (key < n) {
#pragma unroll
    for (int cc = 0; cc < COLS; ++cc) {
      dkv[base + static_cast<long long>(key) * D + g + cc * kLanes] = acc[cc];
    }
  }
}

// ---- the float16 / bfloat16 forward on tensor cores (WMMA) ---------------------------------------
// metric_attention_fwd_{f16,bf16}<B, D>: the arguments, grid and threads of the forward above; the
// scores S = q·pᵀ and the update O += P·p are 16×16×16 WMMA products (T operands, float
// accumulators) shared out among the warps, the softmax, masks and causal test stay in float with
// eight lanes per query row. q = p·M is formed in float by each row's lanes and rounded to T (the
// tensor cores' operand type), as SDPA's q = p·M would be. The p tile is loaded once per key tile
// and read as the keys (S) and then as the values (P·p). O lives in shared memory as float: the
// online softmax rescales its rows, which a fragment cannot do (which entries a lane holds is
// unspecified); the T probabilities overwrite the first half of their own float score row once
// the row's lanes have read it. T tiles are padded to D+8 elements per row (16-byte aligned rows
// for WMMA and 16-byte loads, shifted banks), float tiles to +4; rows past n are zeros, so the
// products run on whole 16-row tiles.
// Dynamic shared memory: 2·2·B·(D+8) + 4·B·(B+4) + 4·B·(D+4) bytes
//   (gpu.kernels.metric_attention_fwd_wmma_config); p must be 16-byte aligned (the launcher
//   copies it otherwise).
namespace {

template <int B, int D, class T>
__device__ __forceinline__ void metric_fwd_wmma(
    const T* __restrict__ p, const T* __restrict__ m_packed, const int* __restrict__ kv_indptr,
    const int* __restrict__ kv_indices, const int* __restrict__ kv_slots,
    const unsigned* __restrict__ bits, const int* __restrict__ perm, T* __restrict__ out,
    float* __restrict__ lse, int n, int heads, int mask_heads, int causal, float scale) {
  static_assert(B % 16 == 0 && D % 16 == 0, "whole 16×16 tiles");
  constexpr int THREADS = B * kLanes, WARPS = THREADS / 32;
  constexpr int W = (B + 31) / 32, KEYS = B / kLanes, COLS = D / kLanes;
  constexpr int HS = D + 8;   // T tile pitch
  constexpr int SS = B + 4;   // float score pitch
  constexpr int PS = 2 * SS;  // T probability pitch: row r of P starts where score row r does
  constexpr int OS = D + 4;   // float output pitch
  constexpr int L = D * (D + 1) / 2;
  FG_DYNAMIC_SHARED(unsigned char, smem);
  T* sq = reinterpret_cast<T*>(smem);                  // (B, D+8): this block's p, then q = p·M
  T* skv = sq + B * HS;                                // (B, D+8): the p tile, keys and values
  float* ss = reinterpret_cast<float*>(skv + B * HS);  // (B, B+4): scores
  T* sp = reinterpret_cast<T*>(ss);                    // (B, 2B+8): probabilities
  float* so = ss + B * SS;                             // (B, D+4): output accumulator

  const int nb = (n + B - 1) / B;
  const int qb = blockIdx.x;
  const long long bh = blockIdx.y;
  const int head = static_cast<int>(bh % heads);
  const int mask_head = mask_heads == 1 ? 0 : head;
  const T* m = m_packed + static_cast<long long>(head) * L;
  const int* tokens = perm == nullptr ? nullptr : perm + static_cast<long long>(mask_head) * n;
  const int r = threadIdx.x / kLanes, g = threadIdx.x % kLanes, warp = threadIdx.x / 32;
  const int row = qb * B + r;
  const int row_token = row >= n ? n : (tokens == nullptr ? row : tokens[row]);
  const long long base = bh * n * D;
  const float scale2 = scale * kLog2e;

  // q = p·M: the row's lanes read their p row, then (after __syncwarp: only they read it)
  // overwrite it with their D/8 columns of q
  load_rows16<B, D, HS, THREADS>(sq, p + base, qb * B, n);
  zero_tile<B, D, OS, THREADS>(so);
  __syncthreads();
  float qv[COLS];
#pragma unroll
  for (int cc = 0; cc < COLS; ++cc) {
    const int c = g + cc * kLanes;
    float dot = 0.0f;
    for (int k = 0; k < D; ++k) dot += as_float(sq[r * HS + k]) * metric_at<D>(m, k, c);
    qv[cc] = dot;
  }
  __syncwarp();
#pragma unroll
  for (int cc = 0; cc < COLS; ++cc) sq[r * HS + g + cc * kLanes] = float_to<T>(qv[cc]);

  float mx = neg_inf(), l = 0.0f;
  const bool masked = kv_indptr != nullptr;
  const int* indptr = masked ? kv_indptr + mask_head * (nb + 1) : nullptr;
  const int begin = masked ? indptr[qb] : 0;
  const int end = masked ? indptr[qb + 1] : (causal ? qb + 1 : nb);
  for (int t = begin; t < end; ++t) {
    const int kb = masked ? kv_indices[t] : t;
    const int slot = masked ? kv_slots[t] : -1;
    __syncthreads();  // the previous P·p is done with skv and sp (sq and so ready, the first time)
    load_rows16<B, D, HS, THREADS>(skv, p + base, kb * B, n);
    __syncthreads();
    tiles_abt<T, B, B, D, WARPS>(ss, SS, sq, HS, skv, HS, warp);  // S = q·pᵀ
    __syncthreads();  // the scores are in ss; skv stays: it is the values too

    const unsigned* row_bits =
        slot < 0 ? nullptr : bits + (static_cast<long long>(slot) * B + r) * W;
    float s[KEYS];
#pragma unroll
    for (int j = 0; j < KEYS; ++j) {
      const int key = g + j * kLanes, pos = kb * B + key;
      bool on = pos < n && (row_bits == nullptr || mask_bit(row_bits, key));
      if (on && causal) on = (tokens == nullptr ? pos : tokens[pos]) <= row_token;
      s[j] = on ? ss[r * SS + key] * scale2 : neg_inf();
    }
    const float alpha = online_softmax(s, mx, l, sp + r * PS, g);  // P over the score row
    scale_row<COLS>(so + r * OS, alpha, g);
    __syncthreads();  // P and the rescaled O are in shared memory
    tiles_add_ab<T, B, D, B, WARPS>(so, OS, sp, PS, skv, HS, warp);  // O += P·p
  }
  __syncthreads();  // the last P·p is in so

  if (row < n) {
    write_row_from<COLS>(out + base + static_cast<long long>(row) * D, lse + bh * n + row,
                         so + r * OS, mx, l, g);
  }
}

// metric_attention_bwd_{f16,bf16}<B, D>: the arguments (q of type T: the launcher's p·M rounded
// to T, the forward's operand), grid and threads of metric_bwd above, with the products on
// tensor cores: Sᵀ = p·qᵀ and dPᵀ = p·doutᵀ for the block's KB keys against a chunk of KB
// queries, then dkv += Pᵀ·dout + (scale·dS)ᵀ·q — the value and key paths in one accumulator,
// since keys and values are both p — and the chunk's dq = (scale·dS)·p. The elementwise part
// (masks, causal test on tokens, P and dS) keeps eight lanes per key row, in float. dkv stays in
// fragments for the whole walk (each warp owns fixed output tiles); the chunk's dq goes through
// shared memory to atomicAdd on the float buffer; dkv is written as float at the end.
// Dynamic shared memory: 2·3·KB·(D+8) + 4·(2·KB·(KB+4) + KB·(D+4) + 2·KB) bytes
//   (gpu.kernels.metric_attention_bwd_wmma_config); p, q and dout 16-byte aligned.
template <int B, int D, class T>
__device__ __forceinline__ void metric_bwd_wmma(
    const T* __restrict__ p, const T* __restrict__ q, const T* __restrict__ dout,
    const float* __restrict__ lse, const float* __restrict__ delta,
    const int* __restrict__ q_indptr, const int* __restrict__ q_indices,
    const int* __restrict__ q_slots, const unsigned* __restrict__ bits,
    const int* __restrict__ perm, float* __restrict__ dkv, float* __restrict__ dq, int n, int heads,
    int mask_heads, int causal, float scale) {
  static_assert(B % 16 == 0 && D % 16 == 0, "whole 16×16 tiles");
  constexpr int KB = B < 64 ? B : 64, SUB = B / KB;
  constexpr int THREADS = KB * kLanes, WARPS = THREADS / 32;
  constexpr int W = (B + 31) / 32, QUERIES = KB / kLanes;
  constexpr int HS = D + 8, FS = KB + 4, PS = 2 * FS, OS = D + 4;
  constexpr int OWN = ((KB / 16) * (D / 16) + WARPS - 1) / WARPS;  // dkv tiles per warp
  FG_DYNAMIC_SHARED(unsigned char, smem);
  T* skv = reinterpret_cast<T*>(smem);                    // (KB, D+8): this block's p rows
  T* sq = skv + KB * HS;                                  // (KB, D+8): the query chunk's q
  T* sdo = sq + KB * HS;                                  // (KB, D+8): its dout
  float* sst = reinterpret_cast<float*>(sdo + KB * HS);  // (KB, KB+4): Sᵀ[key][query]
  float* sdpt = sst + KB * FS;                            // (KB, KB+4): dPᵀ[key][query]
  T* spt = reinterpret_cast<T*>(sst);                     // (KB, 2KB+8): Pᵀ over Sᵀ
  T* sdst = reinterpret_cast<T*>(sdpt);                   // (KB, 2KB+8): scale·dSᵀ over dPᵀ
  float* sdq = sdpt + KB * FS;                            // (KB, D+4): the chunk's dq; then dkv
  float* slse = sdq + KB * OS;                            // (KB): base 2
  float* sdelta = slse + KB;                              // (KB)

  const int nb = (n + B - 1) / B;
  const int kb = blockIdx.x / SUB, ko = (blockIdx.x % SUB) * KB;
  const long long bh = blockIdx.y;
  const int head = static_cast<int>(bh % heads);
  const int mask_head = mask_heads == 1 ? 0 : head;
  const int* tokens = perm == nullptr ? nullptr : perm + static_cast<long long>(mask_head) * n;
  const int c = threadIdx.x / kLanes, g = threadIdx.x % kLanes, warp = threadIdx.x / 32;
  const int kc = ko + c, key = kb * B + kc;  // the key row's column in the mask tile, its position
  const int key_token = key >= n ? n : (tokens == nullptr ? key : tokens[key]);
  const long long base = bh * n * D;
  const float scale2 = scale * kLog2e;

  load_rows16<KB, D, HS, THREADS>(skv, p + base, kb * B + ko, n);
  frag_acc acc[OWN];
#pragma unroll
  for (int o = 0; o < OWN; ++o) wmma::fill_fragment(acc[o], 0.0f);

  const bool masked = q_indptr != nullptr;
  const int* indptr = masked ? q_indptr + mask_head * (nb + 1) : nullptr;
  const int begin = masked ? indptr[kb] : (causal ? kb : 0);
  const int end = masked ? indptr[kb + 1] : nb;
  for (int t = begin; t < end; ++t) {
    const int qb = masked ? q_indices[t] : t;
    const int slot = masked ? q_slots[t] : -1;
    for (int qo = 0; qo < B; qo += KB) {
      const int first = qb * B + qo;
      // (uniform tests: the barriers below stay uniform) past n, or — causal without a mask —
      // wholly before this block's keys: nothing to do
      if (first >= n || (!masked && causal && first + KB <= kb * B + ko)) continue;
      __syncthreads();  // the previous chunk is done with sq, sdo, spt, sdst and sdq
      load_rows16<KB, D, HS, THREADS>(sq, q + base, first, n);
      load_rows16<KB, D, HS, THREADS>(sdo, dout + base, first, n);
      load_chunk_stats<KB>(slse, sdelta, lse + bh * n, delta + bh * n, first, n);
      __syncthreads();
      // Sᵀ = p·qᵀ, dPᵀ = p·doutᵀ
      tiles_abt2<T, KB, KB, D, WARPS>(sst, sdpt, FS, skv, skv, HS, sq, sdo, HS, warp);
      __syncthreads();

      float prob[QUERIES], ds[QUERIES];
#pragma unroll
      for (int j = 0; j < QUERIES; ++j) {
        const int r = g + j * kLanes, row = first + r;
        bool on = key < n && row < n && slse[r] != neg_inf();
        if (on && slot >= 0) {
          on = mask_bit(bits + (static_cast<long long>(slot) * B + qo + r) * W, kc);
        }
        if (on && causal) on = key_token <= (tokens == nullptr ? row : tokens[row]);
        prob[j] = on ? exp2f(sst[c * FS + r] * scale2 - slse[r]) : 0.0f;
        ds[j] = on ? prob[j] * (sdpt[c * FS + r] - sdelta[r]) * scale : 0.0f;
      }
      __syncwarp();  // the key row's lanes have read their Sᵀ and dPᵀ before overwriting them
#pragma unroll
      for (int j = 0; j < QUERIES; ++j) {
        spt[c * PS + g + j * kLanes] = float_to<T>(prob[j]);
        sdst[c * PS + g + j * kLanes] = float_to<T>(ds[j]);
      }
      __syncthreads();
      // dkv += Pᵀ·dout + (scale·dS)ᵀ·q on this warp's tiles, then the chunk's dq = (scale·dS)·p
      own_add_ab<T, KB, D, KB, WARPS>(acc, spt, PS, sdo, HS, warp);
      own_add_ab<T, KB, D, KB, WARPS>(acc, sdst, PS, sq, HS, warp);
      tiles_atb<T, KB, D, KB, WARPS>(sdq, OS, sdst, PS, skv, HS, warp);
      __syncthreads();
      atomic_add_rows<KB, D, OS, THREADS>(dq + base, sdq, first, n, 1.0f);  // dS has the scale
    }
  }

  __syncthreads();  // the last chunk's atomics are done with sdq
  own_store<KB, D, WARPS>(sdq, OS, acc, warp);
  __syncthreads();
  store_rows<KB, D, OS, THREADS>(dkv + base, sdq, kb * B + ko, n, 1.0f);
}

}  // namespace

// The entry points: one per element type, each a thin shell over the bodies above (FWD, BWD: the
// bodies of the type, CUDA cores for float, tensor cores for the half types; QT: the type of the
// backward's q, float for float and T for the half types).
#define FG_METRIC_ENTRY_POINTS(SUFFIX, T, FWD, BWD, QT)                                            \
  template <int B, int D>                                                                          \
  __global__ void __launch_bounds__(B * 8) metric_attention_fwd_##SUFFIX(                          \
      const T* __restrict__ p, const T* __restrict__ m_packed, const int* __restrict__ kv_indptr,  \
      const int* __restrict__ kv_indices, const int* __restrict__ kv_slots,                        \
      const unsigned* __restrict__ bits, const int* __restrict__ perm, T* __restrict__ out,        \
      float* __restrict__ lse, int n, int heads, int mask_heads, int causal, float scale) {        \
    FWD<B, D>(p, m_packed, kv_indptr, kv_indices, kv_slots, bits, perm, out, lse, n, heads,        \
              mask_heads, causal, scale);                                                          \
  }                                                                                                \
  template <int B, int D>                                                                          \
  __global__ void __launch_bounds__(8 * (B < 64 ? B : 64)) metric_attention_bwd_##SUFFIX(          \
      const T* __restrict__ p, const QT* __restrict__ q, const T* __restrict__ dout,               \
      const float* __restrict__ lse, const float* __restrict__ delta,                              \
      const int* __restrict__ q_indptr, const int* __restrict__ q_indices,                         \
      const int* __restrict__ q_slots, const unsigned* __restrict__ bits,                          \
      const int* __restrict__ perm, float* __restrict__ dkv, float* __restrict__ dq, int n,        \
      int heads, int mask_heads, int causal, float scale) {                                        \
    BWD<B, D>(p, q, dout, lse, delta, q_indptr, q_indices, q_slots, bits, perm, dkv, dq, n, heads, \
              mask_heads, causal, scale);                                                          \
  }

FG_METRIC_ENTRY_POINTS(f32, float, metric_fwd, metric_bwd, float)
FG_METRIC_ENTRY_POINTS(f16, __half, metric_fwd_wmma, metric_bwd_wmma, __half)
FG_METRIC_ENTRY_POINTS(bf16, __nv_bfloat16, metric_fwd_wmma, metric_bwd_wmma, __nv_bfloat16)
