// CUDA-side helpers of `qmm bench` and `qmm info`: a capture stream, CUDA-graph timing with
// events, the pure-read probe kernel, cuBLAS for the dense equivalent and device-side random
// fills. Implemented in bench_cuda.cu, which is compiled only when qmm is built with CUDA; this
// header has no CUDA types so plain C++ code can use it behind `#ifdef QMM_HAVE_CUDA`.
// The qmm operations themselves are called through the public API only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "qmm/dtype.h"

namespace qmm::bench::gpu {

struct DeviceSpan {
  const void* data;
  std::size_t bytes;
};

class Context {
 public:
  explicit Context(int device);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  int device() const { return device_; }
  int multiprocessors() const { return sms_; }
  /// The non-default stream every timed call is enqueued on (and captured from).
  Stream stream() const;

  /// Device memory owned by the context (freed by free_all or the destructor), 256-byte aligned.
  void* alloc(std::size_t bytes);
  void free_all();

  /// Uniform pseudo-random bits.
  void fill_random_bits(void* dst, std::size_t bytes, std::uint64_t seed);
  /// Uniform pseudo-random values in [lo, hi) of a float dtype.
  void fill_random(void* dst, std::size_t count, Dtype dtype, std::uint64_t seed, float lo, float hi);
  void synchronize();

  /// Enqueues one launch of the read probe over up to four spans (16-byte vector loads).
  void enqueue_read(const std::vector<DeviceSpan>& spans);
  /// Enqueues out(M, N) = x(M, K) @ w(N, K)^T through cuBLAS (fp32 accumulate), all in `dtype`.
  void enqueue_gemm(Dtype dtype, std::int64_t M, std::int64_t N, std::int64_t K, const void* x, const void* w,
                    void* out);

  /// Captures enqueue(0..calls-1) on stream() into one CUDA graph (after one eager pass, which
  /// also warms up), then times replays with events until `budget_ms` of wall time has passed and
  /// at least `min_replays` ran (at most `max_replays`). Returns microseconds per call of each
  /// replay (replay time / calls).
  std::vector<double> time_graph(int calls, const std::function<void(int)>& enqueue, double budget_ms,
                                 int min_replays, int max_replays = 2000);

  /// Read bandwidth over one buffer of `bytes` (median of repeated probe launches), GB/s.
  double measure_read_bandwidth(std::size_t bytes, int passes = 20);

  /// "runtime 13.0, driver 13.0, cuBLAS 13.0.0".
  static std::string versions();

 private:
  struct Impl;
  int device_ = 0;
  int sms_ = 0;
  std::unique_ptr<Impl> impl_;
};

}  // namespace qmm::bench::gpu
