#include "model/weights.h"

#include <cstring>

#include "model/cuda/device.h"
#include "qmm/ops.h"

namespace qmm::model {

namespace {

[[noreturn]] void fail(const std::string& where, const std::string& msg) {
  throw Error("[checkpoint] " + where + ": " + msg);
}

/// One element of a float safetensors tensor as float (the data may be unaligned).
float load_st_float(const std::uint8_t* p, StDtype dtype, std::size_t i) {
  switch (dtype) {
    case StDtype::F32: {
      float f;
      std::memcpy(&f, p + 4 * i, 4);
      return f;
    }
    case StDtype::F16: {
      std::uint16_t b;
      std::memcpy(&b, p + 2 * i, 2);
      return float16_bits_to_float(b);
    }
    case StDtype::BF16: {
      std::uint16_t b;
      std::memcpy(&b, p + 2 * i, 2);
      return bfloat16_bits_to_float(b);
    }
    default: return 0.0f;
  }
}

bool is_st_float(StDtype d) { return d == StDtype::F32 || d == StDtype::F16 || d == StDtype::BF16; }

/// A float tensor's bytes in `dtype` (a copy; converted with round-to-nearest-even if needed).
std::vector<std::uint8_t> convert_float_tensor(const StTensor& t, Dtype dtype) {
  const std::size_t n = static_cast<std::size_t>(numel(t.shape));
  std::vector<std::uint8_t> out(n * itemsize(dtype));
  if (qmm_to_st_dtype(dtype) == t.dtype) {
    if (!out.empty()) std::memcpy(out.data(), t.data, out.size());
    return out;
  }
  for (std::size_t i = 0; i < n; ++i) {
    const float f = load_st_float(t.data, t.dtype, i);
    if (dtype == Dtype::float32) {
      std::memcpy(out.data() + 4 * i, &f, 4);
    } else {
      const std::uint16_t b = dtype == Dtype::float16 ? float_to_float16_bits(f) : float_to_bfloat16_bits(f);
      std::memcpy(out.data() + 2 * i, &b, 2);
    }
  }
  return out;
}

std::vector<float> st_floats(const StTensor& t) {
  std::vector<float> out(static_cast<std::size_t>(numel(t.shape)));
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = load_st_float(t.data, t.dtype, i);
  return out;
}

class CheckpointSource final : public WeightSource {
 public:
  explicit CheckpointSource(std::shared_ptr<const Checkpoint> ck) : ck_(std::move(ck)) {}
  const ModelConfig& config() const override { return ck_->config(); }
  std::string description() const override { return ck_->dir(); }

  const Checkpoint::Entry& require(const std::string& name, const std::string& why) const {
    const Checkpoint::Entry* e = ck_->find(name);
    if (!e) fail(ck_->dir(), "tensor '" + name + "' is missing (" + why + ")");
    return *e;
  }
  [[noreturn]] void bad(const Checkpoint::Entry& e, const std::string& msg) const {
    fail(e.file->path(), "tensor '" + e.tensor->name + "' " + msg);
  }

  QuantSpec linear_quant(const std::string& path, std::int64_t N, std::int64_t K) override {
    const auto& w = require(path + ".weight", "needed for module " + path);
    const Checkpoint::Entry* s = ck_->find(path + ".scales");
    const Checkpoint::Entry* b = ck_->find(path + ".biases");
    const ModelConfig& c = config();
    if (!s) {
      if (b) bad(*b, "exists but '" + path + ".scales' does not: a quantized layer needs both");
      if (w.tensor->dtype == StDtype::U32) bad(w, "is U32 (quantized) but '" + path + ".scales' is missing");
      if (!is_st_float(w.tensor->dtype)) {
        bad(w, std::string("has dtype ") + st_dtype_name(w.tensor->dtype) + "; a dense weight must be F32, F16 or BF16");
      }
      if (w.tensor->shape != Shape{N, K}) {
        bad(w, "has shape " + shape_to_string(w.tensor->shape) + " but config.json needs " + shape_to_string({N, K}));
      }
      return QuantSpec{false, 64, 4};
    }
    if (!c.has_quantization) {
      bad(*s, "exists (a quantized layer) but config.json has no \"quantization\" section");
    }
    QuantSpec q = c.quant_for(path);
    if (!q.quantized) bad(*s, "exists but config.json's \"quantization\" marks " + path + " as not quantized");
    if (!b) fail(s->file->path(), "tensor '" + path + ".biases' is missing (MLX affine layers need scales and biases)");
    const std::string qdesc = "bits=" + std::to_string(q.bits) + ", group_size=" + std::to_string(q.group_size);
    if (w.tensor->dtype != StDtype::U32) {
      bad(w, std::string("has dtype ") + st_dtype_name(w.tensor->dtype) + " but a quantized weight must be U32");
    }
    if (K % q.group_size != 0 || (K * q.bits) % 32 != 0) {
      bad(*s, "cannot describe K=" + std::to_string(K) + " inputs with " + qdesc + " (config.json)");
    }
    const Shape wq_shape{N, K * q.bits / 32};
    const Shape s_shape{N, K / q.group_size};
    if (w.tensor->shape != wq_shape) {
      bad(w, "has shape " + shape_to_string(w.tensor->shape) + " but (N=" + std::to_string(N) + ", K=" + std::to_string(K) +
                 ") with " + qdesc + " (config.json) needs " + shape_to_string(wq_shape));
    }
    for (const Checkpoint::Entry* e : {s, b}) {
      if (!is_st_float(e->tensor->dtype)) {
        bad(*e, std::string("has dtype ") + st_dtype_name(e->tensor->dtype) + "; scales and biases must be F32, F16 or BF16");
      }
      if (e->tensor->shape != s_shape) {
        bad(*e, "has shape " + shape_to_string(e->tensor->shape) + " but (N=" + std::to_string(N) + ", K=" +
                    std::to_string(K) + ") with " + qdesc + " (config.json) needs " + shape_to_string(s_shape));
      }
    }
    if (s->tensor->dtype != b->tensor->dtype) {
      bad(*b, std::string("has dtype ") + st_dtype_name(b->tensor->dtype) + " but the scales are " +
                  st_dtype_name(s->tensor->dtype));
    }
    return q;
  }

