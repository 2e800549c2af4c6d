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
    float s[KEYS];
#pragma unroll
    for (int j = 0; j < KEYS; ++j) {
      const int key = g + j * kLanes;
      const bool on = slot < 0 || mask_bit(row_bits, key);
      s[j] = on ? row_dot<D>(sq + r * QS, skv + key * QS) * scale2 : neg_inf();
    }
    const float alpha = online_softmax(s, m, l, sp + r * PS, g);
#pragma unroll
    for (int c = 0; c < COLS; ++c) acc[c] *= alpha;

    __syncthreads();  // every lane is done with K
    load_tile<B, D>(skv, v + base, kb * B, n);
    __syncthreads();
    accumulate_pv<B, D>(acc, sp + r * PS, skv, g);
  }

  const int row = qb * B + r;
  if (row < n) {
    write_row(out + base + static_cast<long long>(row) * D, lse + bh * n + row, acc, m, l, g);
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
      load_chunk_stats<KB>(slse, sdelta, lse + bh * n, delta + bh * n, first, n);
      __syncthreads();

#pragma unroll
      for (int j = 0; j < QUERIES; ++j) {
        const int r = g + j * kLanes, row = first + r;
        bool on = key < n && row < n && slse[r] != neg_inf();
        if (on && slot >= 0) {
          on = mask_bit(bits + (static_cast<long long>(slot) * B + chunk * KB + r) * W, key_col);
        }
        float prob = 0.0f, ds = 0.0f;
        if (on) {
          prob_and_ds<D>(sq + r * QS, sk + c * QS, sdo + r * QS, sv + c * QS, scale2, slse[r],
                         sdelta[r], prob, ds);
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
        add_dq_row<KB, D>(dq + base + static_cast<long long>(row) * D, sdS, sk, r, g, scale);
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
  zero_tile<B, D, OS, THREADS>(so);
  float m = neg_inf(), l = 0.0f;

  const int begin = indptr[qb], end = indptr[qb + 1];
  for (int t = begin; t < end; ++t) {
    const int kb = kv_indices[t], slot = kv_slots[t];
    __syncthreads();  // the previous P·V is done with skv and sp (sq and so ready, the first time)
    load_rows16<B, D, HS, THREADS>(skv, k + base, kb * B, n);
    __syncthreads();
    tiles_abt<T, B, B, D, WARPS>(ss, SS, sq, HS, skv, HS, warp);  // S = Q·Kᵀ
    __syncthreads();  // scores are in ss; K is consumed
    load_rows16<B, D, HS, THREADS>(skv, v + base, kb * B, n);

    const unsigned* row_bits = bits + (static_cast<long long>(slot < 0 ? 0 : slot) * B + r) * W;
    float s[KEYS];
#pragma unroll
    for (int j = 0; j < KEYS; ++j) {
      const int key = g + j * kLanes;
      const bool on = slot < 0 || mask_bit(row_bits, key);
      s[j] = on ? ss[r * SS + key] * scale2 : neg_inf();
    }
    const float alpha = online_softmax(s, m, l, sp + r * PS, g);  // P over the score row
    scale_row<COLS>(so + r * OS, alpha, g);
    __syncthreads();  // P, the rescaled O and V are in shared memory
    tiles_add_ab<T, B, D, B, WARPS>(so, OS, sp, PS, skv, HS, warp);  // O += P·V
  }
  __syncthreads();  // the last P·V is in so

  const int row = qb * B + r;
  if (row < n) {
    write_row_from<COLS>(out + base + static_cast<long long>(row) * D, lse + bh * n + row,
                         so + r * OS, m, l, g);
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
  constexpr int OWN = ((KB / 16) * (D / 16) + WARPS - 1) / WARPS;  // dk (and dv) tiles per warp
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
  frag_acc acc_k[OWN], acc_v[OWN];  // dk, dv: this warp's tiles
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
      load_chunk_stats<KB>(slse, sdelta, lse + bh * n, delta + bh * n, first, n);
      __syncthreads();
      // Sᵀ = K·Qᵀ, dPᵀ = V·doutᵀ
      tiles_abt2<T, KB, KB, D, WARPS>(sst, sdpt, FS, sk, sv, HS, sq, sdo, HS, warp);
      __syncthreads();

      float prob[QUERIES], ds[QUERIES];
#pragma unroll
      for (int j = 0; j < QUERIES; ++j) {
        const int r = g + j * kLanes, row = first + r;
        bool on = key < n && row < n && slse[r] != neg_inf();
        if (on && slot >= 0) {
          on = mask_bit(bits + (static_cast<long long>(slot) * B + chunk * KB + r) * W, key_col);
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
      own_add_ab<T, KB, D, KB, WARPS>(acc_v, spt, PS, sdo, HS, warp);   // dv += Pᵀ·dout
      own_add_ab<T, KB, D, KB, WARPS>(acc_k, sdst, PS, sq, HS, warp);   // dk += dSᵀ·Q
      tiles_atb<T, KB, D, KB, WARPS>(sdq, OS, sdst, PS, sk, HS, warp);  // the chunk's dq = dS·K
      __syncthreads();
      atomic_add_rows<KB, D, OS, THREADS>(dq + base, sdq, first, n, scale);
    }
  }

  // dk then dv through sdq (float) to T in global memory
  for (int pass = 0; pass < 2; ++pass) {
    __syncthreads();  // the last chunk's atomics (or the previous pass) are done with sdq
    if (pass) {  // two calls, not `pass ? acc_v : acc_k`: that sends them to local memory
      own_store<KB, D, WARPS>(sdq, OS, acc_v, warp);
    } else {
      own_store<KB, D, WARPS>(sdq, OS, acc_k, warp);
    }
    __syncthreads();
    store_rows<KB, D, OS, THREADS>((pass ? dv : dk) + base, sdq, first_key, n, pass ? 1.0f : scale);
  }
}

}  // namespace

// sparse_attention_fwd_{f16,bf16}<B, D>: the arguments of sparse_attention_fwd_f32 with q, k, v
//   and out of the half type (lse stays float32). Launch: grid (⌈n/B⌉, b·h), block (8·B),
//   dynamic shared memory 4·B·(D+8) + 4·B·(B+D+8) bytes
//   (gpu.kernels.sparse_attention_fwd_wmma_config).
// sparse_attention_bwd_{f16,bf16}<B, D>: the arguments of sparse_attention_bwd_f32 with q, k, v,
//   dout, dk and dv of the half type (lse, delta and the dq accumulator stay float32). Launch as
//   sparse_attention_bwd_f32 with the shared memory of
//   gpu.kernels.sparse_attention_bwd_wmma_config.
// Each a thin shell over fwd_wmma / bwd_wmma above, one pair per half type T.
#define FG_SPARSE_WMMA_ENTRY_POINTS(SUFFIX, T)                                                     \
  template <int B, int D>                                                                          \
  __global__ void __launch_bounds__(B * 8) sparse_attention_fwd_##SUFFIX(                          \
      const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,                   \
      const int* __restrict__ kv_indptr, const int* __restrict__ kv_indices,                       \
      const int* __restrict__ kv_slots, const unsigned* __restrict__ bits, T* __restrict__ out,    \
      float* __restrict__ lse, int n, int heads, int mask_heads, float scale) {                    \
    fwd_wmma<T, B, D>(q, k, v, kv_indptr, kv_indices, kv_slots, bits, out, lse, n, heads,          \
                      mask_heads, scale);                                                          \
  }                                                                                                \
  template <int B, int D>                                                                          \
  __global__ void __launch_bounds__(8 * (B < 64 ? B : 64)) sparse_attention_bwd_##SUFFIX(          \
      const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,                   \
      const T* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ delta,  \
      const int* __restrict__ q_indptr, const int* __restrict__ q_indices,                         \
      const int* __restrict__ q_slots, const unsigned* __restrict__ bits, float* __restrict__ dq,  \
      T* __restrict__ dk, T* __restrict__ dv, int n, int heads, int mask_heads, float scale) {     \
    bwd_wmma<T, B, D>(q, k, v, dout, lse, delta, q_indptr, q_indices, q_slots, bits, dq, dk, dv,   \
                      n, heads, mask_heads, scale);                                                \
  }

FG_SPARSE_WMMA_ENTRY_POINTS(f16, __half)
FG_SPARSE_WMMA_ENTRY_POINTS(bf16, __nv_bfloat16)
