// quantize and dequantize on CUDA: the per-group rule of src/format/affine.h, one thread per
// group (quantize) or per packed word range (dequantize). Bit-identical to the CPU backend
// because both run the same float32 operations from the shared format header.
#include <cuda_runtime.h>

#include "src/core/runtime.h"
#include "src/cuda/check.h"
#include "src/cuda/dtype_cuda.cuh"
#include "src/format/affine.h"

namespace qmm::detail {
namespace {

__global__ void quantize_groups_kernel(QuantizeProblem p) {
  const std::int64_t groups_per_row = p.cols / p.group_size;
  const std::int64_t total = p.rows * groups_per_row;
  for (std::int64_t gid = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; gid < total;
       gid += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t r = gid / groups_per_row;
    const std::int64_t g = gid % groups_per_row;
    const std::int64_t base = r * p.cols + g * p.group_size;
    // A group is group_size*bits/32 whole words: this thread owns them, no atomics needed.
    const std::int64_t words_per_group = p.group_size * p.bits / 32;
    std::uint32_t* gq = p.w_q + r * format::packed_words(p.cols, p.bits) + g * words_per_group;
    const auto value = [&](int i) { return cuda::load_as_float(p.w, p.dtype, base + i); };
    const format::GroupParams gp = format::quantize_group(value, p.group_size, p.bits, gq);
    cuda::store_from_float(p.scales, p.dtype, gid, gp.scale);
    cuda::store_from_float(p.biases, p.dtype, gid, gp.bias);
  }
}

__global__ void dequantize_kernel(DequantizeProblem p) {
  const auto& w = p.w;
  const std::int64_t total = w.rows * w.cols;
  const std::int64_t words = format::packed_words(w.cols, w.bits);
  const std::int64_t groups = w.cols / w.group_size;
  const Dtype storage = w.dtype;
  const auto round_storage = [storage](float v) { return cuda::round_to(storage, v); };
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t r = i / w.cols;
    const std::int64_t c = i % w.cols;
    const std::int64_t g = r * groups + c / w.group_size;
    const std::uint32_t q = format::extract(w.w_q + r * words, c, w.bits);
    const float v = format::affine_dequantize_value(q, cuda::load_as_float(w.scales, storage, g),
                                                    cuda::load_as_float(w.biases, storage, g), round_storage);
    cuda::store_from_float(p.out, p.out_dtype, i, v);
  }
}

int grid_for(std::int64_t work, int threads) {
  const std::int64_t blocks = (work + threads - 1) / threads;
  return static_cast<int>(blocks < 65536 ? (blocks > 0 ? blocks : 1) : 65536);
}

}  // namespace

void cuda_quantize(const QuantizeProblem& p, Stream stream, const std::string& /*kernel*/) {
  constexpr int kThreads = 128;
  const std::int64_t groups = p.rows * (p.cols / p.group_size);
  quantize_groups_kernel<<<grid_for(groups, kThreads), kThreads, 0, static_cast<cudaStream_t>(stream.handle)>>>(p);
  QMM_CUDA_CHECK_LAUNCH();
}

void cuda_dequantize(const DequantizeProblem& p, Stream stream, const std::string& /*kernel*/) {
  constexpr int kThreads = 256;
  dequantize_kernel<<<grid_for(p.w.rows * p.w.cols, kThreads), kThreads, 0,
                      static_cast<cudaStream_t>(stream.handle)>>>(p);
  QMM_CUDA_CHECK_LAUNCH();
}

}  // namespace qmm::detail
