// Every CUDA runtime call in qmm goes through QMM_CUDA_CHECK: a failure throws
// std::runtime_error naming the call, file and line (runtime failures are not invalid input, so
// they are not qmm::Error).
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace qmm::detail {

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* expr, const char* file, int line) {
  throw std::runtime_error(std::string("[cuda] ") + expr + " failed: " + cudaGetErrorName(err) + " (" +
                           cudaGetErrorString(err) + ") at " + file + ":" + std::to_string(line));
}

}  // namespace qmm::detail

#define QMM_CUDA_CHECK(expr)                                                         \
  do {                                                                               \
    const cudaError_t qmm_err_ = (expr);                                             \
    if (qmm_err_ != cudaSuccess) ::qmm::detail::throw_cuda_error(qmm_err_, #expr, __FILE__, __LINE__); \
  } while (0)

/// After a kernel launch: launch-configuration errors surface here.
#define QMM_CUDA_CHECK_LAUNCH() QMM_CUDA_CHECK(cudaGetLastError())
