// selftest.cu — kernels that pin the emulator's CUDA semantics (tests/test_cuda_emu.py). Valid
// CUDA: the tests compile this file with nvcc as well, so the emulator is checked against what
// the real compiler accepts.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#define FULL 0xffffffffu

extern "C" __global__ void convert_f16(const float* x, __half* h, float* back, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    h[i] = __float2half_rn(x[i]);
    back[i] = __half2float(h[i]);
  }
}

extern "C" __global__ void convert_bf16(const float* x, __nv_bfloat16* b, float* back, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    b[i] = __float2bfloat16_rn(x[i]);
    back[i] = __bfloat162float(b[i]);
  }
}

extern "C" __global__ void half_bits_to_float(const unsigned short* bits, float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = __half2float(__ushort_as_half(bits[i]));
}

// Each thread writes its 12 index values at its global linear id.
extern "C" __global__ void indices(unsigned* out) {
  const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  unsigned* o = out + 12 * (b * blockDim.x * blockDim.y * blockDim.z + t);
  const unsigned v[12] = {threadIdx.x, threadIdx.y, threadIdx.z, blockIdx.x, blockIdx.y,
                          blockIdx.z,  blockDim.x,  blockDim.y,  blockDim.z, gridDim.x,
                          gridDim.y,   gridDim.z};
  for (int j = 0; j < 12; ++j) o[j] = v[j];
}

// Ten warp-synchronous results per thread (full warps only).
extern "C" __global__ void shuffles(const int* in, int* out) {
  const int g = blockIdx.x * blockDim.x + threadIdx.x;
  const int lane = threadIdx.x % 32;
  const int v = in[g];
  int* o = out + 10 * g;
  o[0] = __shfl_sync(FULL, v, 5);
  o[1] = __shfl_sync(FULL, v, (lane * 7 + 3) % 37);
  o[2] = __shfl_up_sync(FULL, v, 3);
  o[3] = __shfl_down_sync(FULL, v, 5);
  o[4] = __shfl_xor_sync(FULL, v, 9);
  o[5] = __shfl_sync(FULL, v, 11, 8);
  o[6] = __shfl_up_sync(FULL, v, 2, 8);
  o[7] = __shfl_down_sync(FULL, v, 3, 16);
  o[8] = static_cast<int>(__ballot_sync(FULL, v & 1));
  o[9] = __any_sync(FULL, v == 7) + 2 * __all_sync(FULL, v >= 0) + 4 * __shfl_xor_sync(FULL, v, 17, 16);
}

extern "C" __global__ void shuffle_f64(const double* in, double* out) {
  const int g = blockIdx.x * blockDim.x + threadIdx.x;
  out[g] = __shfl_xor_sync(FULL, in[g], 1) + __shfl_down_sync(FULL, in[g], 1);
}

// A partial last warp (blockDim 40: warp 1 has 8 lanes): shuffles within the lanes that exist.
extern "C" __global__ void partial_warp(const int* in, int* out) {
  const int t = threadIdx.x;
  int v = in[t];
  for (int offset = 1; offset < 8; offset <<= 1) v += __shfl_xor_sync(FULL, v, offset);
  out[t] = v;
}

// Reads a neighbour's shared value; `sync` chooses whether the write is published first.
extern "C" __global__ void neighbour(const float* x, float* out, int sync) {
  __shared__ float s[256];
  const int t = threadIdx.x;
  s[t] = x[blockIdx.x * blockDim.x + t];
  if (sync) __syncthreads();
  out[blockIdx.x * blockDim.x + t] = s[t == 0 ? 0 : t - 1];
}

// Dynamic shared memory: first what a block finds there, then a neighbour's published value.
extern "C" __global__ void dynamic_shared(float* found, float* out) {
#ifdef CUDA_EMU
  CUDA_EMU_DYNAMIC_SHARED(float, buf);
#else
  extern __shared__ float buf[];
#endif
  const int t = threadIdx.x, g = blockIdx.x * blockDim.x + t;
  found[g] = buf[t];
  __syncthreads();
  buf[t] = static_cast<float>(g);
  __syncthreads();
  out[g] = buf[(t + 1) % blockDim.x];
}

extern "C" __global__ void atomics(int* counter, float* total, int* largest) {
  const int g = blockIdx.x * blockDim.x + threadIdx.x;
  atomicAdd(counter, 1);
  atomicAdd(total, 0.5f);
  atomicMax(largest, g);
}

