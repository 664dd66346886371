// Step detection for `qmm bench`: which M make a call dearer than M-1, and what the tool knows
// about why. A pure function over measured rows, so it can be tested on synthetic timings.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace qmm::bench {

/// One measured (shape, M) row as the step detector sees it.
struct StepRow {
  int m = 0;
  double time_us = 0;      ///< median
  double time_min_us = 0;  ///< fastest sample (0 = unknown)
  double time_max_us = 0;  ///< slowest sample (0 = unknown; informational)
  std::string kernel;      ///< kernel configuration chosen
  std::int64_t blocks = 0; ///< grid size (product of the grid dimensions)
  double waves = 0;        ///< LaunchInfo::waves()
  std::int64_t weight_bytes = 0;      ///< weight bytes the call reads (all passes)
  std::int64_t min_weight_bytes = 0;  ///< the same counted once
};

/// One flagged step: t(m) / t(m-1) above the threshold, with the evidence for why.
struct Step {
  int m = 0;
  int prev_m = 0;
  double ratio = 0;             ///< t(m) / t(prev_m)
  bool kernel_changed = false;  ///< a different configuration ran
  bool extra_wave = false;      ///< the grid needs more (full or partial) waves than at prev_m
  bool grid_changed = false;    ///< same kernel, different grid (split or tiling changed)
  bool bytes_reread = false;    ///< more weight bytes read than at prev_m (weights read more than once)
  bool compute_bound = false;   ///< none of the above: time grows while bytes do not (compute/issue-bound)
  bool within_noise = false;    ///< the fastest sample at m is no slower than the median at prev_m
  std::vector<std::string> evidence;  ///< one human sentence per finding, most telling first

  /// Short machine names of the causes found, e.g. {"kernel_change", "extra_wave"}.
  std::vector<std::string> causes() const;
  /// "M=3: 1.28x vs M=2 — kernel changed: a -> b; ..." on one line.
  std::string summary() const;
};

/// Flags every M whose M-1 was also measured and t(M)/t(M-1) > threshold. Rows may come in any
/// order; rows with M-1 missing are not compared (their ratio is undefined).
std::vector<Step> detect_steps(std::vector<StepRow> rows, double threshold = 1.10);

}  // namespace qmm::bench
