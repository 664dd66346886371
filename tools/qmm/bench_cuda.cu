// See bench_cuda.h. Every CUDA and cuBLAS call is checked; failures throw std::runtime_error.
#include "tools/qmm/bench_cuda.h"

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <string>

namespace qmm::bench::gpu {

namespace {

void check(cudaError_t err, const char* what, const char* file, int line) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("[bench] ") + what + " failed: " + cudaGetErrorString(err) + " (" + file +
                             ":" + std::to_string(line) + ")");
  }
}
void check(cublasStatus_t st, const char* what, const char* file, int line) {
  if (st != CUBLAS_STATUS_SUCCESS) {
    throw std::runtime_error(std::string("[bench] ") + what + " failed: " + cublasGetStatusString(st) + " (" + file +
                             ":" + std::to_string(line) + ")");
  }
}
#define BENCH_CHECK(expr) check((expr), #expr, __FILE__, __LINE__)

constexpr int kProbeThreads = 256;
constexpr int kMaxSpans = 4;
constexpr std::size_t kCublasWorkspace = std::size_t{32} << 20;

struct ReadArgs {
  const uint4* vec[kMaxSpans];
  unsigned long long vec_count[kMaxSpans];
  const unsigned char* tail[kMaxSpans];
  unsigned long long tail_count[kMaxSpans];
  int spans;
};

__device__ __forceinline__ unsigned fold(uint4 v) { return v.x ^ v.y ^ v.z ^ v.w; }

// Pure read: every byte loaded once, 16-byte loads, four independent loads in flight per thread
// per iteration, streaming cache hint (the data is used once). The xor is kept alive by a store
// that never happens in practice.
__global__ void __launch_bounds__(kProbeThreads) read_probe_kernel(ReadArgs a, unsigned* sink) {
  unsigned acc = 0;
  const unsigned long long tid = blockIdx.x * static_cast<unsigned long long>(blockDim.x) + threadIdx.x;
  const unsigned long long stride = static_cast<unsigned long long>(gridDim.x) * blockDim.x;
  for (int s = 0; s < a.spans; ++s) {
    const uint4* p = a.vec[s];
    const unsigned long long n = a.vec_count[s];
    unsigned long long i = tid;
    for (; i + 3 * stride < n; i += 4 * stride) {
      const uint4 v0 = __ldcs(p + i);
      const uint4 v1 = __ldcs(p + i + stride);
      const uint4 v2 = __ldcs(p + i + 2 * stride);
      const uint4 v3 = __ldcs(p + i + 3 * stride);
      acc ^= fold(v0) ^ fold(v1) ^ fold(v2) ^ fold(v3);
    }
    for (; i < n; i += stride) acc ^= fold(__ldcs(p + i));
    for (unsigned long long j = tid; j < a.tail_count[s]; j += stride) acc ^= a.tail[s][j];
  }
  if (acc == 0x9E3779B9u) *sink = acc;
}

__device__ __forceinline__ unsigned long long splitmix64(unsigned long long x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

__global__ void fill_bits_kernel(unsigned* dst, unsigned long long words, unsigned long long seed) {
  for (unsigned long long i = blockIdx.x * static_cast<unsigned long long>(blockDim.x) + threadIdx.x; i < words;
       i += static_cast<unsigned long long>(gridDim.x) * blockDim.x) {
    dst[i] = static_cast<unsigned>(splitmix64(seed * 0x100000001B3ull + i));
  }
}

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename T>
__global__ void fill_float_kernel(T* dst, unsigned long long count, unsigned long long seed, float lo, float hi) {
  for (unsigned long long i = blockIdx.x * static_cast<unsigned long long>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<unsigned long long>(gridDim.x) * blockDim.x) {
    const float u = static_cast<float>(splitmix64(seed * 0x100000001B3ull + i) >> 40) * (1.0f / 16777216.0f);
    dst[i] = from_float<T>(lo + (hi - lo) * u);
  }
}

cudaDataType_t cuda_type(Dtype dtype) {
  switch (dtype) {
    case Dtype::float16: return CUDA_R_16F;
    case Dtype::bfloat16: return CUDA_R_16BF;
    case Dtype::float32: return CUDA_R_32F;
    default: throw std::invalid_argument("[bench] dense GEMM needs a float dtype");
  }
}

}  // namespace

struct Context::Impl {
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  void* cublas_workspace = nullptr;
  unsigned* sink = nullptr;
  std::vector<void*> allocations;
};

