// CUDA-core kernels for what the tensor-core family does not cover: any mix of activation and
// scale dtypes with transpose=true (qmv_warp_rows), and transpose=false (qvm_columns). Simple,
// fp32 throughout, every bit width through the shared format header.
#include <cuda_runtime.h>

#include <algorithm>

#include "src/cuda/check.h"
#include "src/cuda/dtype_cuda.cuh"
#include "src/cuda/kernels.h"
#include "src/cuda/workspace.h"
#include "src/format/affine.h"

namespace qmm::detail {
namespace {

constexpr int kTokensPerPass = 8;

/// One warp per weight row n and pass of up to 8 tokens: lanes stride over K, so a warp reads
/// its row once per pass in coalesced words; fp32 accumulation, warp-shuffle reduction.
__global__ void qmv_warp_rows_kernel(MatmulProblem p, std::int64_t m0) {
  const int lane = threadIdx.x & 31;
  const std::int64_t n = (static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  if (n >= p.N) return;
  const auto& w = p.w;
  const int tokens = static_cast<int>((p.M - m0 < kTokensPerPass ? p.M - m0 : kTokensPerPass));
  const std::uint32_t* row = w.w_q + n * format::packed_words(p.K, w.bits);
  const std::int64_t groups = p.K / w.group_size;
  float acc[kTokensPerPass] = {};
  for (std::int64_t k = lane; k < p.K; k += 32) {
    const std::int64_t g = n * groups + k / w.group_size;
    const float s = cuda::load_as_float(w.scales, w.dtype, g);
    const float b = cuda::load_as_float(w.biases, w.dtype, g);
    const float v = s * static_cast<float>(format::extract(row, k, w.bits)) + b;
#pragma unroll
    for (int t = 0; t < kTokensPerPass; ++t) {
      if (t < tokens) acc[t] += cuda::load_as_float(p.x, p.x_dtype, (m0 + t) * p.K + k) * v;
    }
  }
#pragma unroll
  for (int t = 0; t < kTokensPerPass; ++t) {
    float v = acc[t];
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (lane == 0 && t < tokens) cuda::store_from_float(p.out, p.out_dtype, (m0 + t) * p.N + n, v);
  }
}

/// transpose=false: out[m, n] = sum_k x[m, k] * W[k, n], W packed along n. One thread per column
/// n and K slice (grid.y); fp32 partial sums are added into a zeroed fp32 buffer with atomics,
/// then converted. Column-parallel, so a warp reads consecutive packed words of one W row.
__global__ void qvm_columns_kernel(MatmulProblem p, std::int64_t m0, float* acc_out, std::int64_t k_per_slice) {
  const std::int64_t n = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= p.N) return;
  const auto& w = p.w;
  const int tokens = static_cast<int>((p.M - m0 < kTokensPerPass ? p.M - m0 : kTokensPerPass));
  const std::int64_t words = format::packed_words(p.N, w.bits);
  const std::int64_t groups = p.N / w.group_size;
  const std::int64_t k0 = blockIdx.y * k_per_slice;
  const std::int64_t k1 = k0 + k_per_slice < p.K ? k0 + k_per_slice : p.K;
  float acc[kTokensPerPass] = {};
  for (std::int64_t k = k0; k < k1; ++k) {
    const std::int64_t g = k * groups + n / w.group_size;
    const float s = cuda::load_as_float(w.scales, w.dtype, g);
    const float b = cuda::load_as_float(w.biases, w.dtype, g);
    const float v = s * static_cast<float>(format::extract(w.w_q + k * words, n, w.bits)) + b;
#pragma unroll
    for (int t = 0; t < kTokensPerPass; ++t) {
      if (t < tokens) acc[t] += cuda::load_as_float(p.x, p.x_dtype, (m0 + t) * p.K + k) * v;
    }
  }
#pragma unroll
  for (int t = 0; t < kTokensPerPass; ++t) {
    if (t < tokens) atomicAdd(&acc_out[t * p.N + n], acc[t]);
  }
}

__global__ void convert_rows_kernel(const float* acc, void* out, Dtype dtype, std::int64_t count) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) cuda::store_from_float(out, dtype, i, acc[i]);
}

}  // namespace

void launch_qmv_warp_rows(const MatmulProblem& p, cudaStream_t stream) {
  constexpr int kThreads = 256;  // 8 rows per block
  const auto blocks = static_cast<unsigned>((p.N * 32 + kThreads - 1) / kThreads);
  for (std::int64_t m0 = 0; m0 < p.M; m0 += kTokensPerPass) {
    qmv_warp_rows_kernel<<<blocks, kThreads, 0, stream>>>(p, m0);
    QMM_CUDA_CHECK_LAUNCH();
  }
}

void launch_qvm_columns(const MatmulProblem& p, cudaStream_t stream) {
  constexpr int kThreads = 128;
  const std::int64_t slices = std::max<std::int64_t>(1, std::min<std::int64_t>(64, p.K / 64));
  const std::int64_t k_per_slice = (p.K + slices - 1) / slices;
  float* acc = static_cast<float*>(stream_workspace(stream, WorkspacePurpose::column_accumulators, sizeof(float) * kTokensPerPass * p.N));
  const dim3 grid(static_cast<unsigned>((p.N + kThreads - 1) / kThreads), static_cast<unsigned>(slices));
  for (std::int64_t m0 = 0; m0 < p.M; m0 += kTokensPerPass) {
    const std::int64_t tokens = std::min<std::int64_t>(kTokensPerPass, p.M - m0);
    QMM_CUDA_CHECK(cudaMemsetAsync(acc, 0, sizeof(float) * tokens * p.N, stream));
    qvm_columns_kernel<<<grid, kThreads, 0, stream>>>(p, m0, acc, k_per_slice);
    QMM_CUDA_CHECK_LAUNCH();
    const std::int64_t count = tokens * p.N;
    char* out = static_cast<char*>(p.out) + m0 * p.N * static_cast<std::int64_t>(itemsize(p.out_dtype));
    convert_rows_kernel<<<static_cast<unsigned>((count + 255) / 256), 256, 0, stream>>>(acc, out, p.out_dtype, count);
    QMM_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace qmm::detail
