#include "model/config.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "qmm/ops.h"

namespace qmm::model {

const char* const kEmbedPath = "model.embed_tokens";
const char* const kLmHeadPath = "lm_head";
const char* const kFinalNormName = "model.norm.weight";

std::string layer_prefix(std::int64_t layer) { return "model.layers." + std::to_string(layer) + "."; }

namespace {

using json = nlohmann::json;

// Limits that keep every size product far from overflow and every allocation sane, whatever an
// untrusted config.json says.
constexpr std::int64_t kMaxHidden = 1 << 17;
constexpr std::int64_t kMaxIntermediate = 1 << 19;
constexpr std::int64_t kMaxLayers = 1024;
constexpr std::int64_t kMaxHeads = 1024;
constexpr std::int64_t kMaxHeadDim = 1024;
constexpr std::int64_t kMaxVocab = 1 << 22;
constexpr std::size_t kMaxConfigBytes = 16u << 20;

[[noreturn]] void fail(const std::string& source, const std::string& msg) {
  throw Error("[config] " + source + ": " + msg);
}

const char* type_name(const json& v) { return v.type_name(); }

std::optional<std::int64_t> get_int(const json& obj, const char* key, const std::string& source,
                                    std::int64_t lo, std::int64_t hi) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::nullopt;
  std::int64_t v = 0;
  if (it->is_number_integer()) {
    if (it->is_number_unsigned() && it->get<std::uint64_t>() > static_cast<std::uint64_t>(hi)) {
      fail(source, std::string("\"") + key + "\" is out of range (at most " + std::to_string(hi) + ")");
    }
    v = it->get<std::int64_t>();
  } else if (it->is_number_float()) {
    // Some writers store integers as 4096.0; accept exact integers only.
    const double d = it->get<double>();
    if (!std::isfinite(d) || d != std::floor(d) || std::fabs(d) > 9.0e15) {
      fail(source, std::string("\"") + key + "\" must be an integer");
    }
    v = static_cast<std::int64_t>(d);
  } else {
    fail(source, std::string("\"") + key + "\" must be an integer but is a " + type_name(*it));
  }
  if (v < lo || v > hi) {
    fail(source, std::string("\"") + key + "\" = " + std::to_string(v) + " is out of range [" +
                     std::to_string(lo) + ", " + std::to_string(hi) + "]");
  }
  return v;
}

std::int64_t require_int(const json& obj, const char* key, const std::string& source, std::int64_t lo,
                         std::int64_t hi) {
  auto v = get_int(obj, key, source, lo, hi);
  if (!v) fail(source, std::string("missing \"") + key + "\"");
  return *v;
}

std::optional<double> get_double(const json& obj, const char* key, const std::string& source) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::nullopt;
  if (!it->is_number()) fail(source, std::string("\"") + key + "\" must be a number but is a " + type_name(*it));
  const double d = it->get<double>();
  if (!std::isfinite(d)) fail(source, std::string("\"") + key + "\" must be finite");
  return d;
}

std::optional<bool> get_bool(const json& obj, const char* key, const std::string& source) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::nullopt;
  if (!it->is_boolean()) fail(source, std::string("\"") + key + "\" must be true or false but is a " + type_name(*it));
  return it->get<bool>();
}

std::optional<std::string> get_string(const json& obj, const char* key, const std::string& source) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::nullopt;
  if (!it->is_string()) fail(source, std::string("\"") + key + "\" must be a string but is a " + type_name(*it));
  return it->get<std::string>();
}

bool supported_bits(std::int64_t b) { return b == 2 || b == 3 || b == 4 || b == 5 || b == 6 || b == 8; }
bool supported_group(std::int64_t g) { return g == 32 || g == 64 || g == 128; }

QuantSpec parse_quant_dict(const json& q, const QuantSpec& fallback, const std::string& source,
                           const std::string& where) {
  QuantSpec s = fallback;
  s.quantized = true;
  auto check_mode = [&](const json& obj) {
    if (auto mode = get_string(obj, "mode", source); mode && *mode != "affine") {
      fail(source, where + " has mode \"" + *mode + "\"; only MLX's \"affine\" mode is supported");
    }
  };
  check_mode(q);
  if (auto g = get_int(q, "group_size", source, 1, 1 << 20)) s.group_size = static_cast<int>(*g);
  if (auto b = get_int(q, "bits", source, 1, 64)) s.bits = static_cast<int>(*b);
  if (!supported_bits(s.bits)) {
    fail(source, where + " has bits=" + std::to_string(s.bits) + "; supported: 2, 3, 4, 5, 6, 8");
  }
  if (!supported_group(s.group_size)) {
    fail(source, where + " has group_size=" + std::to_string(s.group_size) + "; supported: 32, 64, 128");
  }
  return s;
}

