// `qmm model`: load an MLX-format checkpoint (or build a synthetic one in memory), prefill P
// tokens, then time verify passes of M = 1..8 new tokens against that cache; or write a
// synthetic checkpoint with --make-synthetic. The machinery lives in model/ (qmm_model).
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>

#include "model/bench.h"
#include "model/checkpoint.h"
#include "model/forward.h"
#include "model/weights.h"
#include "qmm/qmm.h"
#include "tools/qmm/commands.h"

namespace qmm::cli {

namespace {

struct ModelCliOptions {
  std::string positional;
  std::string checkpoint;
  std::string synthetic;
  std::string make_synthetic;
  std::string preset;
  int bits = 4;
  int group_size = 64;
  std::uint64_t seed = 0;
  double shard_gb = 5.0;
  int prefill = 512;
  std::string m = "1-8";
  std::string backend;
  std::string dtype;
  int repeats = 0;
  int warmup = 3;
  bool no_graphs = false;
  bool no_split = false;
  bool unfused = false;
  std::int64_t max_seq = 0;
  int prefill_chunk = 512;
  int device = 0;
  double probe_gb = 0;
  std::string json;
};

/// Progress on stderr: one rewritten line on a terminal, plain lines otherwise.
void progress(const std::string& s) {
  static const bool tty = ::isatty(2);
  if (tty) {
    std::fprintf(stderr, "\rqmm model: %s\033[K", s.c_str());
  } else {
    std::fprintf(stderr, "qmm model: %s\n", s.c_str());
  }
  std::fflush(stderr);
}
void progress_done() {
  static const bool tty = ::isatty(2);
  if (tty) std::fprintf(stderr, "\r\033[K");
}

Dtype parse_model_dtype(const std::string& s) {
  const Dtype d = parse_dtype(s);
  if (d != Dtype::float16 && d != Dtype::bfloat16) throw Error("[model] --dtype must be fp16 or bf16, not " + s);
  return d;
}

void make_synthetic(const ModelCliOptions& o) {
  if (o.preset.empty()) throw Error("[model] --make-synthetic needs --preset NAME");
  const Dtype dtype = o.dtype.empty() ? Dtype::float16 : parse_model_dtype(o.dtype);
  const model::ModelConfig config = model::preset_config(o.preset, o.bits, o.group_size, dtype);
  model::SyntheticOptions so;
  so.seed = o.seed;
  so.dtype = dtype;
  so.max_shard_bytes = static_cast<std::uint64_t>(o.shard_gb * 1e9);
  so.progress = progress;
  model::write_synthetic_checkpoint(o.make_synthetic, config, so);
  progress_done();
  const model::Checkpoint ck(o.make_synthetic);  // read back: what was written parses
  std::printf("wrote %s: preset %s, %d-bit g%d, %s, %zu tensors in %zu file(s)\n", o.make_synthetic.c_str(),
              o.preset.c_str(), o.bits, o.group_size, dtype_name(dtype), ck.names().size(), ck.file_count());
}

void run_model(const ModelCliOptions& o) {
  if (!o.make_synthetic.empty()) {
    make_synthetic(o);
    return;
  }
  const int sources = !o.positional.empty() + !o.checkpoint.empty() + !o.synthetic.empty();
  if (sources != 1) {
    throw Error("[model] give one model: a checkpoint directory (positional or --checkpoint) or --synthetic NAME");
  }
  std::string backend = o.backend;
  if (backend.empty()) backend = cuda_available() ? "cuda" : "cpu";
  if (backend != "cuda" && backend != "cpu") throw Error("[model] --backend must be cuda or cpu");
  if (backend == "cuda" && !cuda_available()) throw Error("[model] --backend cuda: no CUDA device (or a CPU-only build)");
  const Device device = backend == "cuda" ? Device::cuda(o.device) : Device::cpu();
  const std::vector<int> ms = model::parse_m_list(o.m);
  const int mmax = *std::max_element(ms.begin(), ms.end());

  std::unique_ptr<model::WeightSource> source;
  Dtype dtype = Dtype::float16;
  if (!o.synthetic.empty()) {
    dtype = o.dtype.empty() ? Dtype::float16 : parse_model_dtype(o.dtype);
    const model::ModelConfig config = model::preset_config(o.synthetic, o.bits, o.group_size, dtype);
    source = model::synthetic_source(config, o.seed, "synthetic " + o.synthetic, dtype);
  } else {
    const std::string dir = o.checkpoint.empty() ? o.positional : o.checkpoint;
    progress("opening " + dir);
    auto ck = std::make_shared<const model::Checkpoint>(dir);
    dtype = !o.dtype.empty() ? parse_model_dtype(o.dtype)
            : ck->config().torch_dtype == "bfloat16" ? Dtype::bfloat16
                                                     : Dtype::float16;
    source = model::checkpoint_source(ck);
  }
  model::LoadOptions lo;
  lo.device = device;
  lo.dtype = dtype;
  lo.fuse = !o.unfused;
  lo.progress = [](const std::string& s) { progress("loading " + s); };
  auto weights = std::make_shared<const model::ModelWeights>(model::load_weights(*source, lo));

  model::ModelOptions mo;
  mo.max_seq = o.max_seq > 0 ? o.max_seq : o.prefill + mmax;
  mo.max_verify_rows = std::max(16, mmax);
  mo.prefill_chunk = o.prefill_chunk;
  model::Model m(weights, mo);

  model::BenchOptions bo;
  bo.prefill = o.prefill;
  bo.ms = ms;
  bo.repeats = o.repeats > 0 ? o.repeats : backend == "cuda" ? 20 : 5;
  bo.warmup = o.warmup;
  bo.graphs = !o.no_graphs;
  bo.split = !o.no_split;
  bo.seed = o.seed + 1;
  bo.probe_bytes = static_cast<std::size_t>(o.probe_gb * double(1 << 30));
  bo.progress = progress;
  const model::BenchResult r = model::run_benchmark(m, bo);
  progress_done();
  std::fputs(model::format_result(r).c_str(), stdout);
  if (!o.json.empty()) {
    std::ofstream out(o.json);
    out << model::result_json(r);
    if (!out) throw Error("[model] cannot write " + o.json);
    std::printf("\nwrote %s\n", o.json.c_str());
  }
}

}  // namespace

void add_model_command(CLI::App& app) {
  auto opt = std::make_shared<ModelCliOptions>();
  auto* cmd = app.add_subcommand(
      "model",
      "Decoder forward on an MLX-format checkpoint (or a synthetic one): prefill P tokens, then time verify "
      "passes of M new tokens");
  cmd->add_option("checkpoint_dir", opt->positional, "Checkpoint directory (config.json + safetensors)");
  cmd->add_option("--checkpoint", opt->checkpoint, "Checkpoint directory (same as the positional argument)");
  cmd->add_option("--synthetic", opt->synthetic,
                  "Build a random-weight model in memory from a preset: qwen2.5-14b, qwen2.5-32b, llama-3-8b, "
                  "llama-3.1-8b, tiny");
  cmd->add_option("--make-synthetic", opt->make_synthetic, "Write a synthetic checkpoint (of --preset) to DIR and exit");
  cmd->add_option("--preset", opt->preset, "Preset for --make-synthetic");
  cmd->add_option("--bits", opt->bits, "Synthetic models: bits (2, 3, 4, 5, 6, 8)")->capture_default_str();
  cmd->add_option("--group-size", opt->group_size, "Synthetic models: group size (32, 64, 128)")->capture_default_str();
  cmd->add_option("--seed", opt->seed, "Seed of synthetic weights and of the benchmark's tokens")->capture_default_str();
  cmd->add_option("--shard-gb", opt->shard_gb, "--make-synthetic: largest shard in GB (one file if it all fits)")
      ->capture_default_str();
  cmd->add_option("--prefill", opt->prefill, "Tokens to prefill before the verify passes")->capture_default_str();
  cmd->add_option("--m", opt->m, "New tokens per verify pass: 1-8, 1,2,4,8, ...")->capture_default_str();
  cmd->add_option("--backend", opt->backend, "cuda or cpu (default: cuda when available)");
  cmd->add_option("--device", opt->device, "CUDA device index")->capture_default_str();
  cmd->add_option("--dtype", opt->dtype, "fp16 or bf16 (default: the checkpoint's torch_dtype; fp16 for synthetic)");
  cmd->add_option("--repeats", opt->repeats, "Timed passes per M (default 20 on CUDA, 5 on the CPU)");
  cmd->add_option("--warmup", opt->warmup, "Untimed passes per M")->capture_default_str();
  cmd->add_flag("--no-graphs", opt->no_graphs, "Time eager launches instead of CUDA graphs");
  cmd->add_flag("--no-split", opt->no_split, "Skip the linears / attention / other split");
  cmd->add_flag("--unfused", opt->unfused, "Keep q, k, v and gate, up as separate matmuls");
  cmd->add_option("--max-seq", opt->max_seq, "KV cache capacity (default prefill + max M)");
  cmd->add_option("--prefill-chunk", opt->prefill_chunk, "Rows per prefill pass")->capture_default_str();
  cmd->add_option("--probe-gb", opt->probe_gb, "Read-bandwidth probe size in GiB (default 2 on CUDA, 0.5 on the CPU)");
  cmd->add_option("--json", opt->json, "Write the results as JSON to FILE");
  cmd->callback([opt] { run_model(*opt); });
}

}  // namespace qmm::cli