template <int N>
__global__ void fill(int* out) {
  out[threadIdx.x] = N;
}

// Undefined on a GPU; the emulator must fail the launch with a message.
extern "C" __global__ void skipped_barrier(int* out) {
  if (threadIdx.x < 16) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

extern "C" __global__ void divergent_shuffle(int* out) {
  int v = threadIdx.x;
  if (threadIdx.x % 32 < 16) v = __shfl_xor_sync(FULL, v, 1);
  out[threadIdx.x] = v;
}

extern "C" __global__ void partial_mask(int* out) {
  out[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, static_cast<int>(threadIdx.x), 1);
}

extern "C" __global__ void barrier_against_shuffle(int* out) {
  int v = threadIdx.x;
  if (threadIdx.x == 0) {
    __syncthreads();
  } else {
    v = __shfl_xor_sync(FULL, v, 1);
  }
  out[threadIdx.x] = v;
}

extern "C" __global__ void mixed_warp_calls(int* out) {
  if (threadIdx.x & 1) {
    __syncwarp();
    out[threadIdx.x] = 0;
  } else {
    out[threadIdx.x] = static_cast<int>(__ballot_sync(FULL, 1));
  }
}

extern "C" __global__ void absent_lane(int* out) {  // launch with 40 threads: warp 1 has 8 lanes
  out[threadIdx.x] = __shfl_xor_sync(FULL, static_cast<int>(threadIdx.x), 16);
}

extern "C" __global__ void exited_lane(int* out) {
  if (threadIdx.x == 1) return;
  out[threadIdx.x] = __shfl_sync(0xfffffffdu, static_cast<int>(threadIdx.x), 1);
}

// ---- WMMA: one warp, D = 2·(A·B + C) for a 16×16×16 tile, D stored column-major ----------------
// A (16, lda) and B (16, ldb) are read row- or column-major as the fragment's layout says; the
// factor 2 is applied element by element to the accumulator (the same operation on every element:
// the only kind that is defined when the entries a lane holds are unspecified).
template <class T, class LA, class LB>
__global__ void wmma_gemm(const T* a, const T* b, const float* c, float* d, int lda, int ldb,
                          int ldc) {
  using namespace nvcuda;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, T, LA> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, T, LB> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
  wmma::load_matrix_sync(fa, a, lda);
  wmma::load_matrix_sync(fb, b, ldb);
  wmma::load_matrix_sync(fc, c, ldc, wmma::mem_row_major);
  wmma::mma_sync(fc, fa, fb, fc);
  for (int i = 0; i < fc.num_elements; ++i) fc.x[i] *= 2.0f;
  wmma::store_matrix_sync(d, fc, 16, wmma::mem_col_major);
}

// Two products accumulated into one fragment that starts at zero, through shared memory: the
// warp stages A from global memory, __syncwarp, loads it from shared memory.
extern "C" __global__ void wmma_chain(const __half* a, const __half* b, float* d) {
  using namespace nvcuda;
  __shared__ __align__(32) __half sa[16 * 24];
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, 0.0f);
  for (int step = 0; step < 2; ++step) {
    for (int e = threadIdx.x; e < 256; e += 32) sa[(e / 16) * 24 + e % 16] = a[step * 256 + e];
    __syncwarp();
    wmma::load_matrix_sync(fa, sa, 24);
    wmma::load_matrix_sync(fb, b + step * 256, 16);
    wmma::mma_sync(acc, fa, fb, acc);
    __syncwarp();  // every lane has loaded sa before the next step overwrites it
  }
  wmma::store_matrix_sync(d, acc, 16, wmma::mem_row_major);
}

// Undefined on a GPU (alignment, ldm, divergent arguments, a partial warp): the emulator fails.
extern "C" __global__ void wmma_misuse(const __half* a, float* d, int what) {
  using namespace nvcuda;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
  const __half* p = a;
  unsigned ldm = 16;
  if (what == 0) p = a + 1;                     // 2 bytes off a 32-byte boundary
  if (what == 1) ldm = 12;                      // 24 bytes
  if (what == 2) p = a + 16 * (threadIdx.x & 1);  // lanes disagree
  wmma::load_matrix_sync(fa, p, ldm);
  d[threadIdx.x] = __half2float(fa.x[0]);
}