  bool has_bias(const std::string& path, std::int64_t N) override {
    const Checkpoint::Entry* e = ck_->find(path + ".bias");
    if (!e) return false;
    if (!is_st_float(e->tensor->dtype)) bad(*e, std::string("has dtype ") + st_dtype_name(e->tensor->dtype) + "; expected a float type");
    if (e->tensor->shape != Shape{N}) bad(*e, "has shape " + shape_to_string(e->tensor->shape) + " but needs " + shape_to_string({N}));
    return true;
  }

  void read_linear(const std::string& path, std::int64_t N, std::int64_t K, const QuantSpec& q, Linear& dst,
                   std::int64_t row0, Dtype dtype) override {
    if (q.quantized) {
      const StTensor& w = *require(path + ".weight", "").tensor;
      const std::size_t words = static_cast<std::size_t>(K * q.bits / 32);
      copy_into(dst.w_q, static_cast<std::size_t>(row0) * words * 4, w.data, w.nbytes());
      const std::size_t groups = static_cast<std::size_t>(K / q.group_size);
      for (const char* part : {".scales", ".biases"}) {
        const auto bytes = convert_float_tensor(*require(path + part, "").tensor, dtype);
        copy_into(part[1] == 's' ? dst.scales : dst.biases, static_cast<std::size_t>(row0) * groups * itemsize(dtype),
                  bytes.data(), bytes.size());
      }
    } else {
      const auto bytes = convert_float_tensor(*require(path + ".weight", "").tensor, dtype);
      copy_into(dst.weight, static_cast<std::size_t>(row0 * K) * itemsize(dtype), bytes.data(), bytes.size());
    }
    (void)N;
  }

  std::vector<float> read_bias(const std::string& path, std::int64_t N) override {
    has_bias(path, N);
    return st_floats(*require(path + ".bias", "").tensor);
  }

  std::vector<float> read_vector(const std::string& name, std::int64_t n) override {
    const auto& e = require(name, "needed by config.json");
    if (!is_st_float(e.tensor->dtype)) bad(e, std::string("has dtype ") + st_dtype_name(e.tensor->dtype) + "; expected a float type");
    if (e.tensor->shape != Shape{n}) bad(e, "has shape " + shape_to_string(e.tensor->shape) + " but config.json needs " + shape_to_string({n}));
    return st_floats(*e.tensor);
  }

  bool tied_embeddings() override {
    const auto& tie = config().tie_word_embeddings;
    if (tie) return *tie;  // tied: a stray lm_head.weight is ignored, as mlx-lm's sanitize drops it
    return ck_->find(std::string(kLmHeadPath) + ".weight") == nullptr;
  }

