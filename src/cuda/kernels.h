// Launchers of the CUDA quantized_matmul kernel families (one .cu file each), called by
// src/cuda/backend.cu after dispatch. Each takes one validated problem and a stream.
#pragma once

#include <cuda_runtime.h>

#include "src/core/problem.h"
#include "src/cuda/dispatch.h"

namespace qmm::detail {

/// Tensor cores, weight-stationary, stream-K (qmv_mma_kernels.cu).
void launch_qmv_mma(const MatmulProblem& p, const cuda_dispatch::KernelConfig& config, cudaStream_t stream);
/// Bytes of split-K workspace qmv_mma needs for this problem and configuration.
std::size_t qmv_mma_workspace_bytes(const MatmulProblem& p, const cuda_dispatch::KernelConfig& config);
/// Resident qmv_mma blocks per SM for this problem's bits/dtype/token tiles (occupancy API).
int qmv_mma_blocks_per_sm(const MatmulProblem& p, const cuda_dispatch::KernelConfig& config);

/// CUDA cores, any dtype mix, transpose=true (simple_kernels.cu).
void launch_qmv_warp_rows(const MatmulProblem& p, cudaStream_t stream);
/// CUDA cores, transpose=false (simple_kernels.cu).
void launch_qvm_columns(const MatmulProblem& p, cudaStream_t stream);

}  // namespace qmm::detail
