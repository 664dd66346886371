// A checkpoint directory in mlx-community's layout: config.json plus model.safetensors, or
// shards listed by model.safetensors.index.json (or, as mlx-lm does, every model*.safetensors).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/safetensors.h"

namespace qmm::model {

/// Parses model.safetensors.index.json: {"weight_map": {tensor: file}}. File names must be plain
/// names inside the checkpoint directory (no '/', no "..", no empty names). Throws qmm::Error
/// "[checkpoint] SOURCE: ...".
std::map<std::string, std::string> parse_safetensors_index(const std::string& text, const std::string& source);

class Checkpoint {
 public:
  /// Opens and validates every file (config.json, index, each shard's header).
  explicit Checkpoint(const std::string& dir);
  struct Entry {
    const SafetensorsFile* file = nullptr;
    const StTensor* tensor = nullptr;
  };
  const std::string& dir() const { return dir_; }
  const ModelConfig& config() const { return config_; }
  /// nullptr when the checkpoint has no such tensor.
  const Entry* find(const std::string& name) const;
  std::vector<std::string> names() const;
  std::size_t file_count() const { return files_.size(); }

 private:
  std::string dir_;
  ModelConfig config_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, Entry> entries_;
};

/// The modules of a decoder in checkpoint order, with the tensors each one stores.
enum class ModuleKind { linear, norm };
struct ModuleSpec {
  std::string path;  ///< "model.layers.3.mlp.down_proj"
  ModuleKind kind = ModuleKind::linear;
  std::int64_t rows = 0;  ///< linear: N (outputs); norm: length
  std::int64_t cols = 0;  ///< linear: K (inputs)
  bool bias = false;
  /// Synthetic checkpoints: quantized per config.json where the group size divides K (the rule
  /// of mlx-lm's convert).
  QuantSpec quant;
};
/// Every module of `config`; lm_head only when the embedding is not tied.
std::vector<ModuleSpec> model_modules(const ModelConfig& config);
/// The tensors of a module as a synthetic checkpoint stores them (dtype for float tensors).
std::vector<SafetensorsWriter::Spec> module_tensors(const ModuleSpec& module, Dtype dtype);

struct SyntheticOptions {
  std::uint64_t seed = 0;
  Dtype dtype = Dtype::float16;
  /// Shards of at most this many bytes (a module never straddles two shards); one file
  /// (model.safetensors, no index) when everything fits.
  std::uint64_t max_shard_bytes = 5'000'000'000ull;
  std::function<void(const std::string&)> progress;
};
/// Writes config.json and model.safetensors (or shards + index) of a random-weight model,
/// generated and quantized exactly as the in-memory synthetic source does. Streams module by
/// module: memory stays at one module.
void write_synthetic_checkpoint(const std::string& dir, const ModelConfig& config, const SyntheticOptions& options);

}  // namespace qmm::model
