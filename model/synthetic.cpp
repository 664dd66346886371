// Synthetic checkpoints: random weights from a counter-based generator (model/synthetic_rng.h),
// quantized with qmm::quantize, identical whether generated in memory on the CPU, on the GPU, or
// written to disk by --make-synthetic.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "model/cuda/device.h"
#include "model/synthetic_rng.h"
#include "model/weights.h"
#include "qmm/ops.h"

namespace qmm::model {

namespace {

std::uint16_t to_bits(float f, Dtype dtype) {
  return dtype == Dtype::bfloat16 ? float_to_bfloat16_bits(f) : float_to_float16_bits(f);
}
float round_to(float f, Dtype dtype) {
  if (dtype == Dtype::float32) return f;
  return dtype == Dtype::bfloat16 ? bfloat16_bits_to_float(float_to_bfloat16_bits(f))
                                  : float16_bits_to_float(float_to_float16_bits(f));
}

/// Host fill of rows [r0, r0 + rows) of a (?, cols) matrix into dst (dtype), threaded when large.
void host_fill(void* dst, Dtype dtype, std::int64_t rows, std::int64_t cols, std::int64_t r0, std::uint64_t stream,
               float amp) {
  const std::int64_t total = rows * cols;
  auto work = [&](std::int64_t begin, std::int64_t end) {
    const std::uint64_t base = static_cast<std::uint64_t>(r0 * cols);
    for (std::int64_t i = begin; i < end; ++i) {
      const float v = synthetic_uniform(stream, base + static_cast<std::uint64_t>(i)) * amp;
      if (dtype == Dtype::float32) {
        static_cast<float*>(dst)[i] = v;
      } else {
        static_cast<std::uint16_t*>(dst)[i] = to_bits(v, dtype);
      }
    }
  };
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  const std::int64_t nthreads = total < (1 << 20) ? 1 : std::min<std::int64_t>(hw, 64);
  if (nthreads == 1) {
    work(0, total);
    return;
  }
  std::vector<std::thread> threads;
  const std::int64_t per = (total + nthreads - 1) / nthreads;
  for (std::int64_t t = 0; t < nthreads; ++t) {
    const std::int64_t b = t * per, e = std::min(total, b + per);
    if (b < e) threads.emplace_back(work, b, e);
  }
  for (auto& th : threads) th.join();
}

TensorView rows_view(const Tensor& t, std::int64_t row0, std::int64_t rows) {
  const std::int64_t cols = t.shape()[1];
  char* p = static_cast<char*>(t.data()) + static_cast<std::size_t>(row0 * cols) * itemsize(t.dtype());
  return TensorView(p, {rows, cols}, t.dtype(), t.device());
}

class SyntheticSource final : public WeightSource {
 public:
  SyntheticSource(const ModelConfig& c, std::uint64_t seed, std::string name, Dtype storage)
      : config_(c), seed_(seed), name_(std::move(name)), storage_(storage) {
    for (const auto& m : model_modules(c)) modules_[m.path] = m;
  }
  const ModelConfig& config() const override { return config_; }
  std::string description() const override { return name_; }

  const ModuleSpec& module(const std::string& path, std::int64_t N, std::int64_t K) const {
    auto it = modules_.find(path);
    if (it == modules_.end() || it->second.rows != N || (it->second.kind == ModuleKind::linear && it->second.cols != K)) {
      throw Error("[model] synthetic checkpoint has no module " + path + " of shape " + shape_to_string({N, K}));
    }
    return it->second;
  }

  QuantSpec linear_quant(const std::string& path, std::int64_t N, std::int64_t K) override {
    return module(path, N, K).quant;
  }
  bool has_bias(const std::string& path, std::int64_t N) override {
    const auto& m = module(path, N, modules_.at(path).cols);
    return m.bias;
  }

