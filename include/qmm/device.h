// Devices as qmm sees them: for `qmm info` and for reports.
#pragma once

#include <cstdint>
#include <string>

#include "qmm/dtype.h"

namespace qmm {

struct DeviceInfo {
  Device device;
  std::string name;              ///< e.g. "NVIDIA H100 80GB HBM3", or the CPU model name
  int multiprocessors = 0;       ///< SMs (CPU: hardware threads)
  int compute_capability = 0;    ///< e.g. 90 (CPU: 0)
  std::int64_t l2_bytes = 0;     ///< last-level cache (CPU: 0 when unknown)
  std::int64_t memory_bytes = 0; ///< device memory (CPU: physical RAM)
  double peak_bandwidth_gbs = 0; ///< from the memory clock and bus width (CPU: 0, unknown)
  int max_shared_per_block = 0;  ///< opt-in shared memory per block, bytes (CPU: 0)
};

/// Number of CUDA devices visible (0 on CPU-only builds or machines).
int cuda_device_count();
DeviceInfo device_info(const Device& device);

}  // namespace qmm