Context::Context(int device) : device_(device), impl_(new Impl) {
  BENCH_CHECK(cudaSetDevice(device));
  BENCH_CHECK(cudaDeviceGetAttribute(&sms_, cudaDevAttrMultiProcessorCount, device));
  BENCH_CHECK(cudaStreamCreateWithFlags(&impl_->stream, cudaStreamNonBlocking));
  BENCH_CHECK(cudaMalloc(&impl_->sink, sizeof(unsigned)));
  BENCH_CHECK(cublasCreate(&impl_->cublas));
  BENCH_CHECK(cublasSetStream(impl_->cublas, impl_->stream));
  // A workspace we own keeps cuBLAS from allocating inside graph capture.
  BENCH_CHECK(cudaMalloc(&impl_->cublas_workspace, kCublasWorkspace));
  BENCH_CHECK(cublasSetWorkspace(impl_->cublas, impl_->cublas_workspace, kCublasWorkspace));
}

Context::~Context() {
  // Errors are ignored here: a destructor must not throw, and the process is ending anyway.
  cudaStreamSynchronize(impl_->stream);
  free_all();
  cublasDestroy(impl_->cublas);
  cudaFree(impl_->cublas_workspace);
  cudaFree(impl_->sink);
  cudaStreamDestroy(impl_->stream);
}

Stream Context::stream() const { return Stream{impl_->stream}; }

void* Context::alloc(std::size_t bytes) {
  void* p = nullptr;
  BENCH_CHECK(cudaMalloc(&p, std::max<std::size_t>(bytes, 256)));
  impl_->allocations.push_back(p);
  return p;
}

void Context::free_all() {
  cudaStreamSynchronize(impl_->stream);
  for (void* p : impl_->allocations) cudaFree(p);
  impl_->allocations.clear();
}

void Context::fill_random_bits(void* dst, std::size_t bytes, std::uint64_t seed) {
  const unsigned long long words = bytes / 4;
  if (words > 0) {
    const int blocks = static_cast<int>(std::min<unsigned long long>((words + 255) / 256, 4096));
    fill_bits_kernel<<<blocks, 256, 0, impl_->stream>>>(static_cast<unsigned*>(dst), words, seed);
    BENCH_CHECK(cudaGetLastError());
  }
  if (bytes % 4) BENCH_CHECK(cudaMemsetAsync(static_cast<char*>(dst) + words * 4, 0x5a, bytes % 4, impl_->stream));
}

void Context::fill_random(void* dst, std::size_t count, Dtype dtype, std::uint64_t seed, float lo, float hi) {
  if (count == 0) return;
  const int blocks = static_cast<int>(std::min<std::size_t>((count + 255) / 256, 4096));
  switch (dtype) {
    case Dtype::float16:
      fill_float_kernel<__half><<<blocks, 256, 0, impl_->stream>>>(static_cast<__half*>(dst), count, seed, lo, hi);
      break;
    case Dtype::bfloat16:
      fill_float_kernel<__nv_bfloat16>
          <<<blocks, 256, 0, impl_->stream>>>(static_cast<__nv_bfloat16*>(dst), count, seed, lo, hi);
      break;
    case Dtype::float32:
      fill_float_kernel<float><<<blocks, 256, 0, impl_->stream>>>(static_cast<float*>(dst), count, seed, lo, hi);
      break;
    default: throw std::invalid_argument("[bench] fill_random needs a float dtype");
  }
  BENCH_CHECK(cudaGetLastError());
}

void Context::synchronize() { BENCH_CHECK(cudaStreamSynchronize(impl_->stream)); }

void Context::enqueue_read(const std::vector<DeviceSpan>& spans) {
  if (spans.size() > kMaxSpans) throw std::invalid_argument("[bench] read probe takes at most 4 spans");
  ReadArgs a{};
  a.spans = static_cast<int>(spans.size());
  unsigned long long vec_total = 0;
  for (std::size_t s = 0; s < spans.size(); ++s) {
    const auto addr = reinterpret_cast<std::uintptr_t>(spans[s].data);
    // cudaMalloc'd buffers are 256-byte aligned; anything else is read byte by byte.
    const unsigned long long vec = addr % 16 == 0 ? spans[s].bytes / 16 : 0;
    a.vec[s] = static_cast<const uint4*>(spans[s].data);
    a.vec_count[s] = vec;
    a.tail[s] = static_cast<const unsigned char*>(spans[s].data) + vec * 16;
    a.tail_count[s] = spans[s].bytes - vec * 16;
    vec_total += vec;
  }
  // Enough blocks to fill every SM (8 x 256 threads each), no more than the data needs.
  const unsigned long long want = (vec_total + kProbeThreads - 1) / kProbeThreads;
  const int blocks = static_cast<int>(std::max<unsigned long long>(1, std::min<unsigned long long>(want, 8ull * sms_)));
  read_probe_kernel<<<blocks, kProbeThreads, 0, impl_->stream>>>(a, impl_->sink);
  BENCH_CHECK(cudaGetLastError());
}