 private:
  std::shared_ptr<const Checkpoint> ck_;
};

}  // namespace

Linear allocate_linear(const std::string& name, std::int64_t N, std::int64_t K, const QuantSpec& q, Dtype dtype,
                       Device device) {
  Linear l;
  l.name = name;
  l.N = N;
  l.K = K;
  l.quant = q;
  if (q.quantized) {
    l.w_q = Tensor::empty({N, K * q.bits / 32}, Dtype::uint32, device);
    l.scales = Tensor::empty({N, K / q.group_size}, dtype, device);
    l.biases = Tensor::empty({N, K / q.group_size}, dtype, device);
  } else {
    l.weight = Tensor::empty({N, K}, dtype, device);
  }
  return l;
}

namespace {

Tensor float_tensor(const std::vector<float>& v, Device device) {
  Tensor host = Tensor::from_floats(v, {static_cast<std::int64_t>(v.size())}, Dtype::float32);
  return device.type == DeviceType::cpu ? host : host.to(device);
}

struct Piece {
  std::string path;
  std::int64_t N;
  bool expect_bias;
};

/// Loads pieces (same K) as one Linear with stacked rows when `fuse` and they are stored alike,
/// else one Linear each.
std::vector<Linear> load_linears(WeightSource& src, const std::vector<Piece>& pieces, std::int64_t K, bool fuse,
                                 const std::string& fused_name, const LoadOptions& opt) {
  std::vector<QuantSpec> quants;
  std::vector<bool> biases;
  for (const auto& p : pieces) {
    quants.push_back(src.linear_quant(p.path, p.N, K));
    const bool has = src.has_bias(p.path, p.N);
    if (has != p.expect_bias) {
      fail(src.description(), has ? "tensor '" + p.path + ".bias' exists but config.json implies no bias for " + p.path
                                  : "tensor '" + p.path + ".bias' is missing (config.json implies " + p.path + " has a bias)");
    }
    biases.push_back(has);
  }
  bool alike = fuse && pieces.size() > 1;
  for (const auto& q : quants) alike = alike && q == quants.front();
  std::vector<Linear> out;
  if (alike) {
    std::int64_t total = 0;
    for (const auto& p : pieces) total += p.N;
    Linear l = allocate_linear(fused_name, total, K, quants.front(), opt.dtype, opt.device);
    std::int64_t row = 0;
    std::vector<float> bias;
    bool any_bias = false;
    for (std::size_t i = 0; i < pieces.size(); ++i) {
      src.read_linear(pieces[i].path, pieces[i].N, K, quants[i], l, row, opt.dtype);
      std::vector<float> b = biases[i] ? src.read_bias(pieces[i].path, pieces[i].N)
                                       : std::vector<float>(static_cast<std::size_t>(pieces[i].N), 0.0f);
      any_bias = any_bias || biases[i];
      bias.insert(bias.end(), b.begin(), b.end());
      row += pieces[i].N;
    }
    if (any_bias) l.bias = float_tensor(bias, opt.device);
    out.push_back(std::move(l));
    return out;
  }
  for (std::size_t i = 0; i < pieces.size(); ++i) {
    Linear l = allocate_linear(pieces[i].path, pieces[i].N, K, quants[i], opt.dtype, opt.device);
    src.read_linear(pieces[i].path, pieces[i].N, K, quants[i], l, 0, opt.dtype);
    if (biases[i]) l.bias = float_tensor(src.read_bias(pieces[i].path, pieces[i].N), opt.device);
    out.push_back(std::move(l));
  }
  return out;
}

}  // namespace

std::int64_t Linear::bytes() const {
  std::int64_t b = 0;
  for (const Tensor* t : {&w_q, &scales, &biases, &weight, &bias}) {
    if (t->defined()) b += static_cast<std::int64_t>(t->nbytes());
  }
  return b;
}

std::int64_t ModelWeights::linear_bytes() const {
  std::int64_t b = lm_head.bytes();
  for (const auto& l : layers) {
    for (const Linear* x : {&l.qkv, &l.q, &l.k, &l.v, &l.o, &l.gate_up, &l.gate, &l.up, &l.down}) b += x->bytes();
  }
  return b;
}

std::int64_t ModelWeights::other_bytes(int n) const {
  std::int64_t b = final_norm.defined() ? static_cast<std::int64_t>(final_norm.nbytes()) : 0;
  for (const auto& l : layers) {
    for (const Tensor* t : {&l.input_norm, &l.post_norm, &l.q_norm, &l.k_norm}) {
      if (t->defined()) b += static_cast<std::int64_t>(t->nbytes());
    }
  }
  if (embed.N > 0) b += embed.bytes() / embed.N * n;  // the gathered rows only
  return b;
}

void copy_into(const Tensor& dst, std::size_t offset, const void* src, std::size_t bytes) {
  if (offset + bytes > dst.nbytes()) throw Error("[model] copy_into past the end of a tensor");
  if (bytes == 0) return;
  char* p = static_cast<char*>(dst.data()) + offset;
  if (dst.device().type == DeviceType::cpu) {
    std::memcpy(p, src, bytes);
  } else {
    cuda::copy_h2d(p, src, bytes);
  }
}

void copy_out(void* dst, const Tensor& src, std::size_t offset, std::size_t bytes) {
  if (offset + bytes > src.nbytes()) throw Error("[model] copy_out past the end of a tensor");
  if (bytes == 0) return;
  const char* p = static_cast<const char*>(src.data()) + offset;
  if (src.device().type == DeviceType::cpu) {
    std::memcpy(dst, p, bytes);
  } else {
    cuda::copy_d2h(dst, p, bytes);
  }
}

std::unique_ptr<WeightSource> checkpoint_source(std::shared_ptr<const Checkpoint> checkpoint) {
  return std::make_unique<CheckpointSource>(std::move(checkpoint));
}

ModelWeights load_weights(WeightSource& src, const LoadOptions& opt) {
  if (opt.dtype != Dtype::float16 && opt.dtype != Dtype::bfloat16) {
    throw Error(std::string("[model] the model dtype must be float16 or bfloat16, not ") + dtype_name(opt.dtype));
  }
  const ModelConfig& c = src.config();
  ModelWeights w;
  w.config = c;
  w.source = src.description();
  w.dtype = opt.dtype;
  w.device = opt.device;
  auto progress = [&](const std::string& s) {
    if (opt.progress) opt.progress(s);
  };

  progress("embedding");
  {
    const QuantSpec q = src.linear_quant(kEmbedPath, c.vocab_size, c.hidden_size);
    w.embed = allocate_linear(kEmbedPath, c.vocab_size, c.hidden_size, q, opt.dtype, opt.device);
    src.read_linear(kEmbedPath, c.vocab_size, c.hidden_size, q, w.embed, 0, opt.dtype);
  }
  for (std::int64_t i = 0; i < c.num_layers; ++i) {
    progress("layer " + std::to_string(i + 1) + "/" + std::to_string(c.num_layers));
    const std::string p = layer_prefix(i);
    Layer L;
    L.input_norm = float_tensor(src.read_vector(p + "input_layernorm.weight", c.hidden_size), opt.device);
    L.post_norm = float_tensor(src.read_vector(p + "post_attention_layernorm.weight", c.hidden_size), opt.device);
    if (c.qk_norm) {
      L.q_norm = float_tensor(src.read_vector(p + "self_attn.q_norm.weight", c.head_dim), opt.device);
      L.k_norm = float_tensor(src.read_vector(p + "self_attn.k_norm.weight", c.head_dim), opt.device);
    }
    auto qkv = load_linears(src,
                            {{p + "self_attn.q_proj", c.q_dim(), c.qkv_bias},
                             {p + "self_attn.k_proj", c.kv_dim(), c.qkv_bias},
                             {p + "self_attn.v_proj", c.kv_dim(), c.qkv_bias}},
                            c.hidden_size, opt.fuse, p + "self_attn.qkv_proj", opt);
    if (qkv.size() == 1) {
      L.fused_qkv = true;
      L.qkv = std::move(qkv[0]);
    } else {
      L.q = std::move(qkv[0]);
      L.k = std::move(qkv[1]);
      L.v = std::move(qkv[2]);
    }
    L.o = std::move(load_linears(src, {{p + "self_attn.o_proj", c.hidden_size, c.o_bias}}, c.q_dim(), false, "", opt)[0]);
    auto gu = load_linears(src,
                           {{p + "mlp.gate_proj", c.intermediate_size, c.mlp_bias},
                            {p + "mlp.up_proj", c.intermediate_size, c.mlp_bias}},
                           c.hidden_size, opt.fuse, p + "mlp.gate_up_proj", opt);
    if (gu.size() == 1) {
      L.fused_gate_up = true;
      L.gate_up = std::move(gu[0]);
    } else {
      L.gate = std::move(gu[0]);
      L.up = std::move(gu[1]);
    }
    L.down = std::move(
        load_linears(src, {{p + "mlp.down_proj", c.hidden_size, c.mlp_bias}}, c.intermediate_size, false, "", opt)[0]);
    w.layers.push_back(std::move(L));
  }
  w.final_norm = float_tensor(src.read_vector(kFinalNormName, c.hidden_size), opt.device);
  progress("lm_head");
  w.tied = src.tied_embeddings();
  if (w.tied) {
    w.lm_head = w.embed;  // shares storage
    w.lm_head.name = std::string(kEmbedPath) + " (tied lm_head)";
  } else {
    w.lm_head = std::move(load_linears(src, {{kLmHeadPath, c.vocab_size, false}}, c.hidden_size, false, "", opt)[0]);
  }
  return w;
}

}  // namespace qmm::model
