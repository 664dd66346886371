// The decoder forward pass (embedding, RMSNorm, RoPE, GQA attention over a KV cache, SwiGLU MLP,
// final norm, lm_head) on the CPU or a CUDA device. Every quantized linear runs through
// qmm::quantized_matmul_into. All activations, the KV cache and the attention workspace are
// allocated once, so a pass enqueues no allocation and no synchronization: on CUDA it can be
// captured into a graph and replayed.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "model/weights.h"
#include "qmm/ops.h"

namespace qmm::model {

/// Op categories, for the time split and for passes that run only some of them.
enum Category : unsigned {
  kLinears = 1,    ///< quantized_matmul (and dense) projections, lm_head
  kAttention = 2,  ///< q/k/v bias + RoPE + KV cache write, attention, split combine
  kOther = 4,      ///< embedding, RMSNorm + residual adds, SwiGLU
  kAllOps = 7,
};

struct ModelOptions {
  std::int64_t max_seq = 4096;  ///< KV cache capacity in positions
  int max_verify_rows = 16;     ///< most rows of a pass whose logits are all computed
  int prefill_chunk = 512;      ///< most rows of one prefill pass
};

class Model {
 public:
  Model(std::shared_ptr<const ModelWeights> weights, const ModelOptions& options = {});
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ModelWeights& weights() const { return *w_; }
  const ModelOptions& options() const { return opt_; }
  Device device() const { return w_->device; }
  Dtype dtype() const { return w_->dtype; }

  /// Runs tokens at positions pos .. pos + n - 1 (writing their keys and values into the cache,
  /// n <= max_verify_rows) and returns the logits of every row, (n, vocab) row-major.
  std::vector<float> forward(const std::vector<std::int32_t>& tokens, std::int64_t pos);
  /// Runs tokens from `pos` in passes of at most prefill_chunk rows; returns the last row's logits.
  std::vector<float> prefill(const std::vector<std::int32_t>& tokens, std::int64_t pos = 0,
                             const std::function<void(std::int64_t done, std::int64_t total)>& progress = {});

  // ---- lower level (the benchmark) ----------------------------------------------------------
  /// Copies token ids into the token buffer (ordered on the model's stream).
  void set_tokens(const std::vector<std::int32_t>& tokens);
  /// Enqueues one pass of n rows at pos with the tokens set; logits for every row (all_logits,
  /// n <= max_verify_rows) or the last row only. `categories` skips the other ops (timing only:
  /// the results are then meaningless). No allocation, no synchronization: capturable.
  void enqueue(int n, std::int64_t pos, bool all_logits, unsigned categories = kAllOps);
  void synchronize();
  /// The first `rows` rows of the logits buffer as floats.
  std::vector<float> read_logits(int rows);
  /// The CUDA stream of every op (nullptr on the CPU).
  void* stream() const { return stream_; }
  /// Keys per attention split of verify passes (fixed per model: batch invariance).
  std::int64_t split_len() const { return split_len_; }
  std::int64_t kv_cache_bytes() const;
  /// Bytes of the KV cache a pass of n rows at pos reads.
  std::int64_t kv_read_bytes(int n, std::int64_t pos) const;

 private:
  void linear(const Linear& l, const void* x, void* out, int n);
  void check_pass(int n, std::int64_t pos, bool all_logits) const;

  std::shared_ptr<const ModelWeights> w_;
  ModelOptions opt_;
  bool cuda_ = false;
  void* stream_ = nullptr;
  CallOptions call_;
  int max_rows_ = 0;
  std::int64_t split_len_ = 32;
  std::int64_t prefill_split_len_ = 32;
  std::vector<std::int32_t> host_tokens_;
  Tensor tokens_, h_, xn_, qkv_, qrot_, attn_, tmp_, gu_, act_, logits_;
  Tensor k_cache_, v_cache_, rope_cos_, rope_sin_, ws_o_, ws_ml_, counters_;
};

/// RoPE inverse frequencies of a config (default, linear and llama3 scaling), in double.
std::vector<double> rope_inv_freq(const ModelConfig& config);

}  // namespace qmm::model
