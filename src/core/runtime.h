// The small runtime surface the front end needs from the CUDA backend. Implemented in
// src/cuda/runtime.cu when the build has CUDA, and in src/core/runtime_cpu_only.cpp otherwise
// (where every CUDA request fails with a clear error).
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "qmm/device.h"
#include "qmm/dtype.h"
#include "qmm/ops.h"
#include "src/core/problem.h"

namespace qmm::detail {

bool cuda_runtime_available();

/// Makes `device` the current CUDA device for its lifetime (ops run on their inputs' device,
/// whatever the caller's current device is), and restores the previous one.
class CudaDeviceScope {
 public:
  explicit CudaDeviceScope(int device);
  ~CudaDeviceScope();
  CudaDeviceScope(const CudaDeviceScope&) = delete;
  CudaDeviceScope& operator=(const CudaDeviceScope&) = delete;

 private:
  int previous_ = -1;
};
void* cuda_malloc(std::size_t bytes, int device);
void cuda_free(void* ptr, int device) noexcept;
/// Synchronous copy between any two of host and CUDA memory.
void cuda_copy(void* dst, const void* src, std::size_t bytes);
void cuda_synchronize(Stream stream);

// CUDA implementations of the ops (validated problems; `kernel` is "" or a forced name).
void cuda_quantize(const QuantizeProblem& p, Stream stream, const std::string& kernel);
void cuda_dequantize(const DequantizeProblem& p, Stream stream, const std::string& kernel);
void cuda_quantized_matmul(const std::vector<MatmulProblem>& problems, Stream stream,
                           const std::string& kernel);
std::vector<std::string> cuda_kernel_names(const std::string& op);
LaunchInfo cuda_describe(const std::vector<MatmulProblem>& problems, const std::string& kernel);
int cuda_device_count();
DeviceInfo cuda_device_info(int device);

}  // namespace qmm::detail
