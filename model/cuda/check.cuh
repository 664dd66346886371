// Checked CUDA calls for qmm_model's kernels: a failure throws qmm::Error naming the call.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "qmm/ops.h"

namespace qmm::model::cuda {

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* what, const char* file, int line) {
  throw Error(std::string("[model] CUDA error in ") + what + " (" + file + ":" + std::to_string(line) +
              "): " + cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
}

}  // namespace qmm::model::cuda

#define QMM_MODEL_CUDA_CHECK(call)                                                   \
  do {                                                                               \
    const cudaError_t qmm_model_err_ = (call);                                       \
    if (qmm_model_err_ != cudaSuccess) {                                             \
      ::qmm::model::cuda::throw_cuda_error(qmm_model_err_, #call, __FILE__, __LINE__); \
    }                                                                                \
  } while (0)
