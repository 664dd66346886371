// CUDA runtime services for the front end: device queries, memory, copies, synchronisation, and
// the per-stream workspace used by split-K kernels.
#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <tuple>
#include <utility>

#include "src/core/runtime.h"
#include "src/cuda/check.h"
#include "src/cuda/workspace.h"

namespace qmm::detail {

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // no driver or no device: not an error, just no CUDA
    return 0;
  }
  return n;
}

bool cuda_runtime_available() {
  static const bool available = cuda_device_count() > 0;
  return available;
}

CudaDeviceScope::CudaDeviceScope(int device) {
  int current = 0;
  QMM_CUDA_CHECK(cudaGetDevice(&current));
  if (current != device) {
    QMM_CUDA_CHECK(cudaSetDevice(device));
    previous_ = current;
  }
}

CudaDeviceScope::~CudaDeviceScope() {
  if (previous_ >= 0) (void)cudaSetDevice(previous_);
}

void* cuda_malloc(std::size_t bytes, int device) {
  int previous = 0;
  QMM_CUDA_CHECK(cudaGetDevice(&previous));
  QMM_CUDA_CHECK(cudaSetDevice(device));
  void* p = nullptr;
  const cudaError_t err = cudaMalloc(&p, bytes);
  QMM_CUDA_CHECK(cudaSetDevice(previous));
  QMM_CUDA_CHECK(err);
  return p;
}

void cuda_free(void* ptr, int /*device*/) noexcept { cudaFree(ptr); }

void cuda_copy(void* dst, const void* src, std::size_t bytes) {
  QMM_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault));
}

void cuda_synchronize(Stream stream) {
  if (!cuda_runtime_available()) return;
  QMM_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream.handle)));
}

DeviceInfo cuda_device_info(int device) {
  cudaDeviceProp prop{};
  QMM_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  DeviceInfo d;
  d.device = Device::cuda(device);
  d.name = prop.name;
  d.multiprocessors = prop.multiProcessorCount;
  d.compute_capability = prop.major * 10 + prop.minor;
  d.l2_bytes = prop.l2CacheSize;
  d.memory_bytes = static_cast<std::int64_t>(prop.totalGlobalMem);
  int mem_clock_khz = 0;
  int bus_width = 0;
  QMM_CUDA_CHECK(cudaDeviceGetAttribute(&mem_clock_khz, cudaDevAttrMemoryClockRate, device));
  QMM_CUDA_CHECK(cudaDeviceGetAttribute(&bus_width, cudaDevAttrGlobalMemoryBusWidth, device));
  d.peak_bandwidth_gbs = 2.0 * mem_clock_khz * 1e3 * (bus_width / 8.0) / 1e9;  // DDR: two transfers a clock
  d.max_shared_per_block = static_cast<int>(prop.sharedMemPerBlockOptin);
  return d;
}

// ---- workspace ------------------------------------------------------------------------------

namespace {
struct WorkspaceEntry {
  void* ptr = nullptr;
  std::size_t bytes = 0;
};
std::mutex workspace_mutex;
std::map<std::tuple<int, cudaStream_t, WorkspacePurpose>, WorkspaceEntry> workspaces;
}  // namespace

void* stream_workspace(cudaStream_t stream, WorkspacePurpose purpose, std::size_t bytes) {
  int device = 0;
  QMM_CUDA_CHECK(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(workspace_mutex);
  WorkspaceEntry& e = workspaces[{device, stream, purpose}];
  if (e.bytes >= bytes) return e.ptr;
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  QMM_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  if (capture != cudaStreamCaptureStatusNone) {
    throw std::runtime_error(
        "[quantized_matmul] this call needs " + std::to_string(bytes) +
        " bytes of split-K workspace on a stream that is being captured; run the same call once "
        "on that stream before capturing so the workspace is allocated outside the capture");
  }
  if (e.ptr != nullptr) {
    QMM_CUDA_CHECK(cudaStreamSynchronize(stream));  // the old buffer may still be in use
    QMM_CUDA_CHECK(cudaFree(e.ptr));
    e = {};
  }
  // Round up so alternating shapes do not reallocate; counters inside must start at zero.
  const std::size_t rounded = (bytes + (1u << 20) - 1) & ~static_cast<std::size_t>((1u << 20) - 1);
  QMM_CUDA_CHECK(cudaMalloc(&e.ptr, rounded));
  QMM_CUDA_CHECK(cudaMemset(e.ptr, 0, rounded));
  e.bytes = rounded;
  return e.ptr;
}

}  // namespace qmm::detail
