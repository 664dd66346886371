// `qmm bench` and `qmm info`: flag parsing, errors, the report's JSON schema and the target
// checks. The process tests run the built `qmm` binary on tiny CPU shapes.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "qmm/qmm.h"
#include "tools/qmm/bench_options.h"
#include "tools/qmm/bench_report.h"
#include "tools/qmm/bench_targets.h"

namespace qmm::bench {
namespace {

using nlohmann::json;

// ---- parsing --------------------------------------------------------------------------------

TEST(BenchFlags, MList) {
  const auto ms = parse_m_list("1-16,32,64");
  ASSERT_EQ(ms.size(), 18u);
  EXPECT_EQ(ms.front(), 1);
  EXPECT_EQ(ms[15], 16);
  EXPECT_EQ(ms[16], 32);
  EXPECT_EQ(ms.back(), 64);
  EXPECT_EQ(parse_m_list("3, 1,2,2"), (std::vector<int>{1, 2, 3}));
  EXPECT_EQ(parse_m_list("5"), (std::vector<int>{5}));
  EXPECT_EQ(parse_m_list("7-7"), (std::vector<int>{7}));
}

TEST(BenchFlags, MListErrors) {
  for (const char* bad : {"0", "0-4", "4-2", "a", "", "1,,2", "-3", "1-", "2.5", "1-100000"}) {
    EXPECT_THROW(parse_m_list(bad), std::invalid_argument) << bad;
  }
  try {
    parse_m_list("0");
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("at least 1"), std::string::npos) << e.what();
  }
}

TEST(BenchFlags, Shape) {
  const ShapeSpec s = parse_shape("5120:13824");
  EXPECT_EQ(s.k, 5120);
  EXPECT_EQ(s.n, 13824);
  EXPECT_EQ(s.key(), "5120:13824");
  for (const char* bad : {"5120", "a:b", "0:5", "5:0", "5120x13824", ":", "1:2:3"}) {
    EXPECT_THROW(parse_shape(bad), std::invalid_argument) << bad;
  }
}

TEST(BenchFlags, Presets) {
  const Preset& q = find_preset("qwen2.5-14b");
  ASSERT_EQ(q.shapes.size(), 4u);
  EXPECT_EQ(q.shapes[0].key(), "5120:5120");
  EXPECT_EQ(q.shapes[1].key(), "5120:1024");
  EXPECT_EQ(q.shapes[2].key(), "5120:13824");
  EXPECT_EQ(q.shapes[3].key(), "13824:5120");
  EXPECT_EQ(find_preset("llama-3-8b").shapes[2].key(), "4096:14336");
  EXPECT_EQ(find_preset("qwen2.5-32b").shapes[3].key(), "27648:5120");
  EXPECT_EQ(presets().front().name, "qwen2.5-14b");
  for (const auto& p : presets()) {
    for (const auto& s : p.shapes) EXPECT_EQ(s.k % 128, 0) << p.name << " " << s.key();
  }
  EXPECT_THROW(find_preset("gpt-5"), std::invalid_argument);
}

TEST(BenchFlags, DefaultPlan) {
  const BenchPlan plan = make_plan(BenchOptions{});
  EXPECT_EQ(plan.preset, "qwen2.5-14b");
  EXPECT_EQ(plan.shapes.size(), 4u);
  EXPECT_EQ(plan.ms, (std::vector<int>{1, 2, 3, 4}));
  EXPECT_EQ(plan.bits, 4);
  EXPECT_EQ(plan.group_size, 64);
  EXPECT_EQ(plan.dtype, Dtype::float16);
  EXPECT_TRUE(plan.transpose);
  EXPECT_TRUE(plan.kernel.empty());
  EXPECT_EQ(plan.device.type, cuda_available() ? DeviceType::cuda : DeviceType::cpu);
}

TEST(BenchFlags, PlanResolution) {
  BenchOptions o;
  o.backend = "cpu";
  o.shapes = {"256:128"};
  o.m = "4";
  BenchPlan plan = make_plan(o);
  EXPECT_EQ(plan.preset, "");
  ASSERT_EQ(plan.shapes.size(), 1u);
  EXPECT_EQ(plan.ms, (std::vector<int>{1, 4}));  // M=1 is always measured: ratios are to it
  o.preset = "llama-3-8b";
  plan = make_plan(o);
  EXPECT_EQ(plan.shapes.size(), 5u);  // preset and --shape together
  o.transpose = "false";
  o.shapes = {"100:128"};  // transpose=false groups along N
  o.preset.clear();
  EXPECT_FALSE(make_plan(o).transpose);
  o.kernel = "reference";
  EXPECT_EQ(make_plan(o).kernel, "reference");
}

TEST(BenchFlags, PlanErrors) {
  auto expect_error = [](BenchOptions o, const std::string& needle) {
    try {
      make_plan(o);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << "one line: " << e.what();
    }
  };
  BenchOptions o;
  o.backend = "cpu";
  BenchOptions b = o;
  b.preset = "nope";
  expect_error(b, "unknown preset 'nope'");
  b = o;
  b.m = "0";
  expect_error(b, "at least 1");
  b = o;
  b.shapes = {"100:128"};
  expect_error(b, "not divisible by the group size 64");
  b = o;
  b.kernel = "no_such_kernel";
  expect_error(b, "unknown kernel 'no_such_kernel'");
  b = o;
  b.backend = "tpu";
  expect_error(b, "unknown backend");
  b = o;
  b.bits = 7;
  expect_error(b, "--bits");
  b = o;
  b.group_size = 48;
  expect_error(b, "--group-size");
  b = o;
  b.dtype = "int8";
  expect_error(b, "--dtype");
  b = o;
  b.transpose = "maybe";
  expect_error(b, "--transpose");
  b = o;
  b.budget_ms = 0;
  expect_error(b, "--budget-ms");
  if (!cuda_available()) {
    b = o;
    b.backend = "cuda";
    expect_error(b, "no CUDA device");
  }
}

// ---- report, JSON schema, targets -------------------------------------------------------------

Report synthetic_report() {
  Report r;
  r.device.name = "Test GPU";
  r.device.multiprocessors = 132;
  r.device_type = "cuda";
  r.method = "cuda-graph";
  r.plan.preset = "qwen2.5-14b";
  r.plan.ms = {1, 2, 3, 16};
  r.build = {{"version", "0"}};
  ShapeResult s;
  s.shape = {5120, 13824, "gate_proj/up_proj"};
  s.weight_bytes = 39813120;
  s.copies = 6;
  s.rotation_bytes = 6 * s.weight_bytes;
  s.cold = true;
  s.probe_us = {14.0, 13.9, 14.2, 20};
  const double times[] = {15.0, 15.2, 18.0, 17.5};
  const int ms[] = {1, 2, 3, 16};
  for (int i = 0; i < 4; ++i) {
    Row row;
    row.m = ms[i];
    row.us = {times[i], times[i] * 0.99, times[i] * 1.02, 20};
    row.dense_us = Stat{51.5, 51.0, 52.0, 20};
    row.launch.kernel = ms[i] == 3 ? "b" : "a";
    row.launch.grid[0] = 132;
    row.launch.multiprocessors = 132;
    row.launch.blocks_per_sm = 1;
    row.launch.weight_bytes = s.weight_bytes;
    row.launch.min_weight_bytes = s.weight_bytes;
    row.x_bytes = ms[i] * 5120 * 2;
    row.out_bytes = ms[i] * 13824 * 2;
    s.rows.push_back(row);
  }
  r.shapes.push_back(s);
  return r;
}

TEST(BenchReport, DerivedFieldsStepsAndTargets) {
  Report r = synthetic_report();
  fill_derived(r);
  const ShapeResult& s = r.shapes[0];
  EXPECT_NEAR(s.rows[1].ratio_m1, 15.2 / 15.0, 1e-12);
  ASSERT_TRUE(s.rows[2].ratio_prev.has_value());
  EXPECT_NEAR(*s.rows[2].ratio_prev, 18.0 / 15.2, 1e-12);
  EXPECT_FALSE(s.rows[3].ratio_prev.has_value());  // M=15 not measured
  EXPECT_NEAR(s.rows[0].pct_probe, 100 * 14.0 / 15.0, 1e-9);
  ASSERT_EQ(s.steps.size(), 1u);
  EXPECT_EQ(s.steps[0].m, 3);
  EXPECT_TRUE(s.steps[0].kernel_changed);

  EXPECT_TRUE(r.targets_apply);
  std::map<std::string, bool> verdict;
  for (const auto& t : r.targets) verdict[t.name] = t.pass;
  EXPECT_FALSE(verdict.at("probe_ratio"));  // 18/14 = 1.29 > 1.10
  EXPECT_TRUE(verdict.at("flat_16"));       // 17.5/15 = 1.17 <= 1.20
  EXPECT_FALSE(verdict.at("no_step"));      // 1.18 at M=3
  EXPECT_TRUE(verdict.at("dense"));
  EXPECT_EQ(verdict.count("peers"), 0u);    // no peers merged
}

TEST(BenchReport, JsonSchema) {
  Report r = synthetic_report();
  fill_derived(r);
  const json j = to_json(r);
  EXPECT_EQ(j.at("schema"), "qmm-bench/1");
  for (const char* key : {"qmm_version", "created", "command", "device", "build", "config", "shapes", "targets",
                          "peers", "peers_device"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  EXPECT_EQ(j.at("device").at("name"), "Test GPU");
  const json& s = j.at("shapes").at(0);
  for (const char* key : {"k", "n", "key", "label", "weight_bytes", "rotation", "read_probe", "rows", "steps"}) {
    EXPECT_TRUE(s.contains(key)) << key;
  }
  const json& row = s.at("rows").at(2);
  for (const char* key : {"m", "us", "gbs", "pct_probe", "ratio_m1", "ratio_prev", "dense_us", "ratio_dense", "launch",
                          "peers", "best_peer", "ratio_best_peer", "x_bytes", "out_bytes"}) {
    EXPECT_TRUE(row.contains(key)) << key;
  }
  for (const char* key : {"median", "min", "max", "samples"}) EXPECT_TRUE(row.at("us").contains(key)) << key;
  for (const char* key : {"kernel", "grid", "block_threads", "shared_bytes", "blocks_per_sm", "multiprocessors",
                          "split_k", "waves", "weight_bytes", "min_weight_bytes", "bytes_ratio", "workspace_bytes"}) {
    EXPECT_TRUE(row.at("launch").contains(key)) << key;
  }
  EXPECT_EQ(s.at("steps").at(0).at("m"), 3);
  EXPECT_EQ(s.at("steps").at(0).at("causes").at(0), "kernel_change");
  EXPECT_TRUE(s.at("rows").at(3).at("ratio_prev").is_null());
  EXPECT_TRUE(j.at("targets").at("applies").get<bool>());
}

TEST(BenchReport, MergePeers) {
  Report r = synthetic_report();
  const json peers = {
      {"schema", "qmm-peers/1"},
      {"device", {{"name", "Test GPU"}}},
      {"peers",
       {{{"name", "tinygemm"},
         {"available", true},
         {"format", "int4 g64"},
         {"results",
          {{{"k", 5120}, {"n", 13824}, {"m", 1}, {"us", {{"median", 21.8}, {"min", 21.5}, {"max", 22.0}}}},
           {{"k", 5120}, {"n", 13824}, {"m", 3}, {"us", 25.1}},
           {{"k", 1}, {"n", 1}, {"m", 1}, {"us", 1.0}}}}},
        {{"name", "gemlite"}, {"available", false}, {"reason", "ImportError: no module named gemlite\nlast line"}}}}};
  merge_peers(r, peers);
  fill_derived(r);
  ASSERT_EQ(r.peers.size(), 2u);
  EXPECT_FALSE(r.peers[1].available);
  EXPECT_EQ(r.shapes[0].rows[0].peers.size(), 1u);
  EXPECT_EQ(r.shapes[0].rows[0].best_peer, "tinygemm");
  EXPECT_NEAR(*r.shapes[0].rows[0].ratio_best_peer, 15.0 / 21.8, 1e-12);
  EXPECT_TRUE(r.shapes[0].rows[1].peers.empty());
  bool peers_checked = false;
  for (const auto& t : r.targets) {
    if (t.name == "peers") {
      peers_checked = true;
      EXPECT_TRUE(t.pass) << t.detail;
      // A pass against the peers that ran; the one that did not is named.
      EXPECT_NE(t.detail.find("not in this run: gemlite"), std::string::npos) << t.detail;
    }
  }
  EXPECT_TRUE(peers_checked);
  // The table prints the reason's first line only.
  char* text = nullptr;
  std::size_t size = 0;
  std::FILE* out = open_memstream(&text, &size);
  ASSERT_NE(out, nullptr);
  print_table(r, out);
  std::fclose(out);
  const std::string table(text, size);
  std::free(text);
  const std::string first_line = "gemlite      did not run: ImportError: no module named gemlite";
  EXPECT_NE(table.find(first_line + " (the whole reason is in the JSON)\n"), std::string::npos) << table;
  EXPECT_EQ(table.find("last line"), std::string::npos);
  const json j = to_json(r);
  EXPECT_EQ(j.at("peers").at(1).at("reason"), "ImportError: no module named gemlite\nlast line");
  EXPECT_NEAR(j.at("shapes").at(0).at("rows").at(2).at("peers").at("tinygemm").at("median").get<double>(), 25.1, 1e-12);
  EXPECT_THROW(merge_peers(r, json{{"schema", "other"}}), std::invalid_argument);
}

TEST(BenchReport, Csv) {
  Report r = synthetic_report();
  fill_derived(r);
  const std::string csv = to_csv(r);
  std::istringstream in(csv);
  std::string line;
  int lines = 0;
  while (std::getline(in, line)) ++lines;
  EXPECT_EQ(lines, 5);  // header + 4 rows
  EXPECT_EQ(csv.rfind("device,k,n,label,m,us_median", 0), 0u);
}

// ---- the qmm binary ---------------------------------------------------------------------------

struct CliRun {
  int rc = -1;
  std::string out, err;
};

std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

CliRun run_qmm(const std::string& args) {
  const std::string dir = ::testing::TempDir();
  const std::string out = dir + "/qmm_cli_out_" + std::to_string(getpid());
  const std::string err = dir + "/qmm_cli_err_" + std::to_string(getpid());
  const std::string cmd = std::string(QMM_CLI_PATH) + " " + args + " >" + out + " 2>" + err + " </dev/null";
  const int status = std::system(cmd.c_str());
  CliRun r;
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = slurp(out);
  r.err = slurp(err);
  std::remove(out.c_str());
  std::remove(err.c_str());
  return r;
}

int count_lines(const std::string& s) {
  int n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

TEST(QmmCli, BadFlagsGiveOneLineErrors) {
  const char* cases[][2] = {
      {"bench --backend cpu --preset nope", "unknown preset 'nope'"},
      {"bench --backend cpu --m 0", "at least 1"},
      {"bench --backend cpu --m 1-x", "--m"},
      {"bench --backend cpu --shape 100:128", "not divisible by the group size"},
      {"bench --backend cpu --kernel no_such_kernel", "unknown kernel 'no_such_kernel'"},
      {"bench --backend cpu --bits 7", "--bits"},
      {"bench --backend quantum", "unknown backend"},
  };
  for (const auto& c : cases) {
    const CliRun r = run_qmm(c[0]);
    EXPECT_NE(r.rc, 0) << c[0];
    EXPECT_EQ(count_lines(r.err), 1) << c[0] << ": " << r.err;
    EXPECT_NE(r.err.find(c[1]), std::string::npos) << c[0] << ": " << r.err;
    EXPECT_TRUE(r.out.empty()) << c[0];
  }
  const CliRun unknown = run_qmm("bench --no-such-flag");
  EXPECT_NE(unknown.rc, 0);
}

TEST(QmmCli, Help) {
  const CliRun r = run_qmm("bench --help");
  EXPECT_EQ(r.rc, 0);
  for (const char* flag : {"--backend", "--shape", "--preset", "--m", "--bits", "--group-size", "--dtype", "--transpose",
                           "--kernel", "--json", "--csv", "--plot", "--peers"}) {
    EXPECT_NE(r.out.find(flag), std::string::npos) << flag;
  }
  EXPECT_EQ(run_qmm("info --help").rc, 0);
}

TEST(QmmCli, TinyCpuRunWritesJsonAndCsv) {
  const std::string dir = ::testing::TempDir();
  const std::string json_path = dir + "/qmm_bench_test_" + std::to_string(getpid()) + ".json";
  const std::string csv_path = dir + "/qmm_bench_test_" + std::to_string(getpid()) + ".csv";
  const CliRun r = run_qmm("bench --backend cpu --shape 256:128 --shape 128:64 --m 1-2 --budget-ms 5 --min-samples 3 "
                        "--rotation-mb 1 --json " + json_path + " --csv " + csv_path);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("K=256 -> N=128"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("read probe"), std::string::npos);
  EXPECT_EQ(r.out.find("[qmm bench"), std::string::npos) << "progress belongs on stderr";
  EXPECT_NE(r.err.find("[qmm bench"), std::string::npos) << "progress line on stderr";

  const json j = json::parse(slurp(json_path));
  EXPECT_EQ(j.at("schema"), "qmm-bench/1");
  EXPECT_EQ(j.at("device").at("type"), "cpu");
  EXPECT_EQ(j.at("config").at("method"), "wall-clock");
  EXPECT_EQ(j.at("config").at("m"), (json{1, 2}));
  EXPECT_FALSE(j.at("build").at("cuda").is_null());
  ASSERT_EQ(j.at("shapes").size(), 2u);
  for (const auto& s : j.at("shapes")) {
    EXPECT_GT(s.at("read_probe").at("us").at("median").get<double>(), 0);
    ASSERT_EQ(s.at("rows").size(), 2u);
    for (const auto& row : s.at("rows")) {
      EXPECT_GT(row.at("us").at("median").get<double>(), 0);
      EXPECT_GE(row.at("us").at("samples").get<int>(), 3);
      EXPECT_LE(row.at("us").at("min").get<double>(), row.at("us").at("median").get<double>());
      EXPECT_GE(row.at("us").at("max").get<double>(), row.at("us").at("median").get<double>());
      EXPECT_GT(row.at("dense_us").at("median").get<double>(), 0);
      EXPECT_EQ(row.at("launch").at("kernel"), "cpu_weight_stationary");
      EXPECT_GT(row.at("launch").at("min_weight_bytes").get<std::int64_t>(), 0);
    }
    EXPECT_TRUE(s.at("rows").at(0).at("ratio_prev").is_null());
    EXPECT_TRUE(s.at("rows").at(1).at("ratio_prev").is_number());
    EXPECT_TRUE(s.at("steps").is_array());
  }
  EXPECT_EQ(j.at("shapes").at(0).at("weight_bytes").get<std::int64_t>(), 128 * 256 / 2 + 2 * 128 * 4 * 2);
  EXPECT_FALSE(j.at("targets").at("applies").get<bool>());
  EXPECT_EQ(count_lines(slurp(csv_path)), 5);
  std::remove(json_path.c_str());
  std::remove(csv_path.c_str());
}

TEST(QmmCli, ForcedKernelAndTransposeFalse) {
  const CliRun r = run_qmm("bench --backend cpu --shape 128:64 --m 2 --budget-ms 2 --min-samples 2 --rotation-mb 1 "
                        "--kernel reference --transpose false --no-dense -q");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("reference"), std::string::npos);
  EXPECT_TRUE(r.err.empty()) << r.err;
}

TEST(QmmCli, InfoJson) {
  const CliRun r = run_qmm("info --no-probe --json");
  ASSERT_EQ(r.rc, 0) << r.err;
  const json j = json::parse(r.out);
  EXPECT_EQ(j.at("build").at("version"), QMM_VERSION_STRING);
  EXPECT_EQ(j.at("devices").at(0).at("type"), "cpu");
  EXPECT_FALSE(j.at("devices").at(0).at("kernels").empty());
}

// ---- on a GPU (ctest label cuda; skipped without one) -----------------------------------------

TEST(QmmCliCuda, TinyCudaRunCapturesAndTimes) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const std::string json_path = ::testing::TempDir() + "/qmm_bench_cuda_" + std::to_string(getpid()) + ".json";
  const CliRun r = run_qmm("bench --backend cuda --shape 256:128 --shape 5120:1024 --m 1-3 --budget-ms 20 --json " +
                           json_path);
  ASSERT_EQ(r.rc, 0) << r.err;
  const json j = json::parse(slurp(json_path));
  EXPECT_EQ(j.at("device").at("type"), "cuda");
  EXPECT_EQ(j.at("config").at("method"), "cuda-graph");
  EXPECT_TRUE(j.at("build").at("cuda").get<bool>());
  const auto names = kernel_names(Device::cuda(0), "quantized_matmul");
  for (const auto& s : j.at("shapes")) {
    EXPECT_GT(s.at("read_probe").at("us").at("median").get<double>(), 0);
    EXPECT_GE(s.at("rotation").at("calls_per_sample").get<int>(), 20);
    for (const auto& row : s.at("rows")) {
      EXPECT_GT(row.at("us").at("median").get<double>(), 0);
      EXPECT_GE(row.at("us").at("samples").get<int>(), 10);
      EXPECT_GT(row.at("dense_us").at("median").get<double>(), 0);
      const std::string kernel = row.at("launch").at("kernel");
      EXPECT_NE(std::find(names.begin(), names.end(), kernel), names.end()) << kernel;
      EXPECT_GT(row.at("launch").at("waves").get<double>(), 0);
    }
  }
  // 5120:1024 rotates over >= 4x L2.
  EXPECT_TRUE(j.at("shapes").at(1).at("rotation").at("cold").get<bool>());
  std::remove(json_path.c_str());
}

TEST(QmmCliCuda, InfoMeasuresTheGpu) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const CliRun r = run_qmm("info --json");
  ASSERT_EQ(r.rc, 0) << r.err;
  const json j = json::parse(r.out);
  ASSERT_GE(j.at("devices").size(), 2u);
  const json& gpu = j.at("devices").at(1);
  EXPECT_EQ(gpu.at("type"), "cuda");
  EXPECT_GT(gpu.at("multiprocessors").get<int>(), 0);
  EXPECT_GT(gpu.at("l2_bytes").get<std::int64_t>(), 0);
  EXPECT_GT(gpu.at("read_gbs").get<double>(), 100.0);
}

}  // namespace
}  // namespace qmm::bench
