// reduce.cu — the reductions around the attention kernels, and the patterns those kernels reuse.
//
// row_dot_{f32,f16,bf16}(a, b, out, rows, cols): out[r] = Σ_c a[r, c]·b[r, c] in float32 for
//   row-major (rows, cols) inputs — the backward's preprocessing D = rowsum(dO ∘ O). Launch with
//   block (32, W) and grid ⌈rows / W⌉: one warp per row, lanes stride over the columns, then a
//   butterfly of __shfl_xor_sync leaves the sum in every lane.
// block_sum_f32(x, out, n): *out += Σ_i x[i]. Launch with a power-of-two block of 32..1024
//   threads and any grid: a grid-stride loop, a tree in shared memory with __syncthreads, the last
//   32 partial sums by __shfl_down_sync, one atomicAdd per block (*out must start at 0).
//
// Compiled by nvcc/NVRTC for the GPU and by tests/cuda_emu for the CPU: only what the shim
// provides is used (no inline PTX).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

template <class T>
__device__ __forceinline__ void row_dot(const T* __restrict__ a, const T* __restrict__ b,
                                        float* __restrict__ out, int rows, int cols) {
  const int row = blockIdx.x * blockDim.y + threadIdx.y;
  if (row >= rows) return;  // the whole warp leaves together
  const long long base = static_cast<long long>(row) * cols;
  float acc = 0.0f;
  for (int c = threadIdx.x; c < cols; c += 32) acc += to_float(a[base + c]) * to_float(b[base + c]);
  acc = warp_sum(acc);
  if (threadIdx.x == 0) out[row] = acc;
}

}  // namespace

extern "C" __global__ void row_dot_f32(const float* __restrict__ a, const float* __restrict__ b,
                                       float* __restrict__ out, int rows, int cols) {
  row_dot(a, b, out, rows, cols);
}

extern "C" __global__ void row_dot_f16(const __half* __restrict__ a, const __half* __restrict__ b,
                                       float* __restrict__ out, int rows, int cols) {
  row_dot(a, b, out, rows, cols);
}

extern "C" __global__ void row_dot_bf16(const __nv_bfloat16* __restrict__ a,
                                        const __nv_bfloat16* __restrict__ b,
                                        float* __restrict__ out, int rows, int cols) {
  row_dot(a, b, out, rows, cols);
}

extern "C" __global__ void __launch_bounds__(1024)
    block_sum_f32(const float* __restrict__ x, float* __restrict__ out, long long n) {
  __shared__ float partial[1024];
  const int t = threadIdx.x;
  float acc = 0.0f;
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + t; i < n; i += stride) {
    acc += x[i];
  }
  partial[t] = acc;
  __syncthreads();
  for (int half = blockDim.x / 2; half >= 32; half >>= 1) {
    if (t < half) partial[t] += partial[t + half];
    __syncthreads();
  }
  if (t < 32) {
    float v = partial[t];
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    if (t == 0) atomicAdd(out, v);
  }
}
