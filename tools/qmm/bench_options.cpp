#include "tools/qmm/bench_options.h"

#include <algorithm>
#include <cctype>
#include <set>
#include <stdexcept>

#include "qmm/device.h"
#include "qmm/ops.h"

namespace qmm::bench {

namespace {

[[noreturn]] void fail(const std::string& message) { throw std::invalid_argument(message); }

std::string trim(const std::string& s) {
  std::size_t a = 0, b = s.size();
  while (a < b && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
  while (b > a && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
  return s.substr(a, b - a);
}

/// A non-negative integer that fits `limit`, or an error naming the flag.
std::int64_t parse_int(const std::string& flag, const std::string& text, std::int64_t limit) {
  const std::string t = trim(text);
  if (t.empty() || !std::all_of(t.begin(), t.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); })) {
    fail(flag + ": '" + text + "' is not a non-negative integer");
  }
  if (t.size() > 12) fail(flag + ": '" + text + "' is too large");
  const std::int64_t v = std::stoll(t);
  if (v > limit) fail(flag + ": " + t + " is too large (at most " + std::to_string(limit) + ")");
  return v;
}

std::vector<ShapeSpec> layers(std::int64_t hidden, std::int64_t kv, std::int64_t inter) {
  return {{hidden, hidden, "q_proj/o_proj"},
          {hidden, kv, "k_proj/v_proj"},
          {hidden, inter, "gate_proj/up_proj"},
          {inter, hidden, "down_proj"}};
}

}  // namespace

std::string ShapeSpec::key() const { return std::to_string(k) + ":" + std::to_string(n); }

const std::vector<Preset>& presets() {
  static const std::vector<Preset> all = {
      {"qwen2.5-14b", "Qwen2.5-14B linear layers (MLX issue #3553)", layers(5120, 1024, 13824)},
      {"qwen2.5-7b", "Qwen2.5-7B linear layers", layers(3584, 512, 18944)},
      {"qwen2.5-32b", "Qwen2.5-32B linear layers", layers(5120, 1024, 27648)},
      {"llama-3-8b", "Llama-3-8B linear layers", layers(4096, 1024, 14336)},
      {"llama-3-70b", "Llama-3-70B linear layers", layers(8192, 1024, 28672)},
  };
  return all;
}

const Preset& find_preset(const std::string& name) {
  std::string known;
  for (const auto& p : presets()) {
    if (p.name == name) return p;
    known += (known.empty() ? "" : ", ") + p.name;
  }
  fail("--preset: unknown preset '" + name + "' (known: " + known + ")");
}

std::vector<int> parse_m_list(const std::string& text) {
  std::set<int> out;
  std::size_t start = 0;
  if (trim(text).empty()) fail("--m: empty list");
  while (start <= text.size()) {
    const std::size_t comma = text.find(',', start);
    const std::string item = trim(text.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (item.empty()) fail("--m: empty item in '" + text + "'");
    const std::size_t dash = item.find('-');
    std::int64_t lo, hi;
    if (dash == std::string::npos) {
      lo = hi = parse_int("--m", item, 1 << 20);
    } else {
      if (dash == 0) fail("--m: '" + item + "': M must be at least 1");
      lo = parse_int("--m", item.substr(0, dash), 1 << 20);
      hi = parse_int("--m", item.substr(dash + 1), 1 << 20);
      if (hi < lo) fail("--m: range '" + item + "' runs backwards");
    }
    if (lo < 1) fail("--m: M must be at least 1 (got " + std::to_string(lo) + ")");
    if (hi - lo > 4096) fail("--m: range '" + item + "' is too long");
    for (std::int64_t m = lo; m <= hi; ++m) out.insert(static_cast<int>(m));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return {out.begin(), out.end()};
}

ShapeSpec parse_shape(const std::string& text) {
  const std::size_t colon = text.find(':');
  if (colon == std::string::npos) fail("--shape: '" + text + "' is not K:N (e.g. 5120:13824)");
  ShapeSpec s;
  s.k = parse_int("--shape", text.substr(0, colon), std::int64_t{1} << 24);
  s.n = parse_int("--shape", text.substr(colon + 1), std::int64_t{1} << 24);
  if (s.k < 1 || s.n < 1) fail("--shape: '" + text + "': K and N must be at least 1");
  return s;
}

bool parse_bool(const std::string& name, const std::string& text) {
  std::string t = trim(text);
  std::transform(t.begin(), t.end(), t.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (t == "true" || t == "1" || t == "yes") return true;
  if (t == "false" || t == "0" || t == "no") return false;
  fail(name + ": '" + text + "' is not true or false");
}

BenchPlan make_plan(const BenchOptions& o) {
  BenchPlan plan;
  // Backend.
  if (o.backend == "cpu") {
    plan.device = Device::cpu();
  } else if (o.backend == "cuda") {
    if (!cuda_available()) fail("--backend cuda: no CUDA device (or this build of qmm has no CUDA backend)");
    if (o.device < 0 || o.device >= cuda_device_count()) fail("--device: no CUDA device " + std::to_string(o.device));
    plan.device = Device::cuda(o.device);
  } else if (o.backend == "auto") {
    plan.device = cuda_available() ? Device::cuda(std::max(0, std::min(o.device, cuda_device_count() - 1)))
                                   : Device::cpu();
  } else {
    fail("--backend: unknown backend '" + o.backend + "' (expected cpu, cuda or auto)");
  }

  // Format.
  if (o.bits != 2 && o.bits != 3 && o.bits != 4 && o.bits != 5 && o.bits != 6 && o.bits != 8) {
    fail("--bits: " + std::to_string(o.bits) + " is not supported (expected 2, 3, 4, 5, 6 or 8)");
  }
  if (o.group_size != 32 && o.group_size != 64 && o.group_size != 128) {
    fail("--group-size: " + std::to_string(o.group_size) + " is not supported (expected 32, 64 or 128)");
  }
  plan.bits = o.bits;
  plan.group_size = o.group_size;
  try {
    plan.dtype = parse_dtype(o.dtype);
  } catch (const std::exception&) {
    fail("--dtype: unknown dtype '" + o.dtype + "' (expected float16, bfloat16 or float32)");
  }
  if (!is_floating(plan.dtype)) fail("--dtype: '" + o.dtype + "' is not a float type");
  plan.transpose = parse_bool("--transpose", o.transpose);

  // Shapes.
  if (!o.preset.empty() || o.shapes.empty()) {
    const Preset& p = find_preset(o.preset.empty() ? presets().front().name : o.preset);
    plan.preset = p.name;
    plan.shapes = p.shapes;
  }
  for (const auto& s : o.shapes) plan.shapes.push_back(parse_shape(s));
  for (const auto& s : plan.shapes) {
    // The grouped (and packed) axis is K for transpose=true and N for transpose=false.
    const std::int64_t grouped = plan.transpose ? s.k : s.n;
    const char* axis = plan.transpose ? "K" : "N";
    if (grouped % plan.group_size != 0) {
      fail("--shape " + s.key() + ": " + axis + "=" + std::to_string(grouped) + " is not divisible by the group size " +
           std::to_string(plan.group_size));
    }
    if ((grouped * plan.bits) % 32 != 0) {
      fail("--shape " + s.key() + ": " + axis + " * bits must be a multiple of 32");
    }
  }

  // M.
  plan.ms = parse_m_list(o.m);
  if (plan.ms.front() != 1) plan.ms.insert(plan.ms.begin(), 1);  // ratios are to M=1

  // Kernel.
  if (!o.kernel.empty()) {
    const auto names = kernel_names(plan.device, "quantized_matmul");
    if (!is_kernel_name(plan.device, "quantized_matmul", o.kernel)) {
      std::string known;
      for (const auto& n : names) known += (known.empty() ? "" : ", ") + n;
      fail("--kernel: unknown kernel '" + o.kernel + "' for " + device_name(plan.device) + " (known: " + known + ")");
    }
  }
  plan.kernel = o.kernel;

  // Method.
  if (!(o.budget_ms > 0)) fail("--budget-ms must be positive");
  if (o.min_samples < 1) fail("--min-samples must be at least 1");
  if (o.rotation_mb < 0) fail("--rotation-mb must not be negative");
  plan.budget_ms = o.budget_ms;
  plan.min_samples = o.min_samples;
  plan.rotation_mb = o.rotation_mb;
  plan.dense = !o.no_dense;
  return plan;
}

}  // namespace qmm::bench
