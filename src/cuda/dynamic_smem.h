// Opting a kernel in to more than 48 KB of dynamic shared memory, once per (kernel, device).
#pragma once

#include <cuda_runtime.h>

#include <mutex>
#include <set>
#include <utility>

#include "src/cuda/check.h"

namespace qmm::detail {

/// Allows `fn` up to `bytes` of dynamic shared memory on the current device (cached: the
/// attribute is set on the first call per kernel and device only; later calls must not ask for more).
inline void allow_dynamic_smem(const void* fn, int bytes) {
  int device = 0;
  QMM_CUDA_CHECK(cudaGetDevice(&device));
  static std::mutex mutex;
  static std::set<std::pair<const void*, int>> done;
  std::lock_guard<std::mutex> lock(mutex);
  if (done.count({fn, device}) != 0) return;
  QMM_CUDA_CHECK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  done.insert({fn, device});
}

}  // namespace qmm::detail
