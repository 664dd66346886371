#include "model/cpu_ops.h"

#include <cmath>
#include <vector>

#include "qmm/ops.h"

namespace qmm::model::cpu {

namespace {

inline float load(const void* p, Dtype dtype, std::int64_t i) {
  const std::uint16_t b = static_cast<const std::uint16_t*>(p)[i];
  return dtype == Dtype::bfloat16 ? bfloat16_bits_to_float(b) : float16_bits_to_float(b);
}
inline void store(void* p, Dtype dtype, std::int64_t i, float v) {
  static_cast<std::uint16_t*>(p)[i] = dtype == Dtype::bfloat16 ? float_to_bfloat16_bits(v) : float_to_float16_bits(v);
}

}  // namespace

void embed_rows(const std::int32_t* tokens, int n, const Linear& e, float* h) {
  const std::int64_t hidden = e.K;
  for (int i = 0; i < n; ++i) {
    float* out = h + i * hidden;
    const std::int32_t tok = tokens[i];
    if (tok < 0 || tok >= e.N) {
      for (std::int64_t k = 0; k < hidden; ++k) out[k] = 0.0f;
      continue;
    }
    if (e.quant.quantized) {
      // Dequantize only this row, through qmm's own dequantize.
      const std::int64_t words = e.w_q.shape()[1], groups = e.scales.shape()[1];
      const std::size_t sb = itemsize(e.scales.dtype());
      TensorView wq(static_cast<std::uint32_t*>(e.w_q.data()) + tok * words, {1, words}, Dtype::uint32);
      TensorView s(static_cast<char*>(e.scales.data()) + tok * groups * sb, {1, groups}, e.scales.dtype());
      TensorView b(static_cast<char*>(e.biases.data()) + tok * groups * sb, {1, groups}, e.biases.dtype());
      dequantize_into(wq, s, b, TensorView(out, {1, hidden}, Dtype::float32), e.quant.group_size, e.quant.bits);
    } else {
      const Dtype dt = e.weight.dtype();
      for (std::int64_t k = 0; k < hidden; ++k) out[k] = load(e.weight.data(), dt, tok * hidden + k);
    }
  }
}

void rms_norm(const float* h, const float* w, void* out, int n, std::int64_t hidden, float eps, Dtype dtype) {
  for (int i = 0; i < n; ++i) {
    const float* x = h + i * hidden;
    float ss = 0.0f;
    for (std::int64_t k = 0; k < hidden; ++k) ss += x[k] * x[k];
    const float r = 1.0f / std::sqrt(ss / static_cast<float>(hidden) + eps);
    for (std::int64_t k = 0; k < hidden; ++k) store(out, dtype, i * hidden + k, x[k] * r * w[k]);
  }
}

void add_rms_norm(float* h, const void* delta, const float* bias, const float* w, void* out, int n,
                  std::int64_t hidden, float eps, Dtype dtype) {
  for (int i = 0; i < n; ++i) {
    float* x = h + i * hidden;
    for (std::int64_t k = 0; k < hidden; ++k) {
      float v = load(delta, dtype, i * hidden + k);
      if (bias) v += bias[k];
      x[k] += v;
    }
  }
  rms_norm(h, w, out, n, hidden, eps, dtype);
}

void qkv_rope(const cuda::QkvArgs& a, Dtype dtype) {
  const int D = a.head_dim, half = D / 2;
  std::vector<float> x(static_cast<std::size_t>(D));
  for (int i = 0; i < a.n; ++i) {
    const std::int64_t p = a.pos + i;
    for (int hh = 0; hh < a.heads + 2 * a.kv_heads; ++hh) {
      const int kind = hh < a.heads ? 0 : hh < a.heads + a.kv_heads ? 1 : 2;
      const int head = kind == 0 ? hh : kind == 1 ? hh - a.heads : hh - a.heads - a.kv_heads;
      const void* src = kind == 0 ? a.q : kind == 1 ? a.k : a.v;
      const std::int64_t stride = kind == 0 ? a.q_stride : kind == 1 ? a.k_stride : a.v_stride;
      const float* bias = kind == 0 ? a.q_bias : kind == 1 ? a.k_bias : a.v_bias;
      for (int d = 0; d < D; ++d) {
        x[d] = load(src, dtype, i * stride + static_cast<std::int64_t>(head) * D + d);
        if (bias) x[d] += bias[head * D + d];
      }
      const std::int64_t cache_off = (p * a.kv_heads + head) * D;
      if (kind == 2) {
        for (int d = 0; d < D; ++d) store(a.v_cache, dtype, cache_off + d, x[d]);
        continue;
      }
      const float* nw = kind == 0 ? a.q_norm : a.k_norm;
      if (nw) {
        float ss = 0.0f;
        for (int d = 0; d < D; ++d) ss += x[d] * x[d];
        const float r = 1.0f / std::sqrt(ss / static_cast<float>(D) + a.eps);
        for (int d = 0; d < D; ++d) x[d] = x[d] * r * nw[d];
      }
      void* dst = kind == 0 ? a.q_out : a.k_cache;
      const std::int64_t off = kind == 0 ? (static_cast<std::int64_t>(i) * a.heads + head) * D : cache_off;
      for (int j = 0; j < half; ++j) {
        const float c = a.rope_cos[p * half + j], s = a.rope_sin[p * half + j];
        store(dst, dtype, off + j, x[j] * c - x[j + half] * s);
        store(dst, dtype, off + j + half, x[j + half] * c + x[j] * s);
      }
    }
  }
}

void attention(const cuda::AttentionArgs& a, Dtype dtype) {
  const int D = a.head_dim, group = a.heads / a.kv_heads;
  std::vector<float> q(static_cast<std::size_t>(D)), o(static_cast<std::size_t>(D));
  std::vector<float> scores;
  for (int i = 0; i < a.n; ++i) {
    const std::int64_t nk = a.pos + i + 1;
    scores.resize(static_cast<std::size_t>(nk));
    for (int h = 0; h < a.heads; ++h) {
      const int kvh = h / group;
      for (int d = 0; d < D; ++d) q[d] = load(a.q, dtype, (static_cast<std::int64_t>(i) * a.heads + h) * D + d);
      float mx = -INFINITY;
      for (std::int64_t j = 0; j < nk; ++j) {
        const std::int64_t off = (j * a.kv_heads + kvh) * D;
        float s = 0.0f;
        for (int d = 0; d < D; ++d) s += q[d] * load(a.k_cache, dtype, off + d);
        scores[j] = s * a.scale;
        mx = std::fmax(mx, scores[j]);
      }
      float den = 0.0f;
      for (auto& s : scores) {
        s = std::exp(s - mx);
        den += s;
      }
      std::fill(o.begin(), o.end(), 0.0f);
      for (std::int64_t j = 0; j < nk; ++j) {
        const std::int64_t off = (j * a.kv_heads + kvh) * D;
        for (int d = 0; d < D; ++d) o[d] += scores[j] * load(a.v_cache, dtype, off + d);
      }
      for (int d = 0; d < D; ++d) store(a.out, dtype, (static_cast<std::int64_t>(i) * a.heads + h) * D + d, o[d] / den);
    }
  }
}

void swiglu(const void* gate, std::int64_t gs, const void* up, std::int64_t us, const float* gb, const float* ub,
            void* out, int n, std::int64_t inter, Dtype dtype) {
  for (int r = 0; r < n; ++r) {
    for (std::int64_t c = 0; c < inter; ++c) {
      float g = load(gate, dtype, r * gs + c), u = load(up, dtype, r * us + c);
      if (gb) g += gb[c];
      if (ub) u += ub[c];
      store(out, dtype, r * inter + c, g / (1.0f + std::exp(-g)) * u);
    }
  }
}

void dense_linear(const void* x, const void* w, void* out, int n, std::int64_t N, std::int64_t K, Dtype dtype) {
  std::vector<float> xr(static_cast<std::size_t>(K));
  for (int r = 0; r < n; ++r) {
    for (std::int64_t k = 0; k < K; ++k) xr[k] = load(x, dtype, r * K + k);
    for (std::int64_t c = 0; c < N; ++c) {
      float acc = 0.0f;
      for (std::int64_t k = 0; k < K; ++k) acc += xr[k] * load(w, dtype, c * K + k);
      store(out, dtype, r * N + c, acc);
    }
  }
}

}  // namespace qmm::model::cpu
