// The CUDA side of qmm_model as plain C++ declarations (no CUDA headers), so that the forward
// pass, the loader and the tests compile on CPU-only machines. Implemented in model/cuda/*.cu
// when the build has CUDA (QMM_HAVE_CUDA), and by model/cuda_stub.cpp (every call throws)
// otherwise. Streams, graphs and events travel as opaque pointers; every CUDA call is checked
// and a failure throws qmm::Error naming the call.
#pragma once

#include <cstddef>
#include <cstdint>

#include "qmm/dtype.h"

namespace qmm::model::cuda {

// ---- runtime --------------------------------------------------------------------------------
void set_device(int index);
void* stream_create();
void stream_destroy(void* stream) noexcept;
void stream_synchronize(void* stream);
/// Waits for all work on the current device (every stream, the legacy one included).
void device_synchronize();
/// Copies; a null stream means synchronous.
void copy_h2d(void* dst, const void* src, std::size_t bytes, void* stream = nullptr);
void copy_d2h(void* dst, const void* src, std::size_t bytes, void* stream = nullptr);
void copy_d2d(void* dst, const void* src, std::size_t bytes, void* stream = nullptr);
void memset_zero(void* dst, std::size_t bytes, void* stream = nullptr);

/// Stream capture into a CUDA graph. capture_end returns the instantiated graph, or nullptr
/// (with `error` set) if capture failed; the stream is usable again either way.
void capture_begin(void* stream);
void* capture_end(void* stream, const char** error);
void graph_launch(void* graph_exec, void* stream);
void graph_destroy(void* graph_exec) noexcept;

void* event_create();
void event_destroy(void* event) noexcept;
void event_record(void* event, void* stream);
/// Milliseconds between two recorded events (waits for `end`).
float event_elapsed_ms(void* start, void* end);

/// Median read bandwidth (GB/s) of a kernel that reads a `bytes` buffer once with 16-byte loads.
double measure_read_bandwidth_gbs(std::size_t bytes, int repeats, void* stream);

// ---- kernels of the forward pass ------------------------------------------------------------
/// An embedding table: quantized (MLX affine) or dense, (vocab, hidden), dtype float16/bfloat16.
struct EmbedTable {
  bool quantized = false;
  const std::uint32_t* w_q = nullptr;
  const void* scales = nullptr;
  const void* biases = nullptr;
  int bits = 4;
  int group_size = 64;
  const void* weight = nullptr;  // dense
  std::int64_t vocab = 0;
  std::int64_t hidden = 0;
};

/// h[i, :] = embedding row tokens[i] (dequantized in fp32); ids out of range give zeros.
void embed_rows(const std::int32_t* tokens, int n, const EmbedTable& table, float* h, Dtype dtype, void* stream);

/// out = dtype(rmsnorm(h) * w), one block per row.
void rms_norm(const float* h, const float* w, void* out, int n, std::int64_t hidden, float eps, Dtype dtype,
              void* stream);
/// h += delta (+ delta_bias); out = dtype(rmsnorm(h) * w).
void add_rms_norm(float* h, const void* delta, const float* delta_bias, const float* w, void* out, int n,
                  std::int64_t hidden, float eps, Dtype dtype, void* stream);

/// The q/k/v projections of the new rows and what turns them into attention inputs.
struct QkvArgs {
  const void* q = nullptr;  // rows of the projections (possibly one fused buffer)
  const void* k = nullptr;
  const void* v = nullptr;
  std::int64_t q_stride = 0, k_stride = 0, v_stride = 0;  // elements between rows
  const float* q_bias = nullptr;  // nullable
  const float* k_bias = nullptr;
  const float* v_bias = nullptr;
  const float* q_norm = nullptr;  // nullable (Qwen3 per-head RMSNorm)
  const float* k_norm = nullptr;
  float eps = 1e-6f;
  const float* rope_cos = nullptr;  // [max_seq][head_dim / 2]
  const float* rope_sin = nullptr;
  int n = 0;
  std::int64_t pos = 0;
  int heads = 0, kv_heads = 0, head_dim = 0;
  void* q_out = nullptr;    // [n][heads][head_dim] (the CPU path; the CUDA kernel keeps q on chip)
  void* k_cache = nullptr;  // [max_seq][kv_heads][head_dim]
  void* v_cache = nullptr;
};

struct AttentionArgs {
  const void* q = nullptr;  // [n][heads][head_dim] rotated queries (the CPU path)
  const void* k_cache = nullptr;
  const void* v_cache = nullptr;
  int n = 0;
  std::int64_t pos = 0;  // row i is at position pos + i and sees keys 0 .. pos + i
  int heads = 0, kv_heads = 0, head_dim = 0;
  std::int64_t split_len = 0;  // keys per split (multiple of 32); splits start at multiples of it
  float scale = 1.0f;
  float* ws_o = nullptr;   // [n * heads * splits][head_dim]
  float* ws_ml = nullptr;  // [n * heads * splits][2]
  std::uint32_t* counters = nullptr;  // [kv_heads * attention_chunks(n, group)], zero between calls
  void* out = nullptr;     // [n][heads * head_dim]
};
/// Number of key splits for n rows at pos (the workspace holds n * heads * splits entries).
std::int64_t attention_splits(std::int64_t pos, int n, std::int64_t split_len);
/// Blocks along the query axis for n rows of `group` query heads per key/value head.
std::int64_t attention_chunks(int n, int group, int head_dim);
/// Head dims the attention kernel is compiled for (64, 128, 256).
bool attention_supports_head_dim(int head_dim);
/// One kernel: q/k/v bias, optional q/k RMSNorm and RoPE of the new rows (their keys and values
/// written to the caches at pos .. pos + n - 1), causal GQA attention over the cache in key
/// splits, and the combine of the splits (by the last block of each query chunk). Each row's
/// result depends only on its own keys and the fixed split boundaries, never on n: batch
/// invariance. `qkv.k_cache/v_cache` must equal `a.k_cache/v_cache`.
void attention(const QkvArgs& qkv, const AttentionArgs& a, Dtype dtype, void* stream);

/// out = dtype(silu(gate + gate_bias) * (up + up_bias)).
void swiglu(const void* gate, std::int64_t gate_stride, const void* up, std::int64_t up_stride, const float* gate_bias,
            const float* up_bias, void* out, int n, std::int64_t inter, Dtype dtype, void* stream);

/// out[n][N] = x[n][K] @ w[N][K]^T for unquantized layers (fp32 accumulate).
void dense_linear(const void* x, const void* w, void* out, int n, std::int64_t N, std::int64_t K, Dtype dtype,
                  void* stream);

/// dst[r][c] = dtype(synthetic_uniform(stream_id, (row0 + r) * cols + c) * amplitude).
void fill_uniform(void* dst, Dtype dtype, std::int64_t rows, std::int64_t cols, std::int64_t row0,
                  std::uint64_t stream_id, float amplitude, void* stream);

}  // namespace qmm::model::cuda
