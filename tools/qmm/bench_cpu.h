// CPU-side helpers of `qmm bench` and `qmm info`: a small persistent thread pool, the pure-read
// probe (a STREAM-like multithreaded sum) and the dense float GEMM the CPU rows compare with.
// They sit in the tool, not the library: they are yardsticks, not qmm operations.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace qmm::bench::cpu {

/// Persistent workers; run() calls fn(index, count) on every worker and waits for all.
class Pool {
 public:
  explicit Pool(int threads = 0);  // 0 = hardware threads
  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;
  int size() const { return static_cast<int>(workers_.size()) + 1; }
  void run(const std::function<void(int, int)>& fn);

 private:
  void loop(int index);
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable start_, done_;
  const std::function<void(int, int)>* fn_ = nullptr;
  std::uint64_t generation_ = 0;
  int pending_ = 0;
  bool stop_ = false;
};

struct Span {
  const void* data;
  std::size_t bytes;
};

/// Reads every byte of the spans once, split across the pool; returns a value that depends on
/// all of them (so the reads cannot be optimised away).
std::uint64_t read_all(Pool& pool, const std::vector<Span>& spans);

/// out[m][n] = sum_k x[m][k] * w[n][k], float32, w (N, K) row-major, split over N; each weight
/// row is loaded once and applied to all M rows.
void dense_gemm(Pool& pool, const float* x, const float* w, float* out, std::int64_t M, std::int64_t N,
                std::int64_t K);

/// Fills `bytes` with pseudo-random data (splitmix64 of the seed and the offset).
void fill_random_bytes(void* data, std::size_t bytes, std::uint64_t seed);
/// Pseudo-random floats in [lo, hi).
void fill_random_floats(float* data, std::size_t count, std::uint64_t seed, float lo, float hi);

/// Read bandwidth over a buffer of `bytes` (median of repeated passes), GB/s.
double measure_read_bandwidth(Pool& pool, std::size_t bytes, int passes);

}  // namespace qmm::bench::cpu
