#include "model/bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "model/cuda/device.h"
#include "qmm/device.h"
#include "qmm/version.h"

namespace qmm::model {

namespace {

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

/// Median bandwidth of a threaded sequential read of `bytes` on the CPU.
double cpu_read_bandwidth_gbs(std::size_t bytes, int repeats) {
  const std::size_t n = bytes / 8;
  std::vector<std::uint64_t> buf(n, 1);
  const unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  std::vector<double> samples;
  std::vector<std::uint64_t> sinks(threads);
  for (int r = -1; r < repeats; ++r) {
    const double t0 = now_ms();
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        const std::size_t b = n * t / threads, e = n * (t + 1) / threads;
        std::uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
        std::size_t i = b;
        for (; i + 4 <= e; i += 4) {
          a0 += buf[i];
          a1 += buf[i + 1];
          a2 += buf[i + 2];
          a3 += buf[i + 3];
        }
        for (; i < e; ++i) a0 += buf[i];
        sinks[t] = a0 + a1 + a2 + a3;
      });
    }
    for (auto& th : pool) th.join();
    const double ms = now_ms() - t0;
    if (r >= 0) samples.push_back(ms);
  }
  std::uint64_t total = 0;
  for (auto s : sinks) total += s;
  if (total == 42) std::fprintf(stderr, " ");  // keeps the sums alive
  const double ms = median(samples);
  return ms > 0 ? static_cast<double>(n * 8) / (ms * 1e-3) / 1e9 : 0;
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string bytes_str(double b) {
  if (b >= 1e9) return fmt("%.2f GB", b / 1e9);
  if (b >= 1e6) return fmt("%.1f MB", b / 1e6);
  return fmt("%.1f kB", b / 1e3);
}

std::string quant_desc(const ModelWeights& w) {
  std::string desc;
  bool mixed = false;
  auto note = [&](const Linear& l) {
    if (l.N == 0) return;
    const std::string d = l.quant.quantized ? std::to_string(l.quant.bits) + "-bit g" + std::to_string(l.quant.group_size)
                                            : std::string("dense");
    if (desc.empty()) desc = d;
    if (d != desc) mixed = true;
  };
  for (const auto& l : w.layers) {
    for (const Linear* x : {&l.qkv, &l.q, &l.k, &l.v, &l.o, &l.gate_up, &l.gate, &l.up, &l.down}) note(*x);
  }
  note(w.lm_head);
  return mixed ? desc + " (mixed)" : desc;
}

}  // namespace

std::vector<int> parse_m_list(const std::string& text) {
  std::vector<int> out;
  std::stringstream ss(text);
  std::string part;
  auto num = [&](const std::string& s) {
    if (s.empty() || s.size() > 4 || s.find_first_not_of("0123456789") != std::string::npos) {
      throw Error("[model] bad M list '" + text + "' (expected e.g. 1-8 or 1,2,4,8)");
    }
    return std::stoi(s);
  };
  while (std::getline(ss, part, ',')) {
    const auto dash = part.find('-');
    if (dash == std::string::npos) {
      out.push_back(num(part));
    } else {
      const int a = num(part.substr(0, dash)), b = num(part.substr(dash + 1));
      if (a > b) throw Error("[model] bad M range '" + part + "'");
      for (int m = a; m <= b; ++m) out.push_back(m);
    }
  }
  if (out.empty()) throw Error("[model] empty M list");
  for (int m : out) {
    if (m < 1) throw Error("[model] M must be at least 1");
  }
  return out;
}

