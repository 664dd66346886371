// qmm_pattern_probe: read bandwidth of qmv_mma's weight access order with no compute, beside a
// contiguous read of the same bytes (a diagnostic; it does not use the library).
//   qmm_pattern_probe [N K]   (4-bit weights: N rows of K values; N a multiple of 128, K of 256;
//                              default 13824 5120, Qwen2.5-14B's gate/up)
// Each block takes an equal run of (128-row block, segment) items, as qmv_mma's stream-K split
// does; per item each thread reads chunk c = lane % 4 (S/4 bytes) of rows warp*32 + i*8 + lane/4,
// i = 0..3, as qmv_mma's k mapping does. S = bytes per row per segment (qmv_mma: 64, i.e. 128
// 4-bit values), "hint" = the L2::256B hint of qmv_mma's loads, "ahead" = items whose loads are
// all issued before the first is used (qmv_mma keeps about one in flight per warp).
// Cold: each launch reads the next of several copies of the weights, 4x the L2 in all. Times are
// events around single launches (not CUDA graphs), so they run a few µs longer than `qmm bench`'s;
// compare the rows with each other. Results and their reading: bench/results/h100/
// ab_twelfth_session_h100.txt, bench/NOTES.md v16.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}
#define PROBE_CHECK(expr) check((expr), #expr)

constexpr int kRowsPerBlock = 128;
constexpr int kThreads = 128;

template <bool Hint>
__device__ __forceinline__ uint4 load16(const void* p) {
  uint4 v;
  if constexpr (Hint) {
    asm volatile("ld.global.nc.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
  } else {
    asm volatile("ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  }
  return v;
}

__device__ __forceinline__ unsigned fold(uint4 v) { return v.x ^ v.y ^ v.z ^ v.w; }

/// Every 16 bytes once, grid-stride. The xor is kept alive by a store that never happens.
__global__ void contiguous_read(const uint4* p, std::size_t n, unsigned* sink) {
  unsigned acc = 0;
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    acc ^= fold(load16<false>(p + i));
  }
  if (acc == 0x9E3779B9u) *sink = acc;
}

/// qmv_mma's order (see the file comment): S bytes per row per item, Ahead items loaded at once.
template <int S, bool Hint, int Ahead>
__global__ void __launch_bounds__(kThreads) pattern_read(const char* w, int row_bytes, int row_blocks, int blocks,
                                                          unsigned* sink) {
  const int segments = row_bytes / S;
  const long long items = static_cast<long long>(row_blocks) * segments;
  const long long start = items * blockIdx.x / blocks;
  const long long end = items * (blockIdx.x + 1) / blocks;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int warp = static_cast<int>(threadIdx.x) >> 5;
  const int c = lane & 3;
  unsigned acc = 0;
  for (long long first = start; first < end; first += Ahead) {
    uint4 v[Ahead][4][S / 64];
#pragma unroll
    for (int a = 0; a < Ahead; ++a) {
      const long long item = first + a < end ? first + a : end - 1;  // past the run: its last item again
      const int rb = static_cast<int>(item / segments);
      const int seg = static_cast<int>(item % segments);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const long long row = static_cast<long long>(rb) * kRowsPerBlock + warp * 32 + i * 8 + (lane >> 2);
        const char* p = w + row * row_bytes + static_cast<long long>(seg) * S + c * (S / 4);
#pragma unroll
        for (int q = 0; q < S / 64; ++q) v[a][i][q] = load16<Hint>(p + 16 * q);
      }
    }
#pragma unroll
    for (int a = 0; a < Ahead; ++a)
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int q = 0; q < S / 64; ++q) acc ^= fold(v[a][i][q]);
  }
  if (acc == 0x9E3779B9u) *sink = acc;
}

struct Probe {
  char* weights = nullptr;
  std::size_t bytes = 0;
  int copies = 0;
  unsigned* sink = nullptr;
  cudaEvent_t begin{}, end{};