void parse_quantization(const json& q, ModelConfig& c, const std::string& source) {
  if (!q.is_object()) fail(source, std::string("\"quantization\" must be an object but is a ") + type_name(q));
  if (q.find("group_size") == q.end() || q.find("bits") == q.end()) {
    fail(source, "\"quantization\" needs \"group_size\" and \"bits\"");
  }
  c.has_quantization = true;
  c.default_quant = parse_quant_dict(q, QuantSpec{}, source, "\"quantization\"");
  for (auto it = q.begin(); it != q.end(); ++it) {
    const std::string& key = it.key();
    if (key == "group_size" || key == "bits" || key == "mode") continue;
    if (key.empty() || key.size() > 512) fail(source, "\"quantization\" has a module key of bad length");
    const json& v = it.value();
    if (v.is_object()) {
      c.quant_overrides[key] = parse_quant_dict(v, c.default_quant, source, "\"quantization\".\"" + key + "\"");
    } else if (v.is_boolean()) {
      QuantSpec s = c.default_quant;
      s.quantized = v.get<bool>();
      c.quant_overrides[key] = s;
    }
    // Other scalars (e.g. "quant_method") describe the method, not a module: ignored.
  }
}

void parse_rope_scaling(const json& r, ModelConfig& c, const std::string& source) {
  if (r.is_null()) return;
  if (!r.is_object()) fail(source, std::string("\"rope_scaling\" must be an object or null but is a ") + type_name(r));
  auto type = get_string(r, "rope_type", source);
  if (!type) type = get_string(r, "type", source);
  if (!type) fail(source, "\"rope_scaling\" has no \"rope_type\" or \"type\"");
  auto factor = [&] {
    auto f = get_double(r, "factor", source);
    if (!f) fail(source, "\"rope_scaling\" of type " + *type + " needs \"factor\"");
    if (!(*f > 0.0) || *f > 1e6) fail(source, "\"rope_scaling\".\"factor\" must be in (0, 1e6]");
    return *f;
  };
  if (*type == "default") {
    c.rope_scaling = RopeScaling::none;
  } else if (*type == "linear") {
    c.rope_scaling = RopeScaling::linear;
    c.rope_factor = factor();
  } else if (*type == "llama3") {
    c.rope_scaling = RopeScaling::llama3;
    c.rope_factor = factor();
    c.rope_low_freq_factor = get_double(r, "low_freq_factor", source).value_or(1.0);
    c.rope_high_freq_factor = get_double(r, "high_freq_factor", source).value_or(4.0);
    c.rope_original_max_position =
        get_int(r, "original_max_position_embeddings", source, 1, 1 << 30).value_or(8192);
    if (!(c.rope_low_freq_factor > 0.0) || !(c.rope_high_freq_factor > c.rope_low_freq_factor) ||
        c.rope_high_freq_factor > 1e6) {
      fail(source, "\"rope_scaling\" (llama3) needs 0 < low_freq_factor < high_freq_factor");
    }
  } else {
    fail(source, "\"rope_scaling\" type \"" + *type + "\" is not supported (default, linear, llama3)");
  }
}

}  // namespace

QuantSpec ModelConfig::quant_for(const std::string& module_path) const {
  auto it = quant_overrides.find(module_path);
  if (it != quant_overrides.end()) return it->second;
  QuantSpec s = default_quant;
  s.quantized = has_quantization;
  return s;
}

void validate_config(const ModelConfig& c, const std::string& source) {
  auto range = [&](const char* name, std::int64_t v, std::int64_t lo, std::int64_t hi) {
    if (v < lo || v > hi) {
      fail(source, std::string(name) + " = " + std::to_string(v) + " is out of range [" + std::to_string(lo) + ", " +
                       std::to_string(hi) + "]");
    }
  };
  range("hidden_size", c.hidden_size, 1, kMaxHidden);
  range("intermediate_size", c.intermediate_size, 1, kMaxIntermediate);
  range("num_hidden_layers", c.num_layers, 1, kMaxLayers);
  range("num_attention_heads", c.num_heads, 1, kMaxHeads);
  range("num_key_value_heads", c.num_kv_heads, 1, kMaxHeads);
  range("head_dim", c.head_dim, 2, kMaxHeadDim);
  range("vocab_size", c.vocab_size, 1, kMaxVocab);
  if (c.head_dim % 2 != 0) fail(source, "head_dim = " + std::to_string(c.head_dim) + " must be even (RoPE)");
  if (c.num_heads % c.num_kv_heads != 0) {
    fail(source, "num_attention_heads = " + std::to_string(c.num_heads) + " is not a multiple of num_key_value_heads = " +
                     std::to_string(c.num_kv_heads));
  }
  if (c.q_dim() > 4 * kMaxHidden) fail(source, "num_attention_heads * head_dim is too large");
  if (!(c.rope_theta > 0.0) || !std::isfinite(c.rope_theta)) fail(source, "rope_theta must be positive");
  if (!(c.rms_norm_eps > 0.0) || !(c.rms_norm_eps < 1.0)) fail(source, "rms_norm_eps must be in (0, 1)");
  if (c.model_type != "llama" && c.model_type != "mistral" && c.model_type != "qwen2" && c.model_type != "qwen3") {
    fail(source, "model_type \"" + c.model_type + "\" is not supported (llama, mistral, qwen2, qwen3)");
  }
  if (c.has_quantization) {
    auto check = [&](const std::string& where, const QuantSpec& s) {
      if (!s.quantized) return;
      if (!supported_bits(s.bits) || !supported_group(s.group_size)) {
        fail(source, where + ": unsupported bits=" + std::to_string(s.bits) + " group_size=" + std::to_string(s.group_size));
      }
    };
    check("quantization", c.default_quant);
    for (const auto& [k, s] : c.quant_overrides) check("quantization." + k, s);
  }
}

