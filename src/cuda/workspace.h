// Split-K workspace: one zero-initialised device buffer per (device, stream), grown on demand
// and reused by every later call, so the hot path never allocates and stays capturable in a CUDA
// graph once the buffer exists (growing it during a capture is reported as an error).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

namespace qmm::detail {

/// At least `bytes` of device memory for `stream`. Kernels that use counters in it must leave
/// them at zero when they finish.
void* stream_workspace(cudaStream_t stream, std::size_t bytes);

}  // namespace qmm::detail