void Context::enqueue_gemm(Dtype dtype, std::int64_t M, std::int64_t N, std::int64_t K, const void* x, const void* w,
                           void* out) {
  // Row-major out(M,N) = x(M,K) w(N,K)^T is column-major out^T(N,M) = w^T(N,K as op T) x^T(K,M).
  const float alpha = 1.0f, beta = 0.0f;
  const cudaDataType_t t = cuda_type(dtype);
  BENCH_CHECK(cublasGemmEx(impl_->cublas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(N), static_cast<int>(M),
                           static_cast<int>(K), &alpha, w, t, static_cast<int>(K), x, t, static_cast<int>(K), &beta,
                           out, t, static_cast<int>(N), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

std::vector<double> Context::time_graph(int calls, const std::function<void(int)>& enqueue, double budget_ms,
                                        int min_replays, int max_replays) {
  cudaStream_t s = impl_->stream;
  // One eager pass: lazy set-up (module loading, workspaces) must not happen inside the capture.
  for (int i = 0; i < calls; ++i) enqueue(i);
  BENCH_CHECK(cudaStreamSynchronize(s));

  cudaGraph_t graph = nullptr;
  BENCH_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  try {
    for (int i = 0; i < calls; ++i) enqueue(i);
  } catch (...) {
    cudaStreamEndCapture(s, &graph);  // leave the stream usable
    if (graph) cudaGraphDestroy(graph);
    throw;
  }
  BENCH_CHECK(cudaStreamEndCapture(s, &graph));
  cudaGraphExec_t exec = nullptr;
  const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  BENCH_CHECK(inst);

  constexpr int kBatch = 8;
  cudaEvent_t start[kBatch], stop[kBatch];
  for (int b = 0; b < kBatch; ++b) {
    BENCH_CHECK(cudaEventCreate(&start[b]));
    BENCH_CHECK(cudaEventCreate(&stop[b]));
  }
  std::vector<double> per_call_us;
  try {
    for (int w = 0; w < 3; ++w) BENCH_CHECK(cudaGraphLaunch(exec, s));  // warm-up replays
    BENCH_CHECK(cudaStreamSynchronize(s));
    const auto t0 = std::chrono::steady_clock::now();
    for (;;) {
      for (int b = 0; b < kBatch; ++b) {
        BENCH_CHECK(cudaEventRecord(start[b], s));
        BENCH_CHECK(cudaGraphLaunch(exec, s));
        BENCH_CHECK(cudaEventRecord(stop[b], s));
      }
      BENCH_CHECK(cudaEventSynchronize(stop[kBatch - 1]));
      for (int b = 0; b < kBatch; ++b) {
        float ms = 0;
        BENCH_CHECK(cudaEventElapsedTime(&ms, start[b], stop[b]));
        per_call_us.push_back(static_cast<double>(ms) * 1e3 / calls);
      }
      const double elapsed_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      const int n = static_cast<int>(per_call_us.size());
      if ((elapsed_ms >= budget_ms && n >= min_replays) || n >= max_replays) break;
    }
  } catch (...) {
    for (int b = 0; b < kBatch; ++b) {
      cudaEventDestroy(start[b]);
      cudaEventDestroy(stop[b]);
    }
    cudaGraphExecDestroy(exec);
    throw;
  }
  for (int b = 0; b < kBatch; ++b) {
    BENCH_CHECK(cudaEventDestroy(start[b]));
    BENCH_CHECK(cudaEventDestroy(stop[b]));
  }
  BENCH_CHECK(cudaGraphExecDestroy(exec));
  return per_call_us;
}

double Context::measure_read_bandwidth(std::size_t bytes, int passes) {
  void* buf = nullptr;
  BENCH_CHECK(cudaMalloc(&buf, bytes));
  try {
    fill_random_bits(buf, bytes, 11);
    const std::vector<DeviceSpan> spans{{buf, bytes}};
    const auto us = time_graph(1, [&](int) { enqueue_read(spans); }, 0.0, passes, passes);
    BENCH_CHECK(cudaFree(buf));
    std::vector<double> sorted = us;
    std::sort(sorted.begin(), sorted.end());
    return static_cast<double>(bytes) / (sorted[sorted.size() / 2] * 1e3);
  } catch (...) {
    cudaFree(buf);
    throw;
  }
}

std::string Context::versions() {
  int rt = 0, drv = 0;
  BENCH_CHECK(cudaRuntimeGetVersion(&rt));
  BENCH_CHECK(cudaDriverGetVersion(&drv));
  auto v = [](int x) { return std::to_string(x / 1000) + "." + std::to_string((x % 1000) / 10); };
  return "runtime " + v(rt) + ", driver " + v(drv) + ", cuBLAS " + std::to_string(CUBLAS_VER_MAJOR) + "." +
         std::to_string(CUBLAS_VER_MINOR) + "." + std::to_string(CUBLAS_VER_PATCH);
}

}  // namespace qmm::bench::gpu
