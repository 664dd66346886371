// The CUDA backend's entry points for the op front end: dispatch, then launch.
#include <cuda_runtime.h>

#include <algorithm>

#include "src/core/runtime.h"
#include "src/cuda/check.h"
#include "src/cuda/dispatch.h"
#include "src/cuda/kernels.h"
#include "src/cuda/stream_k.cuh"
#include "src/format/affine.h"

namespace qmm::detail {
namespace {

cuda_dispatch::ProblemShape shape_of(const MatmulProblem& p) {
  cuda_dispatch::ProblemShape s;
  s.M = p.M;
  s.N = p.N;
  s.K = p.K;
  s.bits = p.w.bits;
  s.group_size = p.w.group_size;
  s.transpose = p.transpose;
  s.x_dtype = p.x_dtype;
  s.w_dtype = p.w.dtype;
  return s;
}

/// QMM_CUDA_SM90A: CMake saw 90a in CMAKE_CUDA_ARCHITECTURES (qmv_mma's wgmma path is compiled).
constexpr bool build_has_sm90a_code() {
#if defined(QMM_CUDA_SM90A)
  return true;
#else
  return false;
#endif
}

cuda_dispatch::DeviceShape current_device() {
  int device = 0;
  QMM_CUDA_CHECK(cudaGetDevice(&device));
  static int cached_device = -1;
  static cuda_dispatch::DeviceShape cached;
  if (device != cached_device) {
    QMM_CUDA_CHECK(cudaDeviceGetAttribute(&cached.multiprocessors, cudaDevAttrMultiProcessorCount, device));
    int major = 0, minor = 0;
    QMM_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    QMM_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
    cached.compute_capability = major * 10 + minor;
    cached.sm90a_code = build_has_sm90a_code();
    cached_device = device;
  }
  return cached;
}

/// qmv_mma loads x and 4/8-bit chunks with 16-byte vector loads: the bases must allow it.
bool mma_aligned(const MatmulProblem& p) {
  const auto x = reinterpret_cast<std::uintptr_t>(p.x);
  const auto w = reinterpret_cast<std::uintptr_t>(p.w.w_q);
  return x % 16 == 0 && w % 16 == 0 && reinterpret_cast<std::uintptr_t>(p.w.scales) % 2 == 0 &&
         reinterpret_cast<std::uintptr_t>(p.w.biases) % 2 == 0;
}

/// qmv_staged copies x and w_q in 16-byte and scales/biases in 4-byte cp.async units.
bool staged_aligned(const MatmulProblem& p) {
  return mma_aligned(p) && reinterpret_cast<std::uintptr_t>(p.w.scales) % 4 == 0 &&
         reinterpret_cast<std::uintptr_t>(p.w.biases) % 4 == 0;
}

/// qmv_tma: the TMA reads w_q from a 16-byte aligned base; each row's scales and biases of a
/// 256-value slice (2 * 256 / group_size bytes) are copied with one cp.async of that size.
bool tma_aligned(const MatmulProblem& p) {
  const auto copy = static_cast<std::uintptr_t>(2 * cuda_dispatch::kTmaItemValues / p.w.group_size);
  return mma_aligned(p) && reinterpret_cast<std::uintptr_t>(p.w.scales) % copy == 0 &&
         reinterpret_cast<std::uintptr_t>(p.w.biases) % copy == 0;
}

cuda_dispatch::KernelConfig config_for(const MatmulProblem& p, const std::string& kernel) {
  using cuda_dispatch::Family;
  const auto shape = shape_of(p);
  const auto device = current_device();
  if (!kernel.empty()) {
    auto c = cuda_dispatch::forced(kernel, shape, device);
    if (c.family == Family::qmv_staged && !staged_aligned(p)) {
      throw Error("[quantized_matmul] kernel " + kernel +
                  " needs 16-byte aligned x and w_q and 4-byte aligned scales and biases");
    }
    if (c.family == Family::qmv_tma && !tma_aligned(p)) {
      throw Error("[quantized_matmul] kernel " + kernel +
                  " needs 16-byte aligned x and w_q and scales and biases aligned to 512 / group_size bytes");
    }
    if (c.family == Family::qmv_mma && !mma_aligned(p)) {
      throw Error("[quantized_matmul] kernel " + kernel + " needs 16-byte aligned x and w_q");
    }
    return c;
  }
  auto c = cuda_dispatch::choose(shape, device);
  // Misaligned views (e.g. a slice of a larger buffer) step down to a kernel that can read them.
  if (c.family == Family::qmv_mma && !mma_aligned(p)) c.family = Family::qmv_warp_rows;
  return c;
}

void launch(const MatmulProblem& p, const cuda_dispatch::KernelConfig& c, cudaStream_t stream) {
  switch (c.family) {
    case cuda_dispatch::Family::qmv_tma:
      return launch_qmv_tma(p, c, stream);
    case cuda_dispatch::Family::qmv_staged:
      return launch_qmv_staged(p, c, stream);
    case cuda_dispatch::Family::qmv_mma:
      return launch_qmv_mma(p, c, stream);
    case cuda_dispatch::Family::qmv_warp_rows:
      return launch_qmv_warp_rows(p, stream);
    case cuda_dispatch::Family::qvm_columns:
      return launch_qvm_columns(p, stream);
  }
}

}  // namespace

void cuda_quantized_matmul(const std::vector<MatmulProblem>& problems, Stream stream, const std::string& kernel) {
  auto s = static_cast<cudaStream_t>(stream.handle);
  // Resolve every configuration first, so a forced kernel that cannot run throws before any
  // output is written.
  std::vector<cuda_dispatch::KernelConfig> configs;
  configs.reserve(problems.size());
  for (const auto& p : problems) configs.push_back(config_for(p, kernel));
  for (std::size_t i = 0; i < problems.size(); ++i) launch(problems[i], configs[i], s);
}

std::vector<std::string> cuda_kernel_names(const std::string& op) {
  if (op == "quantized_matmul") return cuda_dispatch::kernel_names(build_has_sm90a_code());
  return {"cuda_elementwise"};
}

LaunchInfo cuda_describe(const std::vector<MatmulProblem>& problems, const std::string& kernel) {
  const MatmulProblem& p = problems.front();
  const auto c = config_for(p, kernel);
  const auto device = current_device();
  LaunchInfo info;
  info.kernel = c.name();
  int dev = 0;
  QMM_CUDA_CHECK(cudaGetDevice(&dev));
  info.device = Device::cuda(dev);
  info.multiprocessors = device.multiprocessors;
  const std::int64_t weight_bytes = p.w.rows * format::packed_words(p.w.cols, p.w.bits) * 4 +
                                    2 * p.w.rows * (p.w.cols / p.w.group_size) *
                                        static_cast<std::int64_t>(itemsize(p.w.dtype));
  const auto batches = static_cast<std::int64_t>(problems.size());
  info.min_weight_bytes = weight_bytes * batches;
  switch (c.family) {
    case cuda_dispatch::Family::qmv_tma:
    case cuda_dispatch::Family::qmv_staged:
    case cuda_dispatch::Family::qmv_mma: {
      info.grid[0] = c.blocks;
      info.block_threads =
          c.family == cuda_dispatch::Family::qmv_tma ? cuda_dispatch::kTmaThreads : cuda_dispatch::mma_block_threads(c);
      info.blocks_per_sm = c.family == cuda_dispatch::Family::qmv_tma      ? qmv_tma_blocks_per_sm(p, c)
                           : c.family == cuda_dispatch::Family::qmv_staged ? qmv_staged_blocks_per_sm(p, c)
                                                                            : qmv_mma_blocks_per_sm(p, c);
      info.workspace_bytes = c.cluster > 0 ? 0 : qmm::cuda::stream_k::workspace_bytes(p, c);
      const std::int64_t passes = (p.M + 8 * c.token_tiles - 1) / (8 * c.token_tiles);
      info.weight_bytes = weight_bytes * batches * passes;
      // Stream-K: a row block is split over ceil(blocks / row blocks) blocks on average.
      const std::int64_t row_blocks = (p.N + cuda_dispatch::kMmaRowsPerBlock - 1) / cuda_dispatch::kMmaRowsPerBlock;
      info.split_k = c.cluster > 0 ? c.cluster
                                   : static_cast<int>(std::max<std::int64_t>(1, (c.blocks + row_blocks - 1) / row_blocks));
      break;
    }
    case cuda_dispatch::Family::qmv_warp_rows:
      info.grid[0] = static_cast<int>((p.N * 32 + 255) / 256);
      info.block_threads = 256;
      info.blocks_per_sm = 8;
      info.weight_bytes = weight_bytes * batches * ((p.M + 7) / 8);
      break;
    case cuda_dispatch::Family::qvm_columns:
      info.grid[0] = static_cast<int>((p.N + 127) / 128);
      info.grid[1] = static_cast<int>(std::max<std::int64_t>(1, std::min<std::int64_t>(64, p.K / 64)));
      info.block_threads = 128;
      info.blocks_per_sm = 16;
      info.weight_bytes = weight_bytes * batches * ((p.M + 7) / 8);
      info.workspace_bytes = sizeof(float) * 8 * static_cast<std::size_t>(p.N);
      break;
  }
  return info;
}

}  // namespace qmm::detail
