// `qmm model`'s benchmark: prefill P tokens, then time verify passes of M new tokens against
// that cache (the cache is not advanced: every pass writes the same positions), CUDA graphs
// where possible, medians; the split between linears, attention and the rest; a read-bandwidth
// probe in the same run for the weight-read floor.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/forward.h"

namespace qmm::model {

struct BenchOptions {
  int prefill = 512;
  std::vector<int> ms = {1, 2, 3, 4, 5, 6, 7, 8};
  int repeats = 20;  ///< timed passes per M (the median is reported)
  int warmup = 3;
  bool graphs = true;  ///< CUDA graphs (else eager launches)
  bool split = true;   ///< time each op category on its own
  std::uint64_t seed = 1;
  std::size_t probe_bytes = 0;  ///< read-bandwidth probe size (0: 2 GiB on CUDA, 512 MiB on the CPU)
  std::function<void(const std::string&)> progress;
};

struct BenchRow {
  int m = 0;
  double ms = 0;  ///< median
  double ms_min = 0;
  double ms_max = 0;
  double ratio = 1;  ///< to M = 1 (or the first M)
  double tokens_per_s = 0;
  double linears_ms = -1;  ///< category medians (-1: not measured)
  double attention_ms = -1;
  double other_ms = -1;
};

struct LinearInfo {
  std::string name;
  std::int64_t N = 0, K = 0;
  int bits = 0, group_size = 0;
  std::string kernel_m1, kernel_mmax;  ///< qmm's chosen configuration
};

struct BenchResult {
  std::string model;  ///< "synthetic qwen2.5-14b" or the checkpoint directory
  std::string device;
  std::string device_name;
  std::string dtype;
  std::string quantization;  ///< "4-bit g64" or "mixed"
  int layers = 0;
  std::int64_t hidden = 0, intermediate = 0, vocab = 0;
  bool fused = true;
  bool graphs = false;
  std::string graph_note;
  int prefill = 0;
  int repeats = 0;
  std::int64_t weight_bytes = 0;  ///< bytes one M = 1 forward reads (linears, norms, one embedding row)
  std::int64_t linear_bytes = 0;
  std::int64_t kv_bytes = 0;      ///< KV cache read by an M = 1 pass
  double read_gbs = 0;
  std::size_t probe_bytes = 0;
  double floor_ms = 0;  ///< weight_bytes at read_gbs
  double prefill_ms = 0;
  std::vector<BenchRow> rows;
  std::vector<LinearInfo> linears;
  // Targets of issue 5 (a benchmark, not a test).
  double m1_over_floor = 0;
  double mmax_over_m1 = 0;
  int mmax = 0;
};

BenchResult run_benchmark(Model& model, const BenchOptions& options);
std::string format_result(const BenchResult& result);
std::string result_json(const BenchResult& result);
/// "1-8", "1,2,4,8", "1-4,8" -> {1, ...}. Throws qmm::Error on bad input.
std::vector<int> parse_m_list(const std::string& text);

}  // namespace qmm::model
