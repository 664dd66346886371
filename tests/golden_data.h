// Golden vectors written by real MLX (scripts/make_golden.py): tests/golden/golden.json indexes
// raw little-endian arrays in tests/golden/golden.bin. QMM_GOLDEN_DIR (environment) points the
// tests at another set, which is how the live MLX test (tests/mlx_live_test.py) runs them on
// vectors MLX has just made.
#pragma once

#include <string>
#include <vector>

#include "qmm/qmm.h"

namespace qmm::test {

/// One stored array, copied into an owning CPU tensor (float16/bfloat16 keep their bit patterns).
struct GoldenMatmul {
  std::string label;  // e.g. "x(2,3,K) w(N,K)"
  bool transpose = true;
  Tensor x;
  Tensor out;
};

struct GoldenNastyGroup {
  std::int64_t row = 0;
  std::int64_t group = 0;
  std::string kind;  // "ties", "constant", ...
};

struct GoldenCase {
  std::string name;  // "b4_g64_float16", "b3_g32_bfloat16_batched", ...
  int bits = 4;
  int group_size = 64;
  Dtype dtype = Dtype::float32;
  Tensor w;            // what mx.quantize was given
  Tensor w_q;          // mx.quantize outputs
  Tensor scales;
  Tensor biases;
  Tensor dequantized;  // mx.dequantize(w_q, scales, biases)
  std::vector<GoldenNastyGroup> nasty_groups;
  std::vector<GoldenMatmul> matmuls;
};

struct GoldenSet {
  std::string dir;
  std::string mlx_version;
  std::vector<GoldenCase> cases;
};

/// The directory the golden tests read: $QMM_GOLDEN_DIR, else the committed tests/golden.
std::string golden_dir();
/// Loads (once) and returns the golden set of golden_dir(). Throws std::runtime_error if the files
/// are missing or inconsistent.
const GoldenSet& golden_set();
/// Names of the cases, for parameterised tests (empty if the set cannot be loaded: the load error
/// is then reported by a test, not at static initialisation).
std::vector<std::string> golden_case_names();
const GoldenCase& golden_case(const std::string& name);

}  // namespace qmm::test
