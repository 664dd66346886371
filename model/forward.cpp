#include "model/forward.h"

#include <algorithm>
#include <cmath>

#include "model/cpu_ops.h"
#include "model/cuda/device.h"
#include "qmm/device.h"

namespace qmm::model {

namespace {
[[noreturn]] void fail(const std::string& msg) { throw Error("[model] " + msg); }

char* at(const Tensor& t, std::int64_t elements) {
  return static_cast<char*>(t.data()) + static_cast<std::size_t>(elements) * itemsize(t.dtype());
}
const float* fptr(const Tensor& t, std::int64_t offset = 0) {
  return t.defined() ? t.data_as<float>() + offset : nullptr;
}
}  // namespace

std::vector<double> rope_inv_freq(const ModelConfig& c) {
  const std::int64_t D = c.head_dim;
  std::vector<double> inv(static_cast<std::size_t>(D / 2));
  const double pi = 3.14159265358979323846;
  for (std::int64_t i = 0; i < D / 2; ++i) {
    double f = std::pow(c.rope_theta, -2.0 * static_cast<double>(i) / static_cast<double>(D));
    if (c.rope_scaling == RopeScaling::linear) {
      f /= c.rope_factor;
    } else if (c.rope_scaling == RopeScaling::llama3) {
      // mlx-lm's Llama3RoPE, in periods: long wavelengths scaled by factor, short ones kept,
      // the band between interpolated.
      const double old_ctx = static_cast<double>(c.rope_original_max_position);
      const double low_wavelen = old_ctx / c.rope_low_freq_factor;
      const double high_wavelen = old_ctx / c.rope_high_freq_factor;
      double period = 1.0 / f;
      const double wavelen = 2.0 * pi * period;
      if (wavelen > low_wavelen) {
        period *= c.rope_factor;
      } else if (wavelen > high_wavelen) {
        const double smooth = (old_ctx / wavelen - c.rope_low_freq_factor) /
                              (c.rope_high_freq_factor - c.rope_low_freq_factor);
        period = period / ((1.0 - smooth) / c.rope_factor + smooth);
      }
      f = 1.0 / period;
    }
    inv[static_cast<std::size_t>(i)] = f;
  }
  return inv;
}

Model::Model(std::shared_ptr<const ModelWeights> weights, const ModelOptions& options)
    : w_(std::move(weights)), opt_(options) {
  const ModelConfig& c = w_->config;
  const Device dev = w_->device;
  cuda_ = dev.type == DeviceType::cuda;
  if (opt_.max_seq < 1) fail("max_seq must be positive");
  if (opt_.max_verify_rows < 1 || opt_.prefill_chunk < 1) fail("max_verify_rows and prefill_chunk must be positive");
  const std::int64_t D = c.head_dim, H = c.num_heads, KVH = c.num_kv_heads, hidden = c.hidden_size;
  const std::int64_t I = c.intermediate_size;
  if (cuda_ && !cuda::attention_supports_head_dim(static_cast<int>(D))) {
    fail("head_dim " + std::to_string(D) + " is not supported by the CUDA attention kernel (64, 128, 256)");
  }
  max_rows_ = std::max(opt_.prefill_chunk, opt_.max_verify_rows);
  const std::int64_t R = max_rows_;
  const Dtype dt = w_->dtype;
  if (cuda_) {
    cuda::set_device(dev.index);
    stream_ = cuda::stream_create();
    call_.stream = Stream{stream_};
  }

  // Split length of verify passes: about two blocks per SM at one row, fixed for this model so
  // that a row's attention is computed identically for every batch size.
  const std::int64_t tiles = (opt_.max_seq + 31) / 32;
  const int sms = cuda_ ? std::max(1, device_info(dev).multiprocessors) : 1;
  const std::int64_t target = std::max<std::int64_t>(1, (2 * sms + KVH - 1) / KVH);
  split_len_ = 32 * std::max<std::int64_t>(1, (tiles + target - 1) / target);
  prefill_split_len_ = 32 * tiles;
  const std::int64_t ws_entries =
      std::max<std::int64_t>(opt_.max_verify_rows * H * ((opt_.max_seq + split_len_ - 1) / split_len_), R * H);

  tokens_ = Tensor::empty({R}, Dtype::uint32, dev);
  h_ = Tensor::empty({R, hidden}, Dtype::float32, dev);
  xn_ = Tensor::empty({R, hidden}, dt, dev);
  qkv_ = Tensor::empty({R * (c.q_dim() + 2 * c.kv_dim())}, dt, dev);
  qrot_ = Tensor::empty({R, c.q_dim()}, dt, dev);
  attn_ = Tensor::empty({R, c.q_dim()}, dt, dev);
  tmp_ = Tensor::empty({R, hidden}, dt, dev);
  gu_ = Tensor::empty({R * 2 * I}, dt, dev);
  act_ = Tensor::empty({R, I}, dt, dev);
  logits_ = Tensor::empty({opt_.max_verify_rows, c.vocab_size}, dt, dev);
  k_cache_ = Tensor::empty({c.num_layers, opt_.max_seq, KVH, D}, dt, dev);
  v_cache_ = Tensor::empty({c.num_layers, opt_.max_seq, KVH, D}, dt, dev);
  if (cuda_) {
    // Unwritten cache entries are never read, but zeros keep any bug deterministic.
    cuda::memset_zero(k_cache_.data(), k_cache_.nbytes());
    cuda::memset_zero(v_cache_.data(), v_cache_.nbytes());
    ws_o_ = Tensor::empty({ws_entries, D}, Dtype::float32, dev);
    ws_ml_ = Tensor::empty({ws_entries, 2}, Dtype::float32, dev);
    const std::int64_t chunks = cuda::attention_chunks(max_rows_, static_cast<int>(H / KVH), static_cast<int>(D));
    counters_ = Tensor::empty({KVH * chunks}, Dtype::uint32, dev);
    cuda::memset_zero(counters_.data(), counters_.nbytes());  // the kernel leaves them zero again
  } else {
    std::fill_n(static_cast<char*>(k_cache_.data()), k_cache_.nbytes(), 0);
    std::fill_n(static_cast<char*>(v_cache_.data()), v_cache_.nbytes(), 0);
  }

  const auto inv = rope_inv_freq(c);
  std::vector<float> cs(static_cast<std::size_t>(opt_.max_seq * (D / 2))), sn(cs.size());
  for (std::int64_t p = 0; p < opt_.max_seq; ++p) {
    for (std::int64_t j = 0; j < D / 2; ++j) {
      const double ang = static_cast<double>(p) * inv[static_cast<std::size_t>(j)];
      cs[static_cast<std::size_t>(p * (D / 2) + j)] = static_cast<float>(std::cos(ang));
      sn[static_cast<std::size_t>(p * (D / 2) + j)] = static_cast<float>(std::sin(ang));
    }
  }
  const Shape rs{opt_.max_seq, D / 2};
  rope_cos_ = Tensor::from_floats(cs, rs, Dtype::float32);
  rope_sin_ = Tensor::from_floats(sn, rs, Dtype::float32);
  if (cuda_) {
    rope_cos_ = rope_cos_.to(dev);
    rope_sin_ = rope_sin_.to(dev);
    // The weights (generated or copied on the legacy stream) and the zeroed caches and counters
    // must be complete before the model's non-blocking stream runs anything.
    cuda::device_synchronize();
  }
}

Model::~Model() {
  if (stream_) {
    try {
      cuda::stream_synchronize(stream_);
    } catch (...) {
    }
    cuda::stream_destroy(stream_);
  }
}

std::int64_t Model::kv_cache_bytes() const {
  return static_cast<std::int64_t>(k_cache_.nbytes() + v_cache_.nbytes());
}

std::int64_t Model::kv_read_bytes(int n, std::int64_t pos) const {
  const ModelConfig& c = w_->config;
  return 2 * c.num_layers * (pos + n) * c.kv_dim() * static_cast<std::int64_t>(itemsize(w_->dtype));
}

void Model::check_pass(int n, std::int64_t pos, bool all_logits) const {
  if (n < 1 || n > max_rows_) fail("a pass runs 1.." + std::to_string(max_rows_) + " rows, not " + std::to_string(n));
  if (all_logits && n > opt_.max_verify_rows) {
    fail("logits of every row need n <= max_verify_rows = " + std::to_string(opt_.max_verify_rows));
  }
  if (pos < 0 || pos + n > opt_.max_seq) {
    fail("positions " + std::to_string(pos) + ".." + std::to_string(pos + n - 1) + " exceed the KV cache of " +
         std::to_string(opt_.max_seq) + " positions");
  }
}

void Model::set_tokens(const std::vector<std::int32_t>& tokens) {
  if (tokens.empty() || static_cast<int>(tokens.size()) > max_rows_) {
    fail("a pass takes 1.." + std::to_string(max_rows_) + " tokens, not " + std::to_string(tokens.size()));
  }
  for (auto t : tokens) {
    if (t < 0 || t >= w_->config.vocab_size) {
      fail("token id " + std::to_string(t) + " is outside the vocabulary of " + std::to_string(w_->config.vocab_size));
    }
  }
  host_tokens_ = tokens;
  if (cuda_) {
    cuda::copy_h2d(tokens_.data(), host_tokens_.data(), tokens.size() * 4, stream_);
  } else {
    std::copy(tokens.begin(), tokens.end(), static_cast<std::int32_t*>(tokens_.data()));
  }
}

void Model::linear(const Linear& l, const void* x, void* out, int n) {
  const Dtype dt = w_->dtype;
  if (l.quant.quantized) {
    const TensorView xv(const_cast<void*>(x), {n, l.K}, dt, w_->device);
    const TensorView ov(out, {n, l.N}, dt, w_->device);
    quantized_matmul_into(xv, l.w_q, l.scales, l.biases, ov, true, l.quant.group_size, l.quant.bits, call_);
  } else if (cuda_) {
    cuda::dense_linear(x, l.weight.data(), out, n, l.N, l.K, dt, stream_);
  } else {
    cpu::dense_linear(x, l.weight.data(), out, n, l.N, l.K, dt);
  }
}

void Model::enqueue(int n, std::int64_t pos, bool all_logits, unsigned cats) {
  check_pass(n, pos, all_logits);
  const ModelConfig& c = w_->config;
  const Dtype dt = w_->dtype;
  const std::int64_t hidden = c.hidden_size, I = c.intermediate_size, R = max_rows_;
  const std::int64_t qd = c.q_dim(), kvd = c.kv_dim();
  const float eps = static_cast<float>(c.rms_norm_eps);
  const bool lin = cats & kLinears, att = cats & kAttention, oth = cats & kOther;
  float* h = h_.data_as<float>();

  if (oth) {
    if (cuda_) {
      cuda::EmbedTable t;
      const Linear& e = w_->embed;
      t.quantized = e.quant.quantized;
      t.bits = e.quant.bits;
      t.group_size = e.quant.group_size;
      t.vocab = e.N;
      t.hidden = e.K;
      if (t.quantized) {
        t.w_q = e.w_q.data_as<std::uint32_t>();
        t.scales = e.scales.data();
        t.biases = e.biases.data();
      } else {
        t.weight = e.weight.data();
      }
      cuda::embed_rows(static_cast<const std::int32_t*>(tokens_.data()), n, t, h, dt, stream_);
      cuda::rms_norm(h, fptr(w_->layers[0].input_norm), xn_.data(), n, hidden, eps, dt, stream_);
    } else {
      cpu::embed_rows(static_cast<const std::int32_t*>(tokens_.data()), n, w_->embed, h);
      cpu::rms_norm(h, fptr(w_->layers[0].input_norm), xn_.data(), n, hidden, eps, dt);
    }
  }

  const std::int64_t L = n <= opt_.max_verify_rows ? split_len_ : prefill_split_len_;
  for (std::size_t li = 0; li < w_->layers.size(); ++li) {
    const Layer& ly = w_->layers[li];
    // q | k | v: one fused matmul into rows of (qd + 2 kvd), or three into separate regions.
    cuda::QkvArgs qa;
    if (ly.fused_qkv) {
      if (lin) linear(ly.qkv, xn_.data(), qkv_.data(), n);
      const std::int64_t stride = qd + 2 * kvd;
      qa.q = qkv_.data();
      qa.k = at(qkv_, qd);
      qa.v = at(qkv_, qd + kvd);
      qa.q_stride = qa.k_stride = qa.v_stride = stride;
      if (ly.qkv.bias.defined()) {
        qa.q_bias = fptr(ly.qkv.bias);
        qa.k_bias = fptr(ly.qkv.bias, qd);
        qa.v_bias = fptr(ly.qkv.bias, qd + kvd);
      }
    } else {
      qa.q = qkv_.data();
      qa.k = at(qkv_, R * qd);
      qa.v = at(qkv_, R * (qd + kvd));
      qa.q_stride = qd;
      qa.k_stride = qa.v_stride = kvd;
      qa.q_bias = fptr(ly.q.bias);
      qa.k_bias = fptr(ly.k.bias);
      qa.v_bias = fptr(ly.v.bias);
    }
    if (!ly.fused_qkv && lin) {
      linear(ly.q, xn_.data(), const_cast<void*>(qa.q), n);
      linear(ly.k, xn_.data(), const_cast<void*>(qa.k), n);
      linear(ly.v, xn_.data(), const_cast<void*>(qa.v), n);
    }
    qa.q_norm = fptr(ly.q_norm);
    qa.k_norm = fptr(ly.k_norm);
    qa.eps = eps;
    qa.rope_cos = rope_cos_.data_as<float>();
    qa.rope_sin = rope_sin_.data_as<float>();
    qa.n = n;
    qa.pos = pos;
    qa.heads = static_cast<int>(c.num_heads);
    qa.kv_heads = static_cast<int>(c.num_kv_heads);
    qa.head_dim = static_cast<int>(c.head_dim);
    qa.q_out = qrot_.data();
    const std::int64_t layer_cache = opt_.max_seq * kvd;
    qa.k_cache = at(k_cache_, static_cast<std::int64_t>(li) * layer_cache);
    qa.v_cache = at(v_cache_, static_cast<std::int64_t>(li) * layer_cache);

    cuda::AttentionArgs aa;
    aa.q = qrot_.data();
    aa.k_cache = qa.k_cache;
    aa.v_cache = qa.v_cache;
    aa.n = n;
    aa.pos = pos;
    aa.heads = qa.heads;
    aa.kv_heads = qa.kv_heads;
    aa.head_dim = qa.head_dim;
    aa.split_len = L;
    aa.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.head_dim)));
    aa.ws_o = ws_o_.defined() ? ws_o_.data_as<float>() : nullptr;
    aa.ws_ml = ws_ml_.defined() ? ws_ml_.data_as<float>() : nullptr;
    aa.out = attn_.data();
    if (att) {
      if (cuda_) {
        aa.counters = counters_.data_as<std::uint32_t>();
        cuda::attention(qa, aa, dt, stream_);  // bias, norm, RoPE and the cache write included
      } else {
        cpu::qkv_rope(qa, dt);
        cpu::attention(aa, dt);
      }
    }
    if (lin) linear(ly.o, attn_.data(), tmp_.data(), n);
    if (oth) {
      if (cuda_) {
        cuda::add_rms_norm(h, tmp_.data(), fptr(ly.o.bias), fptr(ly.post_norm), xn_.data(), n, hidden, eps, dt, stream_);
      } else {
        cpu::add_rms_norm(h, tmp_.data(), fptr(ly.o.bias), fptr(ly.post_norm), xn_.data(), n, hidden, eps, dt);
      }
    }
    // gate | up, SwiGLU, down.
    const void *gate, *up;
    std::int64_t gs, us;
    const float *gb, *ub;
    if (ly.fused_gate_up) {
      if (lin) linear(ly.gate_up, xn_.data(), gu_.data(), n);
      gate = gu_.data();
      up = at(gu_, I);
      gs = us = 2 * I;
      gb = fptr(ly.gate_up.bias);
      ub = fptr(ly.gate_up.bias, I);
    } else {
      gate = gu_.data();
      up = at(gu_, R * I);
      if (lin) {
        linear(ly.gate, xn_.data(), const_cast<void*>(gate), n);
        linear(ly.up, xn_.data(), const_cast<void*>(up), n);
      }
      gs = us = I;
      gb = fptr(ly.gate.bias);
      ub = fptr(ly.up.bias);
    }
    if (oth) {
      if (cuda_) {
        cuda::swiglu(gate, gs, up, us, gb, ub, act_.data(), n, I, dt, stream_);
      } else {
        cpu::swiglu(gate, gs, up, us, gb, ub, act_.data(), n, I, dt);
      }
    }
    if (lin) linear(ly.down, act_.data(), tmp_.data(), n);
    const float* next_norm = li + 1 < w_->layers.size() ? fptr(w_->layers[li + 1].input_norm) : fptr(w_->final_norm);
    if (oth) {
      if (cuda_) {
        cuda::add_rms_norm(h, tmp_.data(), fptr(ly.down.bias), next_norm, xn_.data(), n, hidden, eps, dt, stream_);
      } else {
        cpu::add_rms_norm(h, tmp_.data(), fptr(ly.down.bias), next_norm, xn_.data(), n, hidden, eps, dt);
      }
    }
  }
  if (lin) {
    if (all_logits) {
      linear(w_->lm_head, xn_.data(), logits_.data(), n);
    } else {
      linear(w_->lm_head, at(xn_, static_cast<std::int64_t>(n - 1) * hidden), logits_.data(), 1);
    }
  }
}

