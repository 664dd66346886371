// Launchers of the CUDA quantized_matmul kernel families (one .cu file each), called by
// src/cuda/backend.cu after dispatch. Each takes one validated problem and a stream.
#pragma once

#include <cuda_runtime.h>

#include "src/core/problem.h"
#include "src/cuda/dispatch.h"

namespace qmm::detail {

/// Tensor cores, weight-stationary, stream-K or (sm_90, config.cluster > 0) cluster split-K
/// (qmv_mma_kernels.cu).
void launch_qmv_mma(const MatmulProblem& p, const cuda_dispatch::KernelConfig& config, cudaStream_t stream);
/// Resident qmv_mma blocks per SM for this problem's bits/dtype/token tiles (occupancy API).
int qmv_mma_blocks_per_sm(const MatmulProblem& p, const cuda_dispatch::KernelConfig& config);

/// Tensor cores, TMA producer warp feeding shared-memory stages, qmv_mma's arithmetic
/// (qmv_tma_kernels.cu). sm_90, K a multiple of 256.
void launch_qmv_tma(const MatmulProblem& p, const cuda_dispatch::KernelConfig& config, cudaStream_t stream);
/// Resident qmv_tma blocks per SM (occupancy API, with its dynamic shared memory).
int qmv_tma_blocks_per_sm(const MatmulProblem& p, const cuda_dispatch::KernelConfig& config);

/// Tensor cores, cp.async pipeline through shared memory, scale and bias applied in fp32 after
/// the MMA, same stream-K split (qmv_staged_kernels.cu). 4- and 8-bit weights.
void launch_qmv_staged(const MatmulProblem& p, const cuda_dispatch::KernelConfig& config, cudaStream_t stream);
/// Resident qmv_staged blocks per SM (occupancy API, with its dynamic shared memory).
int qmv_staged_blocks_per_sm(const MatmulProblem& p, const cuda_dispatch::KernelConfig& config);

/// CUDA cores, any dtype mix, transpose=true (simple_kernels.cu).
void launch_qmv_warp_rows(const MatmulProblem& p, cudaStream_t stream);
/// CUDA cores, transpose=false (simple_kernels.cu).
void launch_qvm_columns(const MatmulProblem& p, cudaStream_t stream);

}  // namespace qmm::detail
