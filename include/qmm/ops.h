// qmm's operations, mirroring mlx.core: quantize, dequantize, quantized_matmul in MLX's affine
// format (bits 2, 3, 4, 5, 6, 8; group sizes 32, 64, 128). Each op runs on the device its
// inputs live on. Bad input throws qmm::Error (a std::invalid_argument) whose message starts with
// the op's tag, e.g. "[quantized_matmul] ...", and nothing is written to any output.
#pragma once

#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "qmm/tensor.h"

namespace qmm {

/// Every invalid-input error of qmm.
class Error : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

/// Per-call options.
struct CallOptions {
  /// CUDA stream for CUDA inputs (ignored on the CPU).
  Stream stream{};
  /// Force a kernel configuration by name instead of letting dispatch choose ("" = choose).
  /// `qmm::kernel_names(device, op)` lists the valid names; "reference" forces the fp64
  /// reference on the CPU. CUDA's qmv_mma_m* names take an optional "_b<blocks>" suffix that
  /// fixes the stream-K block count (e.g. "qmv_mma_m8_b264"). An unknown or inapplicable name
  /// throws qmm::Error.
  std::string kernel;
};

struct QuantizedWeights {
  Tensor w_q;     ///< uint32 (..., rows, cols * bits / 32)
  Tensor scales;  ///< same float dtype as w, (..., rows, cols / group_size)
  Tensor biases;  ///< same shape and dtype as scales
};

// ---- quantize -------------------------------------------------------------------------------
/// Quantize the last axis of w (rank >= 2, float dtype) in groups of group_size.
QuantizedWeights quantize(const TensorView& w, int group_size = 64, int bits = 4,
                          const CallOptions& options = {});
/// Same, into caller-provided outputs (shapes as quantize_output_shapes gives).
void quantize_into(const TensorView& w, const TensorView& w_q, const TensorView& scales,
                   const TensorView& biases, int group_size = 64, int bits = 4,
                   const CallOptions& options = {});

// ---- dequantize -----------------------------------------------------------------------------
/// Dequantize to `dtype` (default: the scales' dtype), shape (..., rows, cols).
Tensor dequantize(const TensorView& w_q, const TensorView& scales, const TensorView& biases,
                  int group_size = 64, int bits = 4, std::optional<Dtype> dtype = std::nullopt,
                  const CallOptions& options = {});
void dequantize_into(const TensorView& w_q, const TensorView& scales, const TensorView& biases,
                     const TensorView& out, int group_size = 64, int bits = 4,
                     const CallOptions& options = {});

// ---- quantized_matmul -----------------------------------------------------------------------
/// x @ dequantize(w).T (transpose=true, w is (..., N, K)) or x @ dequantize(w)
/// (transpose=false, w is (..., K, N)). Output dtype: promote(x.dtype, scales.dtype). Leading
/// batch dims broadcast as in MLX; a 1-D x is a single row.
Tensor quantized_matmul(const TensorView& x, const TensorView& w_q, const TensorView& scales,
                        const TensorView& biases, bool transpose = true, int group_size = 64,
                        int bits = 4, const CallOptions& options = {});
void quantized_matmul_into(const TensorView& x, const TensorView& w_q, const TensorView& scales,
                           const TensorView& biases, const TensorView& out, bool transpose = true,
                           int group_size = 64, int bits = 4, const CallOptions& options = {});
/// The output shape and dtype quantized_matmul would produce (validates like the op).
std::pair<Shape, Dtype> quantized_matmul_output(const TensorView& x, const TensorView& w_q,
                                                const TensorView& scales, const TensorView& biases,
                                                bool transpose = true, int group_size = 64,
                                                int bits = 4);

// ---- kernels and devices --------------------------------------------------------------------
/// Names of the kernel configurations `CallOptions::kernel` accepts for an op
/// ("quantize", "dequantize", "quantized_matmul") on a device.
std::vector<std::string> kernel_names(const Device& device, const std::string& op);
/// Whether `name` is accepted by CallOptions::kernel for `op` on `device`: a name of
/// kernel_names, a tensor-core tile name with a "_b<blocks>" suffix, a qmv_mma name (tile or
/// family) with a "_c<cluster>" suffix, or any of those qmv_mma names followed by "_wg" (wgmma
/// MMAs). The backend checks the numbers, and the device and build for "_wg", when the call runs.
bool is_kernel_name(const Device& device, const std::string& op, const std::string& name);

/// How a quantized_matmul call would run (for reports such as `qmm bench`, and for tests).
/// Same arguments as the op; `options.kernel` forces a configuration as in the op.
struct LaunchInfo {
  std::string kernel;               ///< configuration name (one of kernel_names)
  Device device;
  int grid[3] = {1, 1, 1};          ///< CUDA grid of the main kernel (CPU: {threads, 1, 1})
  int block_threads = 1;            ///< threads per block (CPU: 1)
  int shared_bytes = 0;             ///< dynamic + static shared memory per block
  int blocks_per_sm = 0;            ///< resident blocks per SM at this configuration (occupancy)
  int multiprocessors = 0;          ///< SMs of the device (CPU: worker threads)
  int split_k = 1;                  ///< K slices reduced in fp32 (1 = no split)
  std::int64_t weight_bytes = 0;    ///< bytes of w_q + scales + biases the call reads (all passes)
  std::int64_t min_weight_bytes = 0;  ///< the same bytes counted once (the floor)
  std::size_t workspace_bytes = 0;  ///< device workspace the call uses (allocated once per stream)
  /// blocks / (multiprocessors * blocks_per_sm): how many full waves the grid needs.
  double waves() const;
};
LaunchInfo describe_quantized_matmul(const TensorView& x, const TensorView& w_q, const TensorView& scales,
                                     const TensorView& biases, bool transpose = true, int group_size = 64,
                                     int bits = 4, const CallOptions& options = {});

/// Whether this build has the CUDA backend and a CUDA device is present.
bool cuda_available();
/// Blocks until all work queued on `stream` is done (no-op on CPU builds).
void synchronize(Stream stream = {});

}  // namespace qmm
