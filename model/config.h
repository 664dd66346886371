// The model configuration of a Llama/Qwen2/Qwen3-style decoder as mlx-community checkpoints
// describe it in config.json, the per-module quantization of such checkpoints, and the presets
// `qmm model` builds synthetic checkpoints from.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "qmm/dtype.h"

namespace qmm::model {

/// How one linear (or embedding) module is stored: quantized with (bits, group_size), or dense.
struct QuantSpec {
  bool quantized = false;
  int group_size = 64;
  int bits = 4;
  friend bool operator==(const QuantSpec& a, const QuantSpec& b) {
    return a.quantized == b.quantized && (!a.quantized || (a.group_size == b.group_size && a.bits == b.bits));
  }
  friend bool operator!=(const QuantSpec& a, const QuantSpec& b) { return !(a == b); }
};

enum class RopeScaling { none, linear, llama3 };

struct ModelConfig {
  std::string model_type = "llama";  ///< llama, mistral, qwen2, qwen3
  std::int64_t hidden_size = 0;
  std::int64_t intermediate_size = 0;
  std::int64_t num_layers = 0;
  std::int64_t num_heads = 0;
  std::int64_t num_kv_heads = 0;
  std::int64_t head_dim = 0;
  std::int64_t vocab_size = 0;
  std::int64_t max_position_embeddings = 0;  ///< 0 when the config does not say
  double rope_theta = 10000.0;
  double rms_norm_eps = 1e-6;
  RopeScaling rope_scaling = RopeScaling::none;
  double rope_factor = 1.0;
  double rope_low_freq_factor = 1.0;
  double rope_high_freq_factor = 4.0;
  std::int64_t rope_original_max_position = 8192;
  /// Tied embeddings (lm_head reuses embed_tokens). Unset when config.json does not say: the
  /// checkpoint then decides (tied iff it has no lm_head.weight).
  std::optional<bool> tie_word_embeddings;
  bool qkv_bias = false;   ///< q/k/v projections have a bias (Qwen2; Llama's attention_bias)
  bool o_bias = false;     ///< o_proj has a bias (Llama's attention_bias)
  bool mlp_bias = false;   ///< gate/up/down have biases (Llama's mlp_bias)
  bool qk_norm = false;    ///< per-head RMSNorm of q and k before RoPE (Qwen3)
  std::string torch_dtype;  ///< "float16", "bfloat16", "float32" or "" (not given)

  bool has_quantization = false;  ///< config.json has a "quantization" section
  QuantSpec default_quant;        ///< its global group_size/bits (quantized = has_quantization)
  /// Per-module overrides keyed by module path ("model.layers.0.mlp.down_proj", "lm_head").
  std::map<std::string, QuantSpec> quant_overrides;

  /// The quantization config.json declares for a module path (the checkpoint has the last word:
  /// a module is quantized iff its .scales tensor exists).
  QuantSpec quant_for(const std::string& module_path) const;
  std::int64_t q_dim() const { return num_heads * head_dim; }
  std::int64_t kv_dim() const { return num_kv_heads * head_dim; }
};

/// Parses and validates config.json text. `source` names the file in error messages. Throws
/// qmm::Error "[config] SOURCE: ..." on malformed JSON, missing or out-of-range fields and
/// unsupported features; never crashes on any input.
ModelConfig parse_config(const std::string& json_text, const std::string& source);
/// Checks the invariants parse_config guarantees (positive sizes within limits, heads divisible
/// by key/value heads, supported quantization).
void validate_config(const ModelConfig& config, const std::string& source);
/// config.json text in the style of mlx-community checkpoints (parse_config reads it back).
std::string config_to_json(const ModelConfig& config);

/// Presets: "qwen2.5-14b", "qwen2.5-32b", "llama-3-8b", "llama-3.1-8b", "tiny". Quantized with
/// (bits, group_size) everywhere (embedding and lm_head included), as mlx-lm's convert does.
ModelConfig preset_config(const std::string& name, int bits = 4, int group_size = 64,
                          Dtype dtype = Dtype::float16);
std::vector<std::string> preset_names();

/// Module paths of the decoder (for quantization lookups and tensor names).
std::string layer_prefix(std::int64_t layer);  ///< "model.layers.N."
extern const char* const kEmbedPath;           ///< "model.embed_tokens"
extern const char* const kLmHeadPath;          ///< "lm_head"
extern const char* const kFinalNormName;       ///< "model.norm.weight"

}  // namespace qmm::model