ModelConfig parse_config(const std::string& text, const std::string& source) {
  if (text.size() > kMaxConfigBytes) {
    fail(source, "is " + std::to_string(text.size()) + " bytes; config files over " + std::to_string(kMaxConfigBytes) +
                     " bytes are rejected");
  }
  json j;
  try {
    j = json::parse(text);  // nlohmann's parser is iterative: deep nesting cannot overflow the stack
  } catch (const json::exception& e) {
    fail(source, std::string("not valid JSON: ") + e.what());
  }
  if (!j.is_object()) fail(source, std::string("the top level must be a JSON object but is a ") + type_name(j));

  ModelConfig c;
  try {
    if (auto t = get_string(j, "model_type", source)) c.model_type = *t;
    c.hidden_size = require_int(j, "hidden_size", source, 1, kMaxHidden);
    c.intermediate_size = require_int(j, "intermediate_size", source, 1, kMaxIntermediate);
    c.num_layers = require_int(j, "num_hidden_layers", source, 1, kMaxLayers);
    c.num_heads = require_int(j, "num_attention_heads", source, 1, kMaxHeads);
    c.num_kv_heads = get_int(j, "num_key_value_heads", source, 1, kMaxHeads).value_or(c.num_heads);
    c.vocab_size = require_int(j, "vocab_size", source, 1, kMaxVocab);
    if (auto hd = get_int(j, "head_dim", source, 1, kMaxHeadDim)) {
      c.head_dim = *hd;
    } else {
      if (c.hidden_size % c.num_heads != 0) {
        fail(source, "no \"head_dim\" and hidden_size is not a multiple of num_attention_heads");
      }
      c.head_dim = c.hidden_size / c.num_heads;
    }
    c.max_position_embeddings = get_int(j, "max_position_embeddings", source, 1, std::int64_t(1) << 40).value_or(0);
    c.rope_theta = get_double(j, "rope_theta", source).value_or(10000.0);
    c.rms_norm_eps = get_double(j, "rms_norm_eps", source).value_or(1e-6);
    if (auto r = j.find("rope_scaling"); r != j.end()) parse_rope_scaling(*r, c, source);
    c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", source);
    const bool attention_bias = get_bool(j, "attention_bias", source).value_or(false);
    if (c.model_type == "qwen2") {
      c.qkv_bias = true;  // Qwen2 always has q/k/v biases and never an o_proj bias
    } else {
      c.qkv_bias = attention_bias;
      c.o_bias = attention_bias;
    }
    c.mlp_bias = get_bool(j, "mlp_bias", source).value_or(false);
    c.qk_norm = c.model_type == "qwen3";
    if (get_bool(j, "use_sliding_window", source).value_or(false)) {
      fail(source, "\"use_sliding_window\": true is not supported");
    }
    if (auto dt = get_string(j, "torch_dtype", source)) {
      if (*dt == "float16" || *dt == "bfloat16" || *dt == "float32") c.torch_dtype = *dt;
    }
    auto q = j.find("quantization");
    if (q == j.end() || q->is_null()) q = j.find("quantization_config");
    if (q != j.end() && !q->is_null()) parse_quantization(*q, c, source);
  } catch (const json::exception& e) {
    fail(source, std::string("unexpected JSON content: ") + e.what());
  }
  validate_config(c, source);
  return c;
}

