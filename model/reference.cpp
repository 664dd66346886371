#include "model/reference.h"

#include <cmath>
#include <cstring>

#include "qmm/ops.h"

namespace qmm::model {

namespace {

using Vec = std::vector<double>;

struct Mat {
  std::int64_t rows = 0, cols = 0;
  Vec v;
  const double* row(std::int64_t r) const { return v.data() + r * cols; }
};

Tensor copy_tensor(const StTensor& t) {
  Dtype d;
  if (!st_to_qmm_dtype(t.dtype, d)) throw Error("[reference] unsupported dtype of " + t.name);
  Tensor out = Tensor::empty(t.shape, d);
  if (t.nbytes()) std::memcpy(out.data(), t.data, t.nbytes());
  return out;
}

const StTensor& get(const Checkpoint& ck, const std::string& name) {
  const auto* e = ck.find(name);
  if (!e) throw Error("[reference] missing tensor " + name);
  return *e->tensor;
}

Vec floats(const Checkpoint& ck, const std::string& name) {
  const auto f = copy_tensor(get(ck, name)).to_floats();
  return Vec(f.begin(), f.end());
}

Mat matrix(const Checkpoint& ck, const std::string& path) {
  Mat m;
  Tensor w;
  if (ck.find(path + ".scales")) {
    const QuantSpec q = ck.config().quant_for(path);
    w = dequantize(copy_tensor(get(ck, path + ".weight")), copy_tensor(get(ck, path + ".scales")),
                   copy_tensor(get(ck, path + ".biases")), q.group_size, q.bits, Dtype::float32);
  } else {
    w = copy_tensor(get(ck, path + ".weight"));
  }
  m.rows = w.shape()[0];
  m.cols = w.shape()[1];
  const auto f = w.to_floats();
  m.v.assign(f.begin(), f.end());
  return m;
}

/// y = W x (+ b)
Vec matvec(const Mat& w, const Vec& x, const Vec* b = nullptr) {
  Vec y(static_cast<std::size_t>(w.rows));
  for (std::int64_t r = 0; r < w.rows; ++r) {
    const double* wr = w.row(r);
    double s = 0;
    for (std::int64_t k = 0; k < w.cols; ++k) s += wr[k] * x[k];
    y[r] = s + (b ? (*b)[r] : 0.0);
  }
  return y;
}

Vec rmsnorm(const Vec& x, const Vec& w, double eps) {
  double ss = 0;
  for (double v : x) ss += v * v;
  const double r = 1.0 / std::sqrt(ss / static_cast<double>(x.size()) + eps);
  Vec y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) y[i] = x[i] * r * w[i];
  return y;
}

/// Inverse frequencies, written from the Hugging Face formulation of each scaling type.
Vec inv_freq(const ModelConfig& c) {
  const std::int64_t D = c.head_dim;
  Vec inv(static_cast<std::size_t>(D / 2));
  for (std::int64_t i = 0; i < D / 2; ++i) {
    double f = 1.0 / std::pow(c.rope_theta, static_cast<double>(2 * i) / static_cast<double>(D));
    if (c.rope_scaling == RopeScaling::linear) f = f / c.rope_factor;
    if (c.rope_scaling == RopeScaling::llama3) {
      const double wavelen = 2.0 * M_PI / f;
      const double old = static_cast<double>(c.rope_original_max_position);
      if (wavelen < old / c.rope_high_freq_factor) {
        // high frequency: unchanged
      } else if (wavelen > old / c.rope_low_freq_factor) {
        f = f / c.rope_factor;
      } else {
        const double smooth = (old / wavelen - c.rope_low_freq_factor) / (c.rope_high_freq_factor - c.rope_low_freq_factor);
        f = (1.0 - smooth) * f / c.rope_factor + smooth * f;
      }
    }
    inv[static_cast<std::size_t>(i)] = f;
  }
  return inv;
}

void rope(double* x, std::int64_t D, std::int64_t pos, const Vec& inv) {
  for (std::int64_t j = 0; j < D / 2; ++j) {
    const double a = static_cast<double>(pos) * inv[static_cast<std::size_t>(j)];
    const double x1 = x[j], x2 = x[j + D / 2];
    x[j] = x1 * std::cos(a) - x2 * std::sin(a);
    x[j + D / 2] = x2 * std::cos(a) + x1 * std::sin(a);
  }
}

}  // namespace

