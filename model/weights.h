// The weights of a decoder on one device, ready for the forward pass, and the two places they
// come from: a checkpoint directory or the synthetic generator.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "model/checkpoint.h"
#include "model/config.h"
#include "qmm/tensor.h"

namespace qmm::model {

/// One linear layer y = x W^T (+ bias), W (N, K). Fused projections (q|k|v, gate|up) are one
/// Linear whose rows are the pieces stacked.
struct Linear {
  std::string name;
  std::int64_t N = 0;
  std::int64_t K = 0;
  QuantSpec quant;           ///< quantized (bits, group_size), or dense
  Tensor w_q;                ///< quantized: uint32 (N, K * bits / 32)
  Tensor scales;             ///< quantized: (N, K / group_size), the model dtype
  Tensor biases;             ///< quantized: same as scales
  Tensor weight;             ///< dense: (N, K), the model dtype
  Tensor bias;               ///< float32 (N,) or undefined
  /// Bytes one matmul reads (weights, scales, biases and bias).
  std::int64_t bytes() const;
};

struct Layer {
  Tensor input_norm;  ///< float32 (hidden,)
  Tensor post_norm;   ///< float32 (hidden,)
  Tensor q_norm;      ///< float32 (head_dim,), Qwen3 only
  Tensor k_norm;
  bool fused_qkv = false;
  Linear qkv;  ///< fused: rows q_dim + 2 kv_dim
  Linear q, k, v;
  Linear o;
  bool fused_gate_up = false;
  Linear gate_up;  ///< fused: rows 2 * intermediate
  Linear gate, up;
  Linear down;
};

struct ModelWeights {
  ModelConfig config;
  std::string source;  ///< "synthetic qwen2.5-14b" or the checkpoint directory
  Dtype dtype = Dtype::float16;
  Device device = Device::cpu();
  Linear embed;  ///< (vocab, hidden); rows are gathered, never multiplied (unless tied)
  bool tied = false;
  Linear lm_head;  ///< shares embed's tensors when tied
  Tensor final_norm;
  std::vector<Layer> layers;
  /// Bytes of every linear one forward reads (layers and lm_head).
  std::int64_t linear_bytes() const;
  /// Bytes of everything else one forward reads for n tokens (norms, n embedding rows).
  std::int64_t other_bytes(int n) const;
};

/// Where weights come from.
class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual const ModelConfig& config() const = 0;
  virtual std::string description() const = 0;
  /// How module `path` of logical shape (N, K) is stored; validates the tensors against the
  /// shape, config.json and each other.
  virtual QuantSpec linear_quant(const std::string& path, std::int64_t N, std::int64_t K) = 0;
  virtual bool has_bias(const std::string& path, std::int64_t N) = 0;
  /// Fills rows [row0, row0 + N) of dst's tensors (allocated with the stored layout, on any
  /// device, float tensors in dst's dtype).
  virtual void read_linear(const std::string& path, std::int64_t N, std::int64_t K, const QuantSpec& quant,
                           Linear& dst, std::int64_t row0, Dtype dtype) = 0;
  virtual std::vector<float> read_bias(const std::string& path, std::int64_t N) = 0;
  /// A 1-D float tensor such as a norm weight ("model.norm.weight").
  virtual std::vector<float> read_vector(const std::string& name, std::int64_t n) = 0;
  /// Whether lm_head reuses the embedding.
  virtual bool tied_embeddings() = 0;
};

std::unique_ptr<WeightSource> checkpoint_source(std::shared_ptr<const Checkpoint> checkpoint);
/// Random weights (fixed seed) quantized with qmm::quantize on the destination's device. Norm
/// weights and biases are rounded to `storage_dtype`, as a checkpoint would store them.
std::unique_ptr<WeightSource> synthetic_source(const ModelConfig& config, std::uint64_t seed = 0,
                                               const std::string& name = "synthetic",
                                               Dtype storage_dtype = Dtype::float16);
/// The dtype a config's synthetic checkpoint is stored in (torch_dtype; float16 when unset).
Dtype storage_dtype(const ModelConfig& config);

struct LoadOptions {
  Device device = Device::cpu();
  Dtype dtype = Dtype::float16;  ///< activations, scales and dense weights (float16 or bfloat16)
  bool fuse = true;              ///< stack q|k|v and gate|up into one matmul each when stored alike
  std::function<void(const std::string&)> progress;
};
ModelWeights load_weights(WeightSource& source, const LoadOptions& options);

/// Uninitialised tensors of a linear in its stored layout.
Linear allocate_linear(const std::string& name, std::int64_t N, std::int64_t K, const QuantSpec& quant, Dtype dtype,
                       Device device);

/// The synthetic value distribution (shared by the in-memory source and the checkpoint writer).
float synthetic_amplitude(const ModuleSpec& module, const ModelConfig& config);

/// Copies host bytes into a tensor at a byte offset (CPU memcpy or a CUDA copy), and back.
void copy_into(const Tensor& dst, std::size_t offset, const void* src, std::size_t bytes);
void copy_out(void* dst, const Tensor& src, std::size_t offset, std::size_t bytes);

}  // namespace qmm::model