BenchResult run_benchmark(Model& model, const BenchOptions& o) {
  const ModelWeights& w = model.weights();
  const ModelConfig& c = w.config;
  const bool cuda = model.device().type == DeviceType::cuda;
  auto progress = [&](const std::string& s) {
    if (o.progress) o.progress(s);
  };
  BenchResult r;
  r.model = w.source;
  r.device = device_name(model.device());
  r.device_name = device_info(model.device()).name;
  r.dtype = dtype_name(model.dtype());
  r.quantization = quant_desc(w);
  r.layers = static_cast<int>(c.num_layers);
  r.hidden = c.hidden_size;
  r.intermediate = c.intermediate_size;
  r.vocab = c.vocab_size;
  r.fused = !w.layers.empty() && (w.layers[0].fused_qkv || w.layers[0].fused_gate_up);
  r.prefill = o.prefill;
  r.repeats = o.repeats;
  r.linear_bytes = w.linear_bytes();
  r.weight_bytes = r.linear_bytes + w.other_bytes(1);
  r.kv_bytes = model.kv_read_bytes(1, o.prefill);

  int mmax = 0;
  for (int m : o.ms) {
    if (m > model.options().max_verify_rows) {
      throw Error("[model] M=" + std::to_string(m) + " exceeds max_verify_rows=" + std::to_string(model.options().max_verify_rows));
    }
    mmax = std::max(mmax, m);
  }
  if (o.prefill < 0 || o.prefill + mmax > model.options().max_seq) {
    throw Error("[model] prefill + M exceeds the KV cache (" + std::to_string(model.options().max_seq) + " positions)");
  }

  std::mt19937_64 rng(o.seed);
  std::uniform_int_distribution<std::int32_t> tok(0, static_cast<std::int32_t>(c.vocab_size - 1));
  std::vector<std::int32_t> prompt(static_cast<std::size_t>(o.prefill)), draft(static_cast<std::size_t>(mmax));
  for (auto& t : prompt) t = tok(rng);
  for (auto& t : draft) t = tok(rng);

  // Bandwidth probe first: a cold device and the same run as the model.
  r.probe_bytes = o.probe_bytes ? o.probe_bytes : cuda ? (std::size_t(2) << 30) : (std::size_t(512) << 20);
  progress("measuring read bandwidth (" + bytes_str(static_cast<double>(r.probe_bytes)) + " buffer)");
  r.read_gbs = cuda ? cuda::measure_read_bandwidth_gbs(r.probe_bytes, 10, model.stream())
                    : cpu_read_bandwidth_gbs(r.probe_bytes, 5);
  r.floor_ms = r.read_gbs > 0 ? static_cast<double>(r.weight_bytes) / (r.read_gbs * 1e9) * 1e3 : 0;

  if (o.prefill > 0) {
    progress("prefill " + std::to_string(o.prefill) + " tokens");
    const double t0 = now_ms();
    model.prefill(prompt, 0, [&](std::int64_t done, std::int64_t total) {
      progress("prefill " + std::to_string(done) + "/" + std::to_string(total) + " tokens");
    });
    r.prefill_ms = now_ms() - t0;
  }

  void* e0 = cuda ? cuda::event_create() : nullptr;
  void* e1 = cuda ? cuda::event_create() : nullptr;
  bool graphs = cuda && o.graphs;
  if (cuda && !o.graphs) r.graph_note = "graphs disabled (--no-graphs)";

  // Times `launch` (one pass) `repeats` times after `warmup` runs; per-pass samples.
  auto time_passes = [&](const std::function<void()>& launch) {
    std::vector<double> samples;
    for (int i = -o.warmup; i < o.repeats; ++i) {
      double ms;
      if (cuda) {
        cuda::event_record(e0, model.stream());
        launch();
        cuda::event_record(e1, model.stream());
        ms = cuda::event_elapsed_ms(e0, e1);
      } else {
        const double t0 = now_ms();
        launch();
        model.synchronize();
        ms = now_ms() - t0;
      }
      if (i >= 0) samples.push_back(ms);
    }
    return samples;
  };
  // One pass of the given categories, as a graph when possible.
  auto time_config = [&](int m, unsigned cats) {
    void* graph = nullptr;
    if (graphs) {
      cuda::capture_begin(model.stream());
      const char* err = nullptr;
      try {
        model.enqueue(m, o.prefill, true, cats);
      } catch (...) {
        cuda::capture_end(model.stream(), &err);
        throw;
      }
      graph = cuda::capture_end(model.stream(), &err);
      if (!graph) {
        graphs = false;
        r.graph_note = std::string("CUDA graph capture failed (") + (err ? err : "?") + "); eager launches";
        progress(r.graph_note);
      }
    }
    std::vector<double> s;
    if (graph) {
      s = time_passes([&] { cuda::graph_launch(graph, model.stream()); });
      cuda::graph_destroy(graph);
    } else {
      s = time_passes([&] { model.enqueue(m, o.prefill, true, cats); });
    }
    return s;
  };

  for (int m : o.ms) {
    progress("verify passes M=" + std::to_string(m));
    model.set_tokens(std::vector<std::int32_t>(draft.begin(), draft.begin() + m));
    model.enqueue(m, o.prefill, true);  // warm-up outside any capture (lazy initialisation)
    model.synchronize();
    BenchRow row;
    row.m = m;
    const auto s = time_config(m, kAllOps);
    row.ms = median(s);
    row.ms_min = *std::min_element(s.begin(), s.end());
    row.ms_max = *std::max_element(s.begin(), s.end());
    row.tokens_per_s = row.ms > 0 ? m / (row.ms * 1e-3) : 0;
    if (o.split) {
      row.linears_ms = median(time_config(m, kLinears));
      row.attention_ms = median(time_config(m, kAttention));
      row.other_ms = median(time_config(m, kOther));
    }
    r.rows.push_back(row);
  }
  r.graphs = graphs;
  if (cuda) {
    cuda::event_destroy(e0);
    cuda::event_destroy(e1);
  }
  const double base = r.rows.empty() ? 0 : r.rows.front().ms;
  for (auto& row : r.rows) row.ratio = base > 0 ? row.ms / base : 0;
  for (const auto& row : r.rows) {
    if (row.m == 1) r.m1_over_floor = r.floor_ms > 0 ? row.ms / r.floor_ms : 0;
    if (row.m == mmax) {
      r.mmax = mmax;
      r.mmax_over_m1 = row.ratio;
    }
  }

  // The configuration qmm picks for each distinct linear of layer 0 and lm_head.
  if (!w.layers.empty()) {
    const Layer& l0 = w.layers[0];
    for (const Linear* l : {&l0.qkv, &l0.q, &l0.k, &l0.v, &l0.o, &l0.gate_up, &l0.gate, &l0.up, &l0.down, &w.lm_head}) {
      if (l->N == 0) continue;
      LinearInfo li;
      li.name = l->name;
      li.N = l->N;
      li.K = l->K;
      if (l->quant.quantized) {
        li.bits = l->quant.bits;
        li.group_size = l->quant.group_size;
        auto describe = [&](int m) {
          try {
            // describe never reads x: any pointer on the device stands in for the activations.
            const TensorView x(l->w_q.data(), {m, l->K}, model.dtype(), model.device());
            return describe_quantized_matmul(x, l->w_q, l->scales, l->biases, true, l->quant.group_size, l->quant.bits)
                .kernel;
          } catch (const std::exception& e) {
            return std::string("?");
          }
        };
        li.kernel_m1 = describe(1);
        li.kernel_mmax = describe(std::max(1, mmax));
      } else {
        li.kernel_m1 = li.kernel_mmax = "dense (qmm_model fallback)";
      }
      r.linears.push_back(li);
    }
  }
  return r;
}

