// Split-K workspace: one zero-initialised device buffer per (device, stream), grown on demand
// and reused by every later call, so the hot path never allocates and stays capturable in a CUDA
// graph once the buffer exists (growing it during a capture is reported as an error).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

namespace qmm::detail {

/// What a workspace holds. Each purpose has its own buffer: qmv_mma keeps counters that must be
/// zero between calls, which another kernel's scratch data would break.
enum class WorkspacePurpose { mma_stream_k, column_accumulators };

/// At least `bytes` of zero-initialised device memory for `stream` and `purpose`. Kernels that
/// keep counters in it must leave them at zero when they finish.
void* stream_workspace(cudaStream_t stream, WorkspacePurpose purpose, std::size_t bytes);

}  // namespace qmm::detail