  void read_linear(const std::string& path, std::int64_t N, std::int64_t K, const QuantSpec& q, Linear& dst,
                   std::int64_t row0, Dtype dtype) override {
    const ModuleSpec& m = module(path, N, K);
    const std::uint64_t stream = synthetic_stream(path + ".weight", seed_);
    const float amp = synthetic_amplitude(m, config_);
    const Device device = q.quantized ? dst.w_q.device() : dst.weight.device();
    const std::int64_t chunk = std::max<std::int64_t>(1, std::min<std::int64_t>(N, (std::int64_t(32) << 20) / K));
    const bool on_gpu = device.type == DeviceType::cuda;
    Tensor tmp;
    for (std::int64_t r = 0; r < N; r += chunk) {
      const std::int64_t rows = std::min(chunk, N - r);
      if (!q.quantized) {
        TensorView out = rows_view(dst.weight, row0 + r, rows);
        if (on_gpu) {
          cuda::fill_uniform(out.data, dtype, rows, K, r, stream, amp, nullptr);
        } else {
          host_fill(out.data, dtype, rows, K, r, stream, amp);
        }
        continue;
      }
      if (on_gpu && gpu_quantize_ok_) {
        try {
          if (!tmp.defined()) tmp = Tensor::empty({chunk, K}, dtype, device);
          TensorView w(tmp.data(), {rows, K}, dtype, device);
          cuda::fill_uniform(w.data, dtype, rows, K, r, stream, amp, nullptr);
          quantize_into(w, rows_view(dst.w_q, row0 + r, rows), rows_view(dst.scales, row0 + r, rows),
                        rows_view(dst.biases, row0 + r, rows), q.group_size, q.bits);
          continue;
        } catch (const Error& e) {
          // A CUDA build whose quantize is missing: quantize on the CPU instead (same bits).
          std::fprintf(stderr, "qmm model: quantize on the GPU failed (%s); quantizing on the CPU\n", e.what());
          gpu_quantize_ok_ = false;
        }
      }
      Tensor w = Tensor::empty({rows, K}, dtype);
      host_fill(w.data(), dtype, rows, K, r, stream, amp);
      if (!on_gpu) {
        quantize_into(w, rows_view(dst.w_q, row0 + r, rows), rows_view(dst.scales, row0 + r, rows),
                      rows_view(dst.biases, row0 + r, rows), q.group_size, q.bits);
      } else {
        const QuantizedWeights hq = quantize(w, q.group_size, q.bits);
        const std::size_t words = static_cast<std::size_t>(hq.w_q.shape()[1]) * 4;
        const std::size_t groups = static_cast<std::size_t>(hq.scales.shape()[1]) * itemsize(dtype);
        copy_into(dst.w_q, static_cast<std::size_t>(row0 + r) * words, hq.w_q.data(), hq.w_q.nbytes());
        copy_into(dst.scales, static_cast<std::size_t>(row0 + r) * groups, hq.scales.data(), hq.scales.nbytes());
        copy_into(dst.biases, static_cast<std::size_t>(row0 + r) * groups, hq.biases.data(), hq.biases.nbytes());
      }
    }
  }

  std::vector<float> read_bias(const std::string& path, std::int64_t N) override {
    std::vector<float> v(static_cast<std::size_t>(N));
    const std::uint64_t stream = synthetic_stream(path + ".bias", seed_);
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = round_to(0.5f * synthetic_uniform(stream, i), storage_);
    return v;
  }

  std::vector<float> read_vector(const std::string& name, std::int64_t n) override {
    std::vector<float> v(static_cast<std::size_t>(n));
    const std::uint64_t stream = synthetic_stream(name, seed_);
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = round_to(1.0f + 0.25f * synthetic_uniform(stream, i), storage_);
    return v;
  }

  bool tied_embeddings() override { return config_.tie_word_embeddings.value_or(false); }

 private:
  ModelConfig config_;
  std::uint64_t seed_;
  std::string name_;
  Dtype storage_;
  std::map<std::string, ModuleSpec> modules_;
  bool gpu_quantize_ok_ = true;
};

std::vector<std::uint8_t> floats_to_bytes(const std::vector<float>& v, Dtype dtype) {
  std::vector<std::uint8_t> out(v.size() * itemsize(dtype));
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (dtype == Dtype::float32) {
      std::memcpy(out.data() + 4 * i, &v[i], 4);
    } else {
      const std::uint16_t b = to_bits(v[i], dtype);
      std::memcpy(out.data() + 2 * i, &b, 2);
    }
  }
  return out;
}

}  // namespace

float synthetic_amplitude(const ModuleSpec& m, const ModelConfig&) {
  // Embedding rows O(1); linears with unit-variance outputs for unit-variance inputs
  // (uniform on [-a, a) has variance a^2 / 3).
  if (m.path == kEmbedPath) return 1.0f;
  return static_cast<float>(std::sqrt(3.0 / static_cast<double>(m.cols)));
}