std::string format_result(const BenchResult& r) {
  std::ostringstream os;
  os << "qmm model " << QMM_VERSION_STRING << ": " << r.model << " - " << r.layers << " layers, hidden " << r.hidden
     << ", intermediate " << r.intermediate << ", vocab " << r.vocab << "\n";
  os << "  " << r.quantization << ", " << r.dtype << ", " << r.device << " (" << r.device_name << ")"
     << (r.fused ? ", q|k|v and gate|up fused" : ", unfused projections") << "\n";
  os << "  weights read per M=1 forward: " << bytes_str(static_cast<double>(r.weight_bytes)) << " (linears "
     << bytes_str(static_cast<double>(r.linear_bytes)) << "); KV cache read at M=1: " << bytes_str(static_cast<double>(r.kv_bytes))
     << "\n";
  os << "  read bandwidth (same run, " << bytes_str(static_cast<double>(r.probe_bytes)) << " buffer): "
     << fmt("%.0f GB/s", r.read_gbs) << " -> weight-read floor " << fmt("%.3f ms", r.floor_ms) << "\n";
  if (r.prefill > 0) os << "  prefill " << r.prefill << " tokens: " << fmt("%.1f ms", r.prefill_ms) << "\n";
  os << "  verify pass of M new tokens at position " << r.prefill << " (cache not advanced), "
     << (r.graphs ? "one CUDA graph per M" : r.device == "cpu" ? "CPU" : "eager launches")
     << ", median of "
     << r.repeats << "\n";
  if (!r.graph_note.empty()) os << "  note: " << r.graph_note << "\n";
  os << "\n";
  const bool split = !r.rows.empty() && r.rows.front().linears_ms >= 0;
  os << "   M   time ms   vs M=1   tokens/s";
  if (split) os << "   linears ms   attention ms   other ms";
  os << "\n";
  for (const auto& row : r.rows) {
    os << fmt("%4.0f", row.m) << fmt("%10.3f", row.ms) << fmt("%8.2fx", row.ratio) << fmt("%11.1f", row.tokens_per_s);
    if (split) {
      const double sum = row.linears_ms + row.attention_ms + row.other_ms;
      auto cell = [&](double v) { return fmt("%7.3f", v) + fmt(" (%2.0f%%)", sum > 0 ? 100.0 * v / sum : 0.0); };
      os << "  " << cell(row.linears_ms) << "    " << cell(row.attention_ms) << " " << cell(row.other_ms);
    }
    os << "\n";
  }
  if (split) {
    os << "  (split: each category replayed alone; linears = quantized_matmul + lm_head, attention = RoPE + KV write\n"
          "   + attention, other = embedding, norms, residuals, SwiGLU; shares are of their sum)\n";
  }
  if (!r.linears.empty()) {
    os << "\n  qmm kernels (layer 0, lm_head):\n";
    for (const auto& l : r.linears) {
      os << "    " << l.name << " (" << l.N << " x " << l.K << "): M=1 " << l.kernel_m1;
      if (r.mmax > 1) os << ", M=" << r.mmax << " " << l.kernel_mmax;
      os << "\n";
    }
  }
  os << "\n  targets (issue 5; H100, qwen2.5-14b 4-bit g64 fp16):\n";
  if (r.m1_over_floor > 0) {
    os << "    M=1 within 1.25x the weight-read floor: " << fmt("%.3f ms", r.rows.front().ms) << " / "
       << fmt("%.3f ms", r.floor_ms) << " = " << fmt("%.2fx", r.m1_over_floor)
       << (r.m1_over_floor <= 1.25 ? "  met" : "  not met") << "\n";
  }
  if (r.mmax > 1) {
    os << "    M=" << r.mmax << " / M=1 <= 1.15: " << fmt("%.2fx", r.mmax_over_m1)
       << (r.mmax_over_m1 <= 1.15 ? "  met" : "  not met") << "\n";
  }
  return os.str();
}

