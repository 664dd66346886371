// `qmm bench`: the cost of every M, beside a read probe and the dense equivalent, with the steps
// explained. Flags and the JSON schema are documented in README.md "## qmm bench".
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>

#include "tools/qmm/bench_options.h"
#include "tools/qmm/bench_report.h"
#include "tools/qmm/bench_runner.h"
#include "tools/qmm/commands.h"

#ifndef QMM_SOURCE_DIR
#define QMM_SOURCE_DIR "."
#endif

namespace qmm::cli {

namespace {

using bench::BenchOptions;

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

/// The command line that reproduces this run (the flags as given, in canonical order).
std::string command_line(const BenchOptions& o) {
  std::ostringstream c;
  c << "qmm bench --backend " << o.backend;
  if (!o.preset.empty()) c << " --preset " << o.preset;
  for (const auto& s : o.shapes) c << " --shape " << s;
  c << " --m " << o.m << " --bits " << o.bits << " --group-size " << o.group_size << " --dtype " << o.dtype
    << " --transpose " << o.transpose;
  if (!o.kernel.empty()) c << " --kernel " << o.kernel;
  c << " --budget-ms " << o.budget_ms << " --min-samples " << o.min_samples;
  if (o.rotation_mb > 0) c << " --rotation-mb " << o.rotation_mb;
  if (o.no_dense) c << " --no-dense";
  return c.str();
}

void write_file(const std::string& path, const std::string& text, const char* flag) {
  std::ofstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error(std::string(flag) + ": cannot write '" + path + "'");
  f << text;
  if (!f) throw std::runtime_error(std::string(flag) + ": cannot write '" + path + "'");
}

nlohmann::json read_json(const std::string& path, const char* flag) {
  std::ifstream f(path);
  if (!f) throw std::runtime_error(std::string(flag) + ": cannot read '" + path + "'");
  try {
    return nlohmann::json::parse(f);
  } catch (const std::exception& e) {
    throw std::runtime_error(std::string(flag) + ": '" + path + "' is not valid JSON");
  }
}

/// The Python that draws the plot: $QMM_PYTHON, else the project's .venv, else python3.
std::string python_for_plot() {
  if (const char* p = std::getenv("QMM_PYTHON"); p && *p) return p;
  const std::string venv = std::string(QMM_SOURCE_DIR) + "/.venv/bin/python";
  if (access(venv.c_str(), X_OK) == 0) return venv;
  return "python3";
}

void draw_plot(const std::string& json_path, const std::string& png_path) {
  std::string script = std::string(QMM_SOURCE_DIR) + "/bench/plot_bench.py";
  if (const char* s = std::getenv("QMM_PLOT_SCRIPT"); s && *s) script = s;
  const std::string cmd = shell_quote(python_for_plot()) + " " + shell_quote(script) + " " + shell_quote(json_path) +
                          " -o " + shell_quote(png_path) + " 1>&2";
  const int rc = std::system(cmd.c_str());
  if (rc != 0) throw std::runtime_error("--plot: " + script + " failed (exit status " + std::to_string(rc) + ")");
}

void run(const BenchOptions& o) {
  const bench::BenchPlan plan = bench::make_plan(o);
  // Read the peers file before the (long) run so a bad path fails at once.
  nlohmann::json peers;
  if (!o.peers_path.empty()) peers = read_json(o.peers_path, "--peers");

  bench::Report report = bench::run_bench(plan, command_line(o), o.quiet);
  if (!o.peers_path.empty()) bench::merge_peers(report, peers);
  bench::fill_derived(report);

  bench::print_table(report, stdout);
  std::fflush(stdout);

  const std::string json_text = bench::to_json(report).dump(2) + "\n";
  if (!o.json_path.empty()) write_file(o.json_path, json_text, "--json");
  if (!o.csv_path.empty()) write_file(o.csv_path, bench::to_csv(report), "--csv");
  if (!o.plot_path.empty()) {
    std::string json_path = o.json_path;
    if (json_path.empty()) {
      json_path = o.plot_path + ".json";
      write_file(json_path, json_text, "--plot");
    }
    draw_plot(json_path, o.plot_path);
  }
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto opts = std::make_shared<BenchOptions>();
  auto* cmd = app.add_subcommand(
      "bench",
      "Time quantized_matmul for every M on cold weights, beside a pure-read probe of the same bytes and the dense "
      "equivalent, and explain any step. With no flags: Qwen2.5-14B's four layer shapes, 4-bit, group 64, fp16, "
      "M=1..4, on CUDA when a GPU is present, else on the CPU.");
  cmd->add_option("--backend", opts->backend, "cpu, cuda or auto (CUDA when a GPU is present)")->capture_default_str();
  cmd->add_option("--shape", opts->shapes, "weight shape K:N (inputs:outputs), repeatable");
  cmd->add_option("--preset", opts->preset,
                  "layer shapes of a model: qwen2.5-14b (default), qwen2.5-7b, qwen2.5-32b, llama-3-8b, llama-3-70b");
  cmd->add_option("--m", opts->m, "rows of x: a list of numbers and ranges, e.g. 1-16,32,64 (M=1 is always run)")
      ->capture_default_str();
  cmd->add_option("--bits", opts->bits, "bits per weight: 2, 3, 4, 5, 6 or 8")->capture_default_str();
  cmd->add_option("--group-size", opts->group_size, "quantization group: 32, 64 or 128")->capture_default_str();
  cmd->add_option("--dtype", opts->dtype, "activation and scale dtype: float16, bfloat16 or float32")
      ->capture_default_str();
  cmd->add_option("--transpose", opts->transpose, "true: x @ W.T with W (N, K) (the Linear layout); false: x @ W")
      ->capture_default_str();
  cmd->add_option("--kernel", opts->kernel, "force a kernel configuration (see `qmm info`)");
  cmd->add_option("--json", opts->json_path, "write the report as JSON (schema qmm-bench/1)");
  cmd->add_option("--csv", opts->csv_path, "write one CSV line per (shape, M)");
  cmd->add_option("--plot", opts->plot_path, "draw time vs M per shape into a PNG (bench/plot_bench.py, matplotlib)");
  cmd->add_option("--peers", opts->peers_path, "merge a peers file (qmm-peers/1, from bench/peers/run_peers.py)");
  cmd->add_option("--budget-ms", opts->budget_ms, "time budget per timed case, milliseconds")->capture_default_str();
  cmd->add_option("--min-samples", opts->min_samples, "samples per case at least (graph replays on CUDA, calls on CPU)")
      ->capture_default_str();
  cmd->add_option("--rotation-mb", opts->rotation_mb,
                  "total size of the rotated weight copies, MB (default: 4x L2 on CUDA; 4x L3 and >= 256 MB on CPU)");
  cmd->add_option("--device", opts->device, "CUDA device index")->capture_default_str();
  cmd->add_flag("--no-dense", opts->no_dense, "skip the dense equivalent");
  cmd->add_flag("-q,--quiet", opts->quiet, "no progress line on stderr");
  cmd->callback([opts] { run(*opts); });
}

}  // namespace qmm::cli