  /// Median µs of `launch(copy)` over 50 launches after 10 warm-up ones, each on the next copy.
  template <typename Launch>
  float median_us(Launch&& launch) const {
    std::vector<float> times;
    for (int r = 0; r < 60; ++r) {
      const char* copy = weights + static_cast<std::size_t>(r % copies) * bytes;
      PROBE_CHECK(cudaEventRecord(begin));
      launch(copy);
      PROBE_CHECK(cudaGetLastError());
      PROBE_CHECK(cudaEventRecord(end));
      PROBE_CHECK(cudaEventSynchronize(end));
      float ms = 0;
      PROBE_CHECK(cudaEventElapsedTime(&ms, begin, end));
      if (r >= 10) times.push_back(ms * 1000.0f);
    }
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
  }
};

int parse_positive(const char* text, const char* name) {
  char* rest = nullptr;
  const long v = std::strtol(text, &rest, 10);
  if (*text == '\0' || *rest != '\0' || v <= 0 || v > (1L << 24)) {
    throw std::invalid_argument(std::string("[pattern_probe] ") + name + " must be a positive integer, got '" + text +
                                "'");
  }
  return static_cast<int>(v);
}

}  // namespace

int main(int argc, char** argv) try {
  if (argc != 1 && argc != 3) throw std::invalid_argument("[pattern_probe] usage: qmm_pattern_probe [N K]");
  const int N = argc == 3 ? parse_positive(argv[1], "N") : 13824;
  const int K = argc == 3 ? parse_positive(argv[2], "K") : 5120;
  if (N % kRowsPerBlock != 0 || K % 256 != 0) {
    throw std::invalid_argument("[pattern_probe] N must be a multiple of 128 and K of 256");
  }
  const int row_bytes = K / 2;  // 4-bit
  Probe probe;
  probe.bytes = static_cast<std::size_t>(N) * row_bytes;
  int l2 = 0, sms = 0;
  PROBE_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, 0));
  PROBE_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  probe.copies = std::max(2, static_cast<int>(4.0 * l2 / static_cast<double>(probe.bytes)) + 1);
  PROBE_CHECK(cudaMalloc(&probe.weights, probe.bytes * probe.copies));
  PROBE_CHECK(cudaMemset(probe.weights, 1, probe.bytes * probe.copies));
  PROBE_CHECK(cudaMalloc(&probe.sink, sizeof(unsigned)));
  PROBE_CHECK(cudaEventCreate(&probe.begin));
  PROBE_CHECK(cudaEventCreate(&probe.end));

  std::printf("N=%d K=%d 4-bit: %.2f MB, %d copies, %d SMs\n", N, K, probe.bytes / 1e6, probe.copies, sms);
  const float t_contiguous = probe.median_us([&](const char* w) {
    contiguous_read<<<sms * 8, 256>>>(reinterpret_cast<const uint4*>(w), probe.bytes / 16, probe.sink);
  });
  std::printf("contiguous                             %7.2f us %6.0f GB/s\n", t_contiguous,
              probe.bytes / t_contiguous / 1e3);
  const int row_blocks = N / kRowsPerBlock;
  for (const int per_sm : {1, 2, 3}) {
    const int blocks = sms * per_sm;
    const auto run = [&](auto kernel, int S, bool hint, int ahead) {
      const float t = probe.median_us(
          [&](const char* w) { kernel<<<blocks, kThreads>>>(w, row_bytes, row_blocks, blocks, probe.sink); });
      std::printf("S=%3d hint=%d ahead=%d blocks=%4d         %7.2f us %6.0f GB/s %5.2fx contiguous\n", S, hint, ahead,
                  blocks, t, probe.bytes / t / 1e3, t / t_contiguous);
    };
    run(pattern_read<64, true, 1>, 64, true, 1);
    run(pattern_read<64, false, 1>, 64, false, 1);
    run(pattern_read<64, true, 2>, 64, true, 2);
    run(pattern_read<64, true, 4>, 64, true, 4);
    run(pattern_read<64, false, 4>, 64, false, 4);
    run(pattern_read<128, true, 1>, 128, true, 1);
    run(pattern_read<128, true, 2>, 128, true, 2);
    run(pattern_read<256, false, 1>, 256, false, 1);
    run(pattern_read<256, true, 1>, 256, true, 1);
  }
  PROBE_CHECK(cudaFree(probe.weights));
  PROBE_CHECK(cudaFree(probe.sink));
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "%s\n", e.what());
  return 1;
}
