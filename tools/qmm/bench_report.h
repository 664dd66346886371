// What `qmm bench` measured, and its three renderings: the table on stdout, the JSON report
// (schema "qmm-bench/1", documented in README.md "## qmm bench") and the CSV.
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "qmm/device.h"
#include "qmm/ops.h"
#include "tools/qmm/bench_options.h"
#include "tools/qmm/step_detector.h"

namespace qmm::bench {

inline constexpr const char* kReportSchema = "qmm-bench/1";
inline constexpr const char* kPeersSchema = "qmm-peers/1";

/// Median, min and max of a set of timings, in microseconds.
struct Stat {
  double median = 0;
  double min = 0;
  double max = 0;
  int samples = 0;
};
/// Median / min / max of samples (empty -> zeros).
Stat summarize(std::vector<double> samples);

/// One peer's time at one (shape, M).
struct PeerPoint {
  std::string peer;
  Stat us;
};

struct Row {
  int m = 0;
  Stat us;                          ///< per call
  std::int64_t x_bytes = 0;
  std::int64_t out_bytes = 0;
  std::optional<Stat> dense_us;     ///< dense equivalent at this M
  LaunchInfo launch;
  std::vector<PeerPoint> peers;     ///< merged from a peers file
  // Derived (fill_derived):
  double gbs = 0;                   ///< (min weight bytes + x + out) / median time
  double pct_probe = 0;             ///< 100 * probe time / time
  double ratio_m1 = 0;              ///< t(M) / t(1)
  std::optional<double> ratio_prev; ///< t(M) / t(M-1) when M-1 was measured
  std::optional<double> ratio_dense;      ///< t / t(dense)
  std::optional<double> ratio_best_peer;  ///< t / t(fastest peer)
  std::string best_peer;
};

struct ShapeResult {
  ShapeSpec shape;
  std::int64_t weight_bytes = 0;    ///< one copy: w_q + scales + biases
  int copies = 0;                   ///< weight copies in the rotation
  std::int64_t rotation_bytes = 0;  ///< copies * weight_bytes
  bool cold = false;                ///< rotation >= 4x the last-level cache
  int calls_per_sample = 0;         ///< calls timed together (CUDA: calls per graph replay)
  Stat probe_us;                    ///< pure read of the same bytes, per call
  double probe_gbs = 0;
  int dense_copies = 0;
  std::vector<Row> rows;
  std::vector<Step> steps;          ///< derived
};

struct TargetCheck {
  std::string name;    ///< e.g. "probe_ratio"
  std::string shape;   ///< "K:N" or "" for all
  bool pass = false;
  std::string detail;  ///< the numbers behind the verdict
};

struct PeerInfo {
  std::string name;
  bool available = false;
  std::string reason;  ///< why it could not run
  std::string format;  ///< what it quantizes to
  std::string version;
  std::string method;
};

struct Report {
  DeviceInfo device;
  std::string device_type;   ///< "cpu" | "cuda"
  std::string method;        ///< "cuda-graph" | "wall-clock"
  std::string created;       ///< ISO-8601 UTC
  std::string command;       ///< the command line
  nlohmann::json build;      ///< version, cuda, compiler, ...
  BenchPlan plan;
  double read_probe_note_gbs = 0;
  std::vector<ShapeResult> shapes;
  std::vector<TargetCheck> targets;  ///< derived
  bool targets_apply = false;        ///< the run is the configuration issue 3 sets targets for
  std::vector<PeerInfo> peers;
  nlohmann::json peers_device;       ///< the card the peers ran on
};

/// Fills every derived field: per-row ratios and GB/s, steps per shape, target checks.
void fill_derived(Report& report);
/// Merges a "qmm-peers/1" document into the report (per-row peer times, peer list). Throws
/// std::invalid_argument on a wrong schema.
void merge_peers(Report& report, const nlohmann::json& peers);

nlohmann::json to_json(const Report& report);
std::string to_csv(const Report& report);
/// The human table (stdout).
void print_table(const Report& report, std::FILE* out);

}  // namespace qmm::bench