std::string result_json(const BenchResult& r) {
  nlohmann::ordered_json j;
  j["schema"] = "qmm-model-bench/1";
  j["qmm_version"] = QMM_VERSION_STRING;
  j["model"] = r.model;
  j["device"] = r.device;
  j["device_name"] = r.device_name;
  j["dtype"] = r.dtype;
  j["quantization"] = r.quantization;
  j["layers"] = r.layers;
  j["hidden_size"] = r.hidden;
  j["intermediate_size"] = r.intermediate;
  j["vocab_size"] = r.vocab;
  j["fused_projections"] = r.fused;
  j["cuda_graphs"] = r.graphs;
  if (!r.graph_note.empty()) j["note"] = r.graph_note;
  j["prefill_tokens"] = r.prefill;
  j["prefill_ms"] = r.prefill_ms;
  j["repeats"] = r.repeats;
  j["weight_bytes"] = r.weight_bytes;
  j["linear_bytes"] = r.linear_bytes;
  j["kv_read_bytes_m1"] = r.kv_bytes;
  j["read_probe_bytes"] = r.probe_bytes;
  j["read_bandwidth_gbs"] = r.read_gbs;
  j["weight_read_floor_ms"] = r.floor_ms;
  nlohmann::ordered_json rows = nlohmann::ordered_json::array();
  for (const auto& row : r.rows) {
    nlohmann::ordered_json x;
    x["m"] = row.m;
    x["ms"] = row.ms;
    x["ms_min"] = row.ms_min;
    x["ms_max"] = row.ms_max;
    x["ratio_to_m1"] = row.ratio;
    x["tokens_per_s"] = row.tokens_per_s;
    if (row.linears_ms >= 0) {
      x["linears_ms"] = row.linears_ms;
      x["attention_ms"] = row.attention_ms;
      x["other_ms"] = row.other_ms;
    }
    rows.push_back(x);
  }
  j["rows"] = rows;
  nlohmann::ordered_json lin = nlohmann::ordered_json::array();
  for (const auto& l : r.linears) {
    lin.push_back({{"name", l.name}, {"N", l.N}, {"K", l.K}, {"bits", l.bits}, {"group_size", l.group_size},
                   {"kernel_m1", l.kernel_m1}, {"kernel_mmax", l.kernel_mmax}});
  }
  j["linears"] = lin;
  j["targets"] = {{"m1_over_floor", r.m1_over_floor},
                  {"m1_over_floor_met", r.m1_over_floor > 0 && r.m1_over_floor <= 1.25},
                  {"mmax", r.mmax},
                  {"mmax_over_m1", r.mmax_over_m1},
                  {"mmax_over_m1_met", r.mmax > 1 && r.mmax_over_m1 <= 1.15}};
  return j.dump(2) + "\n";
}

}  // namespace qmm::model
