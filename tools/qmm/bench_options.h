// `qmm bench` flags, presets and their validation: pure functions, unit-tested on the CPU.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "qmm/dtype.h"

namespace qmm::bench {

/// One weight shape: K inputs -> N outputs (the weight is (N, K) for transpose=true).
struct ShapeSpec {
  std::int64_t k = 0;
  std::int64_t n = 0;
  std::string label;  ///< layer name for presets ("gate_proj/up_proj"), else ""
  /// "5120:13824" (K:N, the --shape spelling).
  std::string key() const;
};

struct Preset {
  std::string name;
  std::string description;
  std::vector<ShapeSpec> shapes;
};

/// The built-in shape presets (qwen2.5-14b first: the default).
const std::vector<Preset>& presets();
/// Throws std::invalid_argument ("unknown preset 'x' (known: ...)").
const Preset& find_preset(const std::string& name);

/// "1-16,32,64" -> {1..16, 32, 64}, sorted, duplicates removed. Throws std::invalid_argument for
/// M < 1, a descending range, or anything that is not a list of integers and ranges.
std::vector<int> parse_m_list(const std::string& text);
/// "K:N" -> shape. Throws std::invalid_argument.
ShapeSpec parse_shape(const std::string& text);
/// "true|false|1|0|yes|no" -> bool. Throws std::invalid_argument.
bool parse_bool(const std::string& name, const std::string& text);

/// The flags as given on the command line.
struct BenchOptions {
  std::string backend = "auto";           ///< cpu | cuda | auto
  std::vector<std::string> shapes;        ///< --shape K:N (repeatable)
  std::string preset;                     ///< --preset NAME ("" = qwen2.5-14b when no --shape)
  std::string m = "1-4";                  ///< --m list
  int bits = 4;
  int group_size = 64;
  std::string dtype = "float16";
  std::string transpose = "true";
  std::string kernel;                     ///< "" = let dispatch choose
  std::string json_path, csv_path, plot_path, peers_path;
  double budget_ms = 200;                 ///< time budget per timed case
  int min_samples = 10;                   ///< replays (CUDA) or calls (CPU) at least
  double rotation_mb = 0;                 ///< minimum rotation size; 0 = 4x the last-level cache
  int device = 0;                         ///< CUDA device index
  bool no_dense = false;
  bool quiet = false;
};

/// The validated plan a run executes.
struct BenchPlan {
  Device device;
  std::string preset;                ///< preset name, "" if only --shape
  std::vector<ShapeSpec> shapes;
  std::vector<int> ms;               ///< always includes 1 (the reference row)
  int bits = 4;
  int group_size = 64;
  Dtype dtype = Dtype::float16;
  bool transpose = true;
  std::string kernel;
  double budget_ms = 200;
  int min_samples = 10;
  double rotation_mb = 0;
  bool dense = true;
};

/// Validates every flag (one clear std::invalid_argument per problem) and resolves the backend:
/// "auto" is CUDA when qmm::cuda_available(), else the CPU; "cuda" without a device is an error.
/// Kernel names are checked against qmm::kernel_names(device, "quantized_matmul").
BenchPlan make_plan(const BenchOptions& options);

}  // namespace qmm::bench