void Model::synchronize() {
  if (cuda_) cuda::stream_synchronize(stream_);
}

std::vector<float> Model::read_logits(int rows) {
  const std::int64_t vocab = w_->config.vocab_size;
  if (rows < 1 || rows > opt_.max_verify_rows) fail("read_logits: bad row count");
  const std::size_t count = static_cast<std::size_t>(rows * vocab);
  std::vector<std::uint16_t> bits(count);
  if (cuda_) {
    cuda::copy_d2h(bits.data(), logits_.data(), count * 2, stream_);
    cuda::stream_synchronize(stream_);
  } else {
    std::copy_n(static_cast<const std::uint16_t*>(logits_.data()), count, bits.data());
  }
  std::vector<float> out(count);
  for (std::size_t i = 0; i < count; ++i) {
    out[i] = w_->dtype == Dtype::bfloat16 ? bfloat16_bits_to_float(bits[i]) : float16_bits_to_float(bits[i]);
  }
  return out;
}

std::vector<float> Model::forward(const std::vector<std::int32_t>& tokens, std::int64_t pos) {
  const int n = static_cast<int>(tokens.size());
  check_pass(n, pos, true);
  set_tokens(tokens);
  enqueue(n, pos, true);
  synchronize();
  return read_logits(n);
}

std::vector<float> Model::prefill(const std::vector<std::int32_t>& tokens, std::int64_t pos,
                                  const std::function<void(std::int64_t, std::int64_t)>& progress) {
  if (tokens.empty()) fail("prefill needs at least one token");
  const std::int64_t total = static_cast<std::int64_t>(tokens.size());
  for (std::int64_t done = 0; done < total;) {
    const std::int64_t c = std::min<std::int64_t>(opt_.prefill_chunk, total - done);
    check_pass(static_cast<int>(c), pos + done, false);
    set_tokens(std::vector<std::int32_t>(tokens.begin() + done, tokens.begin() + done + c));
    enqueue(static_cast<int>(c), pos + done, false);
    done += c;
    if (progress) {
      synchronize();
      progress(done, total);
    }
  }
  synchronize();
  return read_logits(1);
}

}  // namespace qmm::model
