#include "tools/qmm/bench_targets.h"

#include <cstdio>
#include <map>

#include "tools/qmm/text_format.h"

namespace qmm::bench {

namespace {

/// Tracks the worst ratio against a limit over several rows.
struct Worst {
  bool any = false;
  bool pass = true;
  double margin = -1e30;  // ratio / limit, the largest
  double ratio = 0, limit = 0;
  int m = 0;
  void add(int row_m, double r, double lim) {
    any = true;
    if (r > lim) pass = false;
    if (r / lim > margin) {
      margin = r / lim;
      ratio = r;
      limit = lim;
      m = row_m;
    }
  }
  std::string detail(const char* what) const {
    return std::string("worst ") + what + " " + printf_string("%.3fx at M=%.0f (limit %.2fx)", ratio, m, limit);
  }
};

const Row* find_row(const ShapeResult& s, int m) {
  for (const auto& r : s.rows) {
    if (r.m == m) return &r;
  }
  return nullptr;
}

}  // namespace

bool targets_apply(const Report& report) {
  const BenchPlan& p = report.plan;
  return report.device_type == "cuda" && p.bits == 4 && p.group_size == 64 && p.dtype == Dtype::float16 &&
         p.transpose && p.kernel.empty();
}

std::vector<TargetCheck> check_targets(const Report& report) {
  std::vector<TargetCheck> out;
  // The peers target is against the peers measured in the same run: its detail names the merged
  // ones that were not, so a pass without them is not read as a pass against them.
  std::string peers_not_run;
  for (const auto& p : report.peers) {
    if (!p.available) peers_not_run += (peers_not_run.empty() ? "" : ", ") + p.name;
  }
  for (const auto& s : report.shapes) {
    const std::string key = s.shape.key();
    const double elems = static_cast<double>(s.shape.k) * static_cast<double>(s.shape.n);
    const Row* r1 = find_row(s, 1);

    // Ratio to the read probe.
    if (s.probe_us.median > 0) {
      Worst w;
      for (const auto& r : s.rows) {
        if (r.m > 16 || r.us.median <= 0) continue;
        double limit;
        if (elems >= 40e6) {
          limit = r.m <= 8 ? 1.10 : 1.20;
        } else if (elems >= 10e6) {
          limit = 1.20;
        } else {
          limit = 1.5;
        }
        w.add(r.m, r.us.median / s.probe_us.median, limit);
      }
      if (w.any) out.push_back({"probe_ratio", key, w.pass, w.detail("time/probe")});
    }

    // Flatness.
    if (r1 != nullptr && r1->us.median > 0) {
      if (const Row* r16 = find_row(s, 16)) {
        const double q = r16->us.median / r1->us.median;
        out.push_back({"flat_16", key, q <= 1.20, printf_string("t(16)/t(1) = %.2fx (limit 1.20x)", q)});
      }
      if (const Row* r32 = find_row(s, 32)) {
        const double q = r32->us.median / r1->us.median;
        out.push_back({"flat_32", key, q <= 1.6, printf_string("t(32)/t(1) = %.2fx (limit 1.60x)", q)});
      }
    }

    // No step anywhere in 1..64.
    {
      Worst w;
      for (const auto& r : s.rows) {
        if (r.m <= 64 && r.ratio_prev) w.add(r.m, *r.ratio_prev, 1.15);
      }
      if (w.any) out.push_back({"no_step", key, w.pass, w.detail("t(M)/t(M-1)")});
    }

    // Dense equivalent.
    {
      Worst w;
      for (const auto& r : s.rows) {
        if (r.m <= 64 && r.dense_us && r.dense_us->median > 0) w.add(r.m, r.us.median / r.dense_us->median, 1.0);
      }
      if (w.any) out.push_back({"dense", key, w.pass, w.detail("time/dense")});
    }

    // Peers.
    {
      Worst w;
      std::string worst_peer;
      for (const auto& r : s.rows) {
        if (r.m > 16) continue;
        for (const auto& p : r.peers) {
          if (p.us.median <= 0) continue;
          const double q = r.us.median / p.us.median;
          const double before = w.margin;
          w.add(r.m, q, 1.0);
          if (w.margin != before) worst_peer = p.peer;
        }
      }
      if (w.any) {
        std::string detail = w.detail(("time/" + worst_peer).c_str());
        if (!peers_not_run.empty()) detail += "; not in this run: " + peers_not_run;
        out.push_back({"peers", key, w.pass, detail});
      }
    }
  }
  return out;
}

}  // namespace qmm::bench
