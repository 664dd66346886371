#include "tools/qmm/bench_report.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>

#include "qmm/version.h"
#include "tools/qmm/bench_targets.h"
#include "tools/qmm/text_format.h"

namespace qmm::bench {

using nlohmann::json;

namespace {

std::string human_bytes(double bytes) {
  if (bytes >= 1e9) return printf_string("%.2f GB", bytes / 1e9);
  if (bytes >= 1e6) return printf_string("%.2f MB", bytes / 1e6);
  if (bytes >= 1e3) return printf_string("%.1f KB", bytes / 1e3);
  return printf_string("%.0f B", bytes);
}

std::string short_bytes(double bytes) {
  if (bytes <= 0) return "0";
  if (bytes >= 1 << 20) return printf_string("%.0fM", bytes / (1 << 20));
  if (bytes >= 1 << 10) return printf_string("%.0fK", bytes / (1 << 10));
  return printf_string("%.0f", bytes);
}

json stat_json(const Stat& s) { return {{"median", s.median}, {"min", s.min}, {"max", s.max}, {"samples", s.samples}}; }

Stat stat_from_json(const json& j) {
  Stat s;
  if (j.is_number()) {
    s.median = s.min = s.max = j.get<double>();
    s.samples = 1;
    return s;
  }
  s.median = j.at("median").get<double>();
  s.min = j.value("min", s.median);
  s.max = j.value("max", s.median);
  s.samples = j.value("samples", 0);
  return s;
}

json optional_number(const std::optional<double>& v) { return v ? json(*v) : json(nullptr); }

std::int64_t blocks(const LaunchInfo& l) {
  return static_cast<std::int64_t>(l.grid[0]) * l.grid[1] * l.grid[2];
}

json device_json(const DeviceInfo& d, const std::string& type) {
  return {{"type", type},
          {"index", d.device.index},
          {"name", d.name},
          {"multiprocessors", d.multiprocessors},
          {"compute_capability", d.compute_capability},
          {"l2_bytes", d.l2_bytes},
          {"memory_bytes", d.memory_bytes},
          {"peak_bandwidth_gbs", d.peak_bandwidth_gbs}};
}

std::string grid_string(const LaunchInfo& l) {
  return std::to_string(l.grid[0]) + "x" + std::to_string(l.grid[1]) + "x" + std::to_string(l.grid[2]);
}

}  // namespace

Stat summarize(std::vector<double> samples) {
  Stat s;
  if (samples.empty()) return s;
  std::sort(samples.begin(), samples.end());
  const std::size_t n = samples.size();
  s.samples = static_cast<int>(n);
  s.min = samples.front();
  s.max = samples.back();
  s.median = n % 2 ? samples[n / 2] : 0.5 * (samples[n / 2 - 1] + samples[n / 2]);
  return s;
}

void fill_derived(Report& report) {
  for (auto& s : report.shapes) {
    std::sort(s.rows.begin(), s.rows.end(), [](const Row& a, const Row& b) { return a.m < b.m; });
    s.probe_gbs = s.probe_us.median > 0 ? static_cast<double>(s.weight_bytes) / (s.probe_us.median * 1e3) : 0;
    const Row* r1 = nullptr;
    for (const auto& r : s.rows) {
      if (r.m == 1) r1 = &r;
    }
    const double t1 = r1 ? r1->us.median : 0;
    std::vector<StepRow> step_rows;
    for (std::size_t i = 0; i < s.rows.size(); ++i) {
      Row& r = s.rows[i];
      const double bytes = static_cast<double>(r.launch.min_weight_bytes > 0 ? r.launch.min_weight_bytes : s.weight_bytes) +
                           static_cast<double>(r.x_bytes + r.out_bytes);
      r.gbs = r.us.median > 0 ? bytes / (r.us.median * 1e3) : 0;
      r.pct_probe = r.us.median > 0 ? 100.0 * s.probe_us.median / r.us.median : 0;
      r.ratio_m1 = t1 > 0 ? r.us.median / t1 : 0;
      r.ratio_prev.reset();
      if (i > 0 && s.rows[i - 1].m == r.m - 1 && s.rows[i - 1].us.median > 0) {
        r.ratio_prev = r.us.median / s.rows[i - 1].us.median;
      }
      r.ratio_dense.reset();
      if (r.dense_us && r.dense_us->median > 0) r.ratio_dense = r.us.median / r.dense_us->median;
      r.ratio_best_peer.reset();
      r.best_peer.clear();
      for (const auto& p : r.peers) {
        if (p.us.median <= 0) continue;
        const double q = r.us.median / p.us.median;
        if (!r.ratio_best_peer || q > *r.ratio_best_peer) {
          r.ratio_best_peer = q;
          r.best_peer = p.peer;
        }
      }
      StepRow sr;
      sr.m = r.m;
      sr.time_us = r.us.median;
      sr.time_min_us = r.us.min;
      sr.time_max_us = r.us.max;
      sr.kernel = r.launch.kernel;
      sr.blocks = blocks(r.launch);
      sr.waves = r.launch.waves();
      sr.weight_bytes = r.launch.weight_bytes;
      sr.min_weight_bytes = r.launch.min_weight_bytes;
      step_rows.push_back(sr);
    }
    s.steps = detect_steps(step_rows);
  }
  report.targets_apply = targets_apply(report);
  report.targets = check_targets(report);
}

void merge_peers(Report& report, const json& doc) {
  if (!doc.is_object() || doc.value("schema", "") != kPeersSchema) {
    throw std::invalid_argument(std::string("--peers: not a ") + kPeersSchema + " document");
  }
  report.peers_device = doc.value("device", json::object());
  for (const auto& p : doc.at("peers")) {
    PeerInfo info;
    info.name = p.at("name").get<std::string>();
    info.available = p.value("available", false);
    info.reason = p.value("reason", "");
    info.format = p.value("format", "");
    info.version = p.value("version", "");
    info.method = p.value("method", "");
    report.peers.push_back(info);
    if (!info.available || !p.contains("results")) continue;
    for (const auto& res : p.at("results")) {
      const std::int64_t k = res.at("k").get<std::int64_t>();
      const std::int64_t n = res.at("n").get<std::int64_t>();
      const int m = res.at("m").get<int>();
      if (!res.contains("us") || res.at("us").is_null()) continue;
      for (auto& s : report.shapes) {
        if (s.shape.k != k || s.shape.n != n) continue;
        for (auto& r : s.rows) {
          if (r.m == m) r.peers.push_back({info.name, stat_from_json(res.at("us"))});
        }
      }
    }
  }
}

json to_json(const Report& report) {
  const BenchPlan& p = report.plan;
  json j;
  j["schema"] = kReportSchema;
  j["qmm_version"] = QMM_VERSION_STRING;
  j["created"] = report.created;
  j["command"] = report.command;
  j["device"] = device_json(report.device, report.device_type);
  j["build"] = report.build;
  j["config"] = {{"backend", report.device_type},
                 {"preset", p.preset},
                 {"bits", p.bits},
                 {"group_size", p.group_size},
                 {"dtype", dtype_name(p.dtype)},
                 {"transpose", p.transpose},
                 {"kernel", p.kernel},
                 {"m", p.ms},
                 {"budget_ms", p.budget_ms},
                 {"min_samples", p.min_samples},
                 {"rotation_mb", p.rotation_mb},
                 {"dense", p.dense},
                 {"method", report.method}};
  json shapes = json::array();
  for (const auto& s : report.shapes) {
    json js;
    js["k"] = s.shape.k;
    js["n"] = s.shape.n;
    js["key"] = s.shape.key();
    js["label"] = s.shape.label;
    js["weight_bytes"] = s.weight_bytes;
    js["rotation"] = {{"copies", s.copies}, {"bytes", s.rotation_bytes}, {"cold", s.cold},
                      {"calls_per_sample", s.calls_per_sample}};
    js["read_probe"] = {{"us", stat_json(s.probe_us)}, {"gbs", s.probe_gbs}};
    js["dense_copies"] = s.dense_copies;
    json rows = json::array();
    for (const auto& r : s.rows) {
      json jr;
      jr["m"] = r.m;
      jr["us"] = stat_json(r.us);
      jr["gbs"] = r.gbs;
      jr["pct_probe"] = r.pct_probe;
      jr["ratio_m1"] = r.ratio_m1;
      jr["ratio_prev"] = optional_number(r.ratio_prev);
      jr["x_bytes"] = r.x_bytes;
      jr["out_bytes"] = r.out_bytes;
      jr["dense_us"] = r.dense_us ? stat_json(*r.dense_us) : json(nullptr);
      jr["ratio_dense"] = optional_number(r.ratio_dense);
      const LaunchInfo& l = r.launch;
      jr["launch"] = {{"kernel", l.kernel},
                      {"grid", {l.grid[0], l.grid[1], l.grid[2]}},
                      {"block_threads", l.block_threads},
                      {"shared_bytes", l.shared_bytes},
                      {"blocks_per_sm", l.blocks_per_sm},
                      {"multiprocessors", l.multiprocessors},
                      {"split_k", l.split_k},
                      {"waves", l.waves()},
                      {"weight_bytes", l.weight_bytes},
                      {"min_weight_bytes", l.min_weight_bytes},
                      {"bytes_ratio", l.min_weight_bytes > 0 ? static_cast<double>(l.weight_bytes) / l.min_weight_bytes : 0.0},
                      {"workspace_bytes", l.workspace_bytes}};
      json peers = json::object();
      for (const auto& pp : r.peers) peers[pp.peer] = stat_json(pp.us);
      jr["peers"] = peers;
      jr["best_peer"] = r.best_peer.empty() ? json(nullptr) : json(r.best_peer);
      jr["ratio_best_peer"] = optional_number(r.ratio_best_peer);
      rows.push_back(jr);
    }
    js["rows"] = rows;
    json steps = json::array();
    for (const auto& st : s.steps) {
      steps.push_back({{"m", st.m}, {"prev_m", st.prev_m}, {"ratio", st.ratio}, {"causes", st.causes()},
                       {"evidence", st.evidence}});
    }
    js["steps"] = steps;
    shapes.push_back(js);
  }
  j["shapes"] = shapes;
  json targets = json::array();
  for (const auto& t : report.targets) {
    targets.push_back({{"name", t.name}, {"shape", t.shape}, {"pass", t.pass}, {"detail", t.detail}});
  }
  j["targets"] = {{"applies", report.targets_apply}, {"checks", targets}};
  json peers = json::array();
  for (const auto& p : report.peers) {
    peers.push_back({{"name", p.name}, {"available", p.available}, {"reason", p.reason}, {"format", p.format},
                     {"version", p.version}, {"method", p.method}});
  }
  j["peers"] = peers;
  j["peers_device"] = report.peers_device.is_null() ? json::object() : report.peers_device;
  return j;
}

std::string to_csv(const Report& report) {
  std::ostringstream o;
  o << "device,k,n,label,m,us_median,us_min,us_max,samples,gbs,pct_probe,ratio_m1,ratio_prev,probe_us,dense_us,"
       "ratio_dense,kernel,grid_x,grid_y,grid_z,block_threads,blocks_per_sm,waves,split_k,weight_bytes,"
       "min_weight_bytes,workspace_bytes,step,best_peer,ratio_best_peer\n";
  auto quote = [](const std::string& s) {
    std::string q = "\"";
    for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
    return q + "\"";
  };
  auto num = [](double v) { return printf_string("%.4g", v); };
  for (const auto& s : report.shapes) {
    for (const auto& r : s.rows) {
      bool step = false;
      for (const auto& st : s.steps) step = step || st.m == r.m;
      const LaunchInfo& l = r.launch;
      o << quote(report.device.name) << ',' << s.shape.k << ',' << s.shape.n << ',' << quote(s.shape.label) << ','
        << r.m << ',' << num(r.us.median) << ',' << num(r.us.min) << ',' << num(r.us.max) << ',' << r.us.samples
        << ',' << num(r.gbs) << ',' << num(r.pct_probe) << ',' << num(r.ratio_m1) << ','
        << (r.ratio_prev ? num(*r.ratio_prev) : "") << ',' << num(s.probe_us.median) << ','
        << (r.dense_us ? num(r.dense_us->median) : "") << ',' << (r.ratio_dense ? num(*r.ratio_dense) : "") << ','
        << quote(l.kernel) << ',' << l.grid[0] << ',' << l.grid[1] << ',' << l.grid[2] << ',' << l.block_threads
        << ',' << l.blocks_per_sm << ',' << num(l.waves()) << ',' << l.split_k << ',' << l.weight_bytes << ','
        << l.min_weight_bytes << ',' << l.workspace_bytes << ',' << (step ? 1 : 0) << ',' << quote(r.best_peer)
        << ',' << (r.ratio_best_peer ? num(*r.ratio_best_peer) : "") << '\n';
    }
  }
  return o.str();
}

void print_table(const Report& report, std::FILE* out) {
  const BenchPlan& p = report.plan;
  const DeviceInfo& d = report.device;
  std::fprintf(out, "qmm bench: %s (%s", d.name.c_str(), report.device_type.c_str());
  if (report.device_type == "cuda") {
    std::fprintf(out, ", %d SMs, sm_%d, L2 %s", d.multiprocessors, d.compute_capability,
                 human_bytes(static_cast<double>(d.l2_bytes)).c_str());
  } else {
    std::fprintf(out, ", %d threads, LLC %s", d.multiprocessors, human_bytes(static_cast<double>(d.l2_bytes)).c_str());
  }
  std::fprintf(out, ")\n");
  std::fprintf(out, "%d-bit, group %d, %s activations, transpose=%s, kernel %s; %s, median of >= %d samples, "
               "%.0f ms budget per case\n",
               p.bits, p.group_size, dtype_name(p.dtype), p.transpose ? "true" : "false",
               p.kernel.empty() ? "auto" : p.kernel.c_str(),
               report.method == "cuda-graph" ? "CUDA-graph replays timed with events" : "wall clock per call",
               p.min_samples, p.budget_ms);
  const bool have_peers = std::any_of(report.shapes.begin(), report.shapes.end(), [](const ShapeResult& s) {
    return std::any_of(s.rows.begin(), s.rows.end(), [](const Row& r) { return !r.peers.empty(); });
  });

  for (const auto& s : report.shapes) {
    const double llc = static_cast<double>(report.device.l2_bytes);
    std::string cache_note = "last-level cache size unknown";
    if (llc > 0) {
      cache_note = printf_string("%.1fx the ", s.rotation_bytes / llc) + (report.device_type == "cuda" ? "L2" : "LLC") +
                   (s.cold ? "" : ": below 4x, may be partly cached");
    }
    std::fprintf(out, "\n== K=%lld -> N=%lld%s%s: weights %s per call, rotation %d copies = %s (%s)\n",
                 static_cast<long long>(s.shape.k), static_cast<long long>(s.shape.n), s.shape.label.empty() ? "" : "  ",
                 s.shape.label.c_str(), human_bytes(static_cast<double>(s.weight_bytes)).c_str(), s.copies,
                 human_bytes(static_cast<double>(s.rotation_bytes)).c_str(), cache_note.c_str());
    std::fprintf(out, "   read probe %.2f us (%.2f-%.2f) = %.0f GB/s\n", s.probe_us.median, s.probe_us.min,
                 s.probe_us.max, s.probe_gbs);
    std::fprintf(out, "%5s %9s %19s %6s %6s %5s %5s %9s %6s", "M", "us", "(min-max)", "GB/s", "%probe", "xM=1",
                 "xM-1", "dense us", "xdense");
    if (have_peers) std::fprintf(out, " %9s %-10s", "peer us", "(best)");
    std::fprintf(out, "  %-24s %-12s %5s %5s %3s %5s\n", "kernel", "grid", "waves", "bytes", "occ", "ws");
    for (const auto& r : s.rows) {
      bool step = false;
      for (const auto& st : s.steps) step = step || st.m == r.m;
      const std::string range = printf_string("(%.2f", r.us.min) + printf_string("-%.2f)", r.us.max);
      const char* gbs_fmt = r.gbs < 10 ? "%.2f" : (r.gbs < 100 ? "%.1f" : "%.0f");
      std::fprintf(out, "%5d %9.2f %19s %6s %5.0f%% %5.2f %5s %9s %6s", r.m, r.us.median, range.c_str(),
                   printf_string(gbs_fmt, r.gbs).c_str(),
                   r.pct_probe, r.ratio_m1, r.ratio_prev ? printf_string("%.2f", *r.ratio_prev).c_str() : "-",
                   r.dense_us ? printf_string("%.2f", r.dense_us->median).c_str() : "-",
                   r.ratio_dense ? printf_string("%.2f", *r.ratio_dense).c_str() : "-");
      if (have_peers) {
        double best = 0;
        std::string name;
        for (const auto& pp : r.peers) {
          if (pp.us.median > 0 && (best == 0 || pp.us.median < best)) {
            best = pp.us.median;
            name = pp.peer;
          }
        }
        std::fprintf(out, " %9s %-10s", best > 0 ? printf_string("%.2f", best).c_str() : "-", name.c_str());
      }
      const LaunchInfo& l = r.launch;
      const double bytes_ratio = l.min_weight_bytes > 0 ? static_cast<double>(l.weight_bytes) / l.min_weight_bytes : 0;
      std::fprintf(out, "  %-24s %-12s %5.2f %4.2fx %3d %5s%s\n", l.kernel.c_str(), grid_string(l).c_str(), l.waves(),
                   bytes_ratio, l.blocks_per_sm, short_bytes(static_cast<double>(l.workspace_bytes)).c_str(),
                   step ? "  <- step" : "");
    }
    if (s.steps.empty()) {
      std::fprintf(out, "   steps: none (no t(M)/t(M-1) > 1.10)\n");
    } else {
      for (const auto& st : s.steps) std::fprintf(out, "   step %s\n", st.summary().c_str());
    }
  }

  if (!report.peers.empty()) {
    const std::string peers_card = report.peers_device.value("name", std::string("device unknown"));
    std::fprintf(out, "\npeers (%s):\n", peers_card.c_str());
    if (peers_card != d.name) {
      std::fprintf(out, "   note: the peers ran on %s, qmm on %s: compare only runs on the same card\n",
                   peers_card.c_str(), d.name.c_str());
    }
    for (const auto& pi : report.peers) {
      if (pi.available) {
        std::fprintf(out, "   %-12s ran: %s%s%s\n", pi.name.c_str(), pi.format.c_str(), pi.version.empty() ? "" : ", ",
                     pi.version.c_str());
      } else {
        // The reason may carry the peer's last lines of output: the table gets the first line.
        const std::size_t eol = pi.reason.find('\n');
        std::fprintf(out, "   %-12s did not run: %s%s\n", pi.name.c_str(), pi.reason.substr(0, eol).c_str(),
                     eol == std::string::npos ? "" : " (the whole reason is in the JSON)");
      }
    }
  }

  if (!report.targets.empty()) {
    std::fprintf(out, "\ntargets of issue 3 (set for CUDA, 4-bit, group 64, fp16)%s:\n",
                 report.targets_apply ? "" : " - for information only: this run is another configuration");
    for (const auto& t : report.targets) {
      std::fprintf(out, "   %s %-12s %-12s %s\n", t.pass ? "PASS" : "FAIL", t.name.c_str(), t.shape.c_str(),
                   t.detail.c_str());
    }
  }
}

}  // namespace qmm::bench