Dtype storage_dtype(const ModelConfig& c) {
  if (c.torch_dtype == "bfloat16") return Dtype::bfloat16;
  if (c.torch_dtype == "float32") return Dtype::float32;
  return Dtype::float16;
}

std::unique_ptr<WeightSource> synthetic_source(const ModelConfig& config, std::uint64_t seed, const std::string& name,
                                               Dtype storage) {
  return std::make_unique<SyntheticSource>(config, seed, name, storage);
}

void write_synthetic_checkpoint(const std::string& dir, const ModelConfig& config_in, const SyntheticOptions& opt) {
  namespace fs = std::filesystem;
  if (opt.dtype != Dtype::float16 && opt.dtype != Dtype::bfloat16) {
    throw Error("[model] synthetic checkpoints are float16 or bfloat16");
  }
  ModelConfig config = config_in;
  config.torch_dtype = opt.dtype == Dtype::bfloat16 ? "bfloat16" : "float16";
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error("[model] cannot create directory " + dir + ": " + ec.message());

  const auto modules = model_modules(config);
  std::vector<std::vector<std::size_t>> shards(1);
  std::uint64_t shard_bytes = 0, total = 0;
  for (std::size_t i = 0; i < modules.size(); ++i) {
    const std::uint64_t b = SafetensorsWriter::data_bytes(module_tensors(modules[i], opt.dtype));
    if (!shards.back().empty() && shard_bytes + b > opt.max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(i);
    shard_bytes += b;
    total += b;
  }
  auto source = synthetic_source(config, opt.seed, "synthetic", opt.dtype);
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  const std::size_t nshards = shards.size();
  for (std::size_t s = 0; s < nshards; ++s) {
    char fname[64];
    if (nshards == 1) {
      std::snprintf(fname, sizeof fname, "model.safetensors");
    } else {
      std::snprintf(fname, sizeof fname, "model-%05zu-of-%05zu.safetensors", s + 1, nshards);
    }
    std::vector<SafetensorsWriter::Spec> specs;
    for (std::size_t i : shards[s]) {
      for (auto& t : module_tensors(modules[i], opt.dtype)) {
        weight_map[t.name] = fname;
        specs.push_back(std::move(t));
      }
    }
    SafetensorsWriter writer((fs::path(dir) / fname).string(), specs);
    for (std::size_t i : shards[s]) {
      const ModuleSpec& m = modules[i];
      if (opt.progress) opt.progress(std::string(fname) + ": " + m.path);
      if (m.kind == ModuleKind::norm) {
        const auto bytes = floats_to_bytes(source->read_vector(m.path + ".weight", m.rows), opt.dtype);
        writer.write(m.path + ".weight", bytes.data(), bytes.size());
        continue;
      }
      Linear l = allocate_linear(m.path, m.rows, m.cols, m.quant, opt.dtype, Device::cpu());
      source->read_linear(m.path, m.rows, m.cols, m.quant, l, 0, opt.dtype);
      if (m.quant.quantized) {
        writer.write(m.path + ".weight", l.w_q.data(), l.w_q.nbytes());
        writer.write(m.path + ".scales", l.scales.data(), l.scales.nbytes());
        writer.write(m.path + ".biases", l.biases.data(), l.biases.nbytes());
      } else {
        writer.write(m.path + ".weight", l.weight.data(), l.weight.nbytes());
      }
      if (m.bias) {
        const auto bytes = floats_to_bytes(source->read_bias(m.path, m.rows), opt.dtype);
        writer.write(m.path + ".bias", bytes.data(), bytes.size());
      }
    }
    writer.finish();
  }
  if (nshards > 1) {
    nlohmann::ordered_json index;
    index["metadata"] = {{"total_size", total}};
    index["weight_map"] = weight_map;
    std::ofstream out(fs::path(dir) / "model.safetensors.index.json");
    out << index.dump(4) << "\n";
    if (!out) throw Error("[model] cannot write " + (fs::path(dir) / "model.safetensors.index.json").string());
  } else {
    fs::remove(fs::path(dir) / "model.safetensors.index.json", ec);
  }
  std::ofstream cfg(fs::path(dir) / "config.json");
  cfg << config_to_json(config);
  if (!cfg) throw Error("[model] cannot write " + (fs::path(dir) / "config.json").string());
}

}  // namespace qmm::model
