#include "tools/qmm/step_detector.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "tools/qmm/text_format.h"

namespace qmm::bench {

namespace {

double mb(std::int64_t bytes) { return static_cast<double>(bytes) / 1e6; }

}  // namespace

std::vector<std::string> Step::causes() const {
  std::vector<std::string> out;
  if (kernel_changed) out.emplace_back("kernel_change");
  if (extra_wave) out.emplace_back("extra_wave");
  if (grid_changed) out.emplace_back("grid_change");
  if (bytes_reread) out.emplace_back("bytes_reread");
  if (compute_bound) out.emplace_back("compute_bound");
  if (within_noise) out.emplace_back("within_noise");
  return out;
}

std::string Step::summary() const {
  std::string s = "M=" + std::to_string(m) + ": " + printf_string("%.2fx", ratio) + " vs M=" + std::to_string(prev_m);
  for (std::size_t i = 0; i < evidence.size(); ++i) s += (i == 0 ? " - " : "; ") + evidence[i];
  return s;
}

std::vector<Step> detect_steps(std::vector<StepRow> rows, double threshold) {
  std::sort(rows.begin(), rows.end(), [](const StepRow& a, const StepRow& b) { return a.m < b.m; });
  std::vector<Step> steps;
  for (std::size_t i = 1; i < rows.size(); ++i) {
    const StepRow& prev = rows[i - 1];
    const StepRow& cur = rows[i];
    if (cur.m != prev.m + 1 || prev.time_us <= 0) continue;
    const double ratio = cur.time_us / prev.time_us;
    if (!(ratio > threshold)) continue;

    Step st;
    st.m = cur.m;
    st.prev_m = prev.m;
    st.ratio = ratio;
    if (cur.kernel != prev.kernel) {
      st.kernel_changed = true;
      st.evidence.push_back("kernel changed: " + prev.kernel + " -> " + cur.kernel);
    }
    // A wave is a full round of resident blocks; a partial last wave costs as much as a full one
    // when the blocks are equal, so compare rounded-up wave counts.
    const double prev_waves = std::ceil(prev.waves - 1e-9);
    const double cur_waves = std::ceil(cur.waves - 1e-9);
    if (cur.waves > 0 && cur_waves > prev_waves) {
      st.extra_wave = true;
      st.evidence.push_back(printf_string("waves %.2f -> %.2f (an extra wave of blocks)", prev.waves, cur.waves));
    }
    if (!st.kernel_changed && cur.blocks != prev.blocks) {
      st.grid_changed = true;
      st.evidence.push_back("grid changed: " + std::to_string(prev.blocks) + " -> " +
                            std::to_string(cur.blocks) + " blocks");
    }
    if (cur.weight_bytes > prev.weight_bytes) {
      st.bytes_reread = true;
      const double floor = static_cast<double>(cur.min_weight_bytes > 0 ? cur.min_weight_bytes : prev.weight_bytes);
      st.evidence.push_back(printf_string("weight bytes read %.1f MB -> %.1f MB (%.2fx the minimum: weights read more than once)",
                                   mb(prev.weight_bytes), mb(cur.weight_bytes), cur.weight_bytes / floor));
    }
    if (!st.kernel_changed && !st.extra_wave && !st.grid_changed && !st.bytes_reread) {
      st.compute_bound = true;
      st.evidence.push_back(printf_string("same kernel, grid and bytes (%.1f MB) while time grows %.0f%%: compute/issue-bound",
                                   mb(cur.weight_bytes), (ratio - 1) * 100));
    }
    // The fastest sample at M no slower than the typical one at M-1: the step may be noise.
    if (cur.time_min_us > 0 && cur.time_min_us <= prev.time_us) {
      st.within_noise = true;
      st.evidence.push_back(printf_string("fastest sample at M=%.0f (%.2f us) <= median at M-1 (%.2f us): may be noise",
                                   cur.m, cur.time_min_us, prev.time_us));
    }
    steps.push_back(std::move(st));
  }
  return steps;
}

}  // namespace qmm::bench