std::vector<double> reference_forward(const Checkpoint& ck, const std::vector<std::int32_t>& tokens) {
  const ModelConfig& c = ck.config();
  const std::int64_t T = static_cast<std::int64_t>(tokens.size());
  const std::int64_t D = c.head_dim, H = c.num_heads, KVH = c.num_kv_heads, hidden = c.hidden_size;
  const Vec inv = inv_freq(c);

  const Mat embed = matrix(ck, "model.embed_tokens");
  std::vector<Vec> x(static_cast<std::size_t>(T));
  for (std::int64_t t = 0; t < T; ++t) x[t].assign(embed.row(tokens[t]), embed.row(tokens[t]) + hidden);

  for (std::int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    auto opt_vec = [&](const std::string& name, Vec& out) -> const Vec* {
      if (!ck.find(name)) return nullptr;
      out = floats(ck, name);
      return &out;
    };
    Vec bq, bk, bv, bo, bg, bu, bd, qn, kn;
    const Mat wq = matrix(ck, p + "self_attn.q_proj"), wk = matrix(ck, p + "self_attn.k_proj"),
              wv = matrix(ck, p + "self_attn.v_proj"), wo = matrix(ck, p + "self_attn.o_proj");
    const Mat wg = matrix(ck, p + "mlp.gate_proj"), wu = matrix(ck, p + "mlp.up_proj"), wd = matrix(ck, p + "mlp.down_proj");
    const Vec* pbq = opt_vec(p + "self_attn.q_proj.bias", bq);
    const Vec* pbk = opt_vec(p + "self_attn.k_proj.bias", bk);
    const Vec* pbv = opt_vec(p + "self_attn.v_proj.bias", bv);
    const Vec* pbo = opt_vec(p + "self_attn.o_proj.bias", bo);
    const Vec* pbg = opt_vec(p + "mlp.gate_proj.bias", bg);
    const Vec* pbu = opt_vec(p + "mlp.up_proj.bias", bu);
    const Vec* pbd = opt_vec(p + "mlp.down_proj.bias", bd);
    const Vec* pqn = opt_vec(p + "self_attn.q_norm.weight", qn);
    const Vec* pkn = opt_vec(p + "self_attn.k_norm.weight", kn);
    const Vec in_norm = floats(ck, p + "input_layernorm.weight");
    const Vec post_norm = floats(ck, p + "post_attention_layernorm.weight");

    std::vector<Vec> q(static_cast<std::size_t>(T)), k(q.size()), v(q.size());
    for (std::int64_t t = 0; t < T; ++t) {
      const Vec xn = rmsnorm(x[t], in_norm, c.rms_norm_eps);
      q[t] = matvec(wq, xn, pbq);
      k[t] = matvec(wk, xn, pbk);
      v[t] = matvec(wv, xn, pbv);
      for (std::int64_t h = 0; h < H; ++h) {
        if (pqn) {
          Vec head(q[t].begin() + h * D, q[t].begin() + (h + 1) * D);
          head = rmsnorm(head, *pqn, c.rms_norm_eps);
          std::copy(head.begin(), head.end(), q[t].begin() + h * D);
        }
        rope(q[t].data() + h * D, D, t, inv);
      }
      for (std::int64_t h = 0; h < KVH; ++h) {
        if (pkn) {
          Vec head(k[t].begin() + h * D, k[t].begin() + (h + 1) * D);
          head = rmsnorm(head, *pkn, c.rms_norm_eps);
          std::copy(head.begin(), head.end(), k[t].begin() + h * D);
        }
        rope(k[t].data() + h * D, D, t, inv);
      }
    }
    for (std::int64_t t = 0; t < T; ++t) {
      Vec attn(static_cast<std::size_t>(H * D), 0.0);
      for (std::int64_t h = 0; h < H; ++h) {
        const std::int64_t g = h / (H / KVH);
        Vec s(static_cast<std::size_t>(t + 1));
        double mx = -INFINITY;
        for (std::int64_t u = 0; u <= t; ++u) {
          double d = 0;
          for (std::int64_t e = 0; e < D; ++e) d += q[t][h * D + e] * k[u][g * D + e];
          s[u] = d / std::sqrt(static_cast<double>(D));
          mx = std::max(mx, s[u]);
        }
        double den = 0;
        for (auto& e : s) den += (e = std::exp(e - mx));
        for (std::int64_t u = 0; u <= t; ++u) {
          for (std::int64_t e = 0; e < D; ++e) attn[h * D + e] += s[u] / den * v[u][g * D + e];
        }
      }
      const Vec o = matvec(wo, attn, pbo);
      for (std::int64_t i = 0; i < hidden; ++i) x[t][i] += o[i];
      const Vec xn = rmsnorm(x[t], post_norm, c.rms_norm_eps);
      const Vec gt = matvec(wg, xn, pbg), up = matvec(wu, xn, pbu);
      Vec a(gt.size());
      for (std::size_t i = 0; i < a.size(); ++i) a[i] = gt[i] / (1.0 + std::exp(-gt[i])) * up[i];
      const Vec d = matvec(wd, a, pbd);
      for (std::int64_t i = 0; i < hidden; ++i) x[t][i] += d[i];
    }
  }
  const Vec fnorm = floats(ck, "model.norm.weight");
  const bool tied = c.tie_word_embeddings.value_or(ck.find("lm_head.weight") == nullptr);
  const Mat lm = tied ? embed : matrix(ck, "lm_head");
  std::vector<double> out;
  out.reserve(static_cast<std::size_t>(T * c.vocab_size));
  for (std::int64_t t = 0; t < T; ++t) {
    const Vec y = matvec(lm, rmsnorm(x[t], fnorm, c.rms_norm_eps));
    out.insert(out.end(), y.begin(), y.end());
  }
  return out;
}

}  // namespace qmm::model