std::string config_to_json(const ModelConfig& c) {
  nlohmann::ordered_json j;
  const bool qwen = c.model_type == "qwen2" || c.model_type == "qwen3";
  const char* arch = c.model_type == "qwen2"   ? "Qwen2ForCausalLM"
                     : c.model_type == "qwen3" ? "Qwen3ForCausalLM"
                     : c.model_type == "mistral" ? "MistralForCausalLM"
                                                 : "LlamaForCausalLM";
  j["architectures"] = {arch};
  j["model_type"] = c.model_type;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_layers;
  j["num_attention_heads"] = c.num_heads;
  j["num_key_value_heads"] = c.num_kv_heads;
  j["head_dim"] = c.head_dim;
  j["vocab_size"] = c.vocab_size;
  if (c.max_position_embeddings > 0) j["max_position_embeddings"] = c.max_position_embeddings;
  j["rope_theta"] = c.rope_theta;
  j["rms_norm_eps"] = c.rms_norm_eps;
  if (c.rope_scaling == RopeScaling::none) {
    j["rope_scaling"] = nullptr;
  } else if (c.rope_scaling == RopeScaling::linear) {
    j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", c.rope_factor}};
  } else {
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", c.rope_factor},
                         {"low_freq_factor", c.rope_low_freq_factor},
                         {"high_freq_factor", c.rope_high_freq_factor},
                         {"original_max_position_embeddings", c.rope_original_max_position}};
  }
  if (c.tie_word_embeddings) j["tie_word_embeddings"] = *c.tie_word_embeddings;
  if (!qwen || c.model_type == "qwen3") j["attention_bias"] = c.qkv_bias;
  if (!qwen) j["mlp_bias"] = c.mlp_bias;
  if (c.model_type == "qwen2") j["use_sliding_window"] = false;
  if (!c.torch_dtype.empty()) j["torch_dtype"] = c.torch_dtype;
  if (c.has_quantization) {
    nlohmann::ordered_json q;
    q["group_size"] = c.default_quant.group_size;
    q["bits"] = c.default_quant.bits;
    for (const auto& [k, s] : c.quant_overrides) {
      if (s.quantized) {
        q[k] = {{"group_size", s.group_size}, {"bits", s.bits}};
      } else {
        q[k] = false;
      }
    }
    j["quantization"] = q;
    j["quantization_config"] = q;  // mlx-lm writes both
  }
  return j.dump(4) + "\n";
}

std::vector<std::string> preset_names() { return {"qwen2.5-14b", "qwen2.5-32b", "llama-3-8b", "llama-3.1-8b", "tiny"}; }

ModelConfig preset_config(const std::string& name, int bits, int group_size, Dtype dtype) {
  ModelConfig c;
  if (name == "qwen2.5-14b" || name == "qwen2.5-32b") {
    c.model_type = "qwen2";
    c.hidden_size = 5120;
    c.intermediate_size = name == "qwen2.5-14b" ? 13824 : 27648;
    c.num_layers = name == "qwen2.5-14b" ? 48 : 64;
    c.num_heads = 40;
    c.num_kv_heads = 8;
    c.head_dim = 128;
    c.vocab_size = 152064;
    c.max_position_embeddings = 32768;
    c.rope_theta = 1e6;
    c.rms_norm_eps = 1e-6;
    c.tie_word_embeddings = false;
  } else if (name == "llama-3-8b" || name == "llama-3.1-8b") {
    c.model_type = "llama";
    c.hidden_size = 4096;
    c.intermediate_size = 14336;
    c.num_layers = 32;
    c.num_heads = 32;
    c.num_kv_heads = 8;
    c.head_dim = 128;
    c.vocab_size = 128256;
    c.rope_theta = 500000.0;
    c.rms_norm_eps = 1e-5;
    c.tie_word_embeddings = false;
    c.max_position_embeddings = 8192;
    if (name == "llama-3.1-8b") {
      c.max_position_embeddings = 131072;
      c.rope_scaling = RopeScaling::llama3;
      c.rope_factor = 8.0;
      c.rope_low_freq_factor = 1.0;
      c.rope_high_freq_factor = 4.0;
      c.rope_original_max_position = 8192;
    }
  } else if (name == "tiny") {
    c.model_type = "qwen2";
    c.hidden_size = 256;
    c.intermediate_size = 512;
    c.num_layers = 2;
    c.num_heads = 4;
    c.num_kv_heads = 2;
    c.head_dim = 64;
    c.vocab_size = 512;
    c.max_position_embeddings = 4096;
    c.rope_theta = 10000.0;
    c.rms_norm_eps = 1e-6;
    c.tie_word_embeddings = false;
  } else {
    std::string list;
    for (const auto& n : preset_names()) list += (list.empty() ? "" : ", ") + n;
    throw Error("[config] unknown preset '" + name + "' (available: " + list + ")");
  }
  c.qkv_bias = c.model_type == "qwen2";
  c.torch_dtype = dtype == Dtype::bfloat16 ? "bfloat16" : dtype == Dtype::float32 ? "float32" : "float16";
  if (bits > 0) {
    c.has_quantization = true;
    c.default_quant = QuantSpec{true, group_size, bits};
  }
  validate_config(c, "preset " + name);
  return c;
}

}  // namespace qmm::model
