// Helpers of the qmm model tests: temporary directories, tiny configurations, checkpoint
// rewriting (to corrupt one tensor at a time) and error matching.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "model/checkpoint.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "qmm/ops.h"

namespace qmm::model::testing {

/// A fresh directory under the system temp dir, removed at scope exit.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "qmm_model_test_XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return (std::filesystem::path(path_) / name).string(); }

 private:
  std::string path_;
};

inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

/// The tiny preset with a few knobs for variants.
inline ModelConfig tiny_config(int bits = 4, int group = 64) { return preset_config("tiny", bits, group); }

/// One tensor of a checkpoint held in memory.
struct TensorData {
  std::string name;
  StDtype dtype;
  Shape shape;
  std::string bytes;
};

inline std::vector<TensorData> read_all(const Checkpoint& ck) {
  std::vector<TensorData> out;
  for (const auto& name : ck.names()) {
    const auto* e = ck.find(name);
    out.push_back({name, e->tensor->dtype, e->tensor->shape,
                   std::string(reinterpret_cast<const char*>(e->tensor->data), e->tensor->nbytes())});
  }
  return out;
}

inline void write_tensors(const std::string& path, const std::vector<TensorData>& tensors) {
  std::vector<SafetensorsWriter::Spec> specs;
  for (const auto& t : tensors) specs.push_back({t.name, t.dtype, t.shape});
  SafetensorsWriter w(path, specs);
  for (const auto& t : tensors) w.write(t.name, t.bytes.data(), t.bytes.size());
  w.finish();
}

/// Copies checkpoint `src` to `dst` as one model.safetensors after `mutate` edits the tensors and
/// `mutate_config` the config.json text.
inline void rewrite_checkpoint(const std::string& src, const std::string& dst,
                               const std::function<void(std::vector<TensorData>&)>& mutate,
                               const std::function<void(std::string&)>& mutate_config = {}) {
  Checkpoint ck(src);
  auto tensors = read_all(ck);
  if (mutate) mutate(tensors);
  std::filesystem::create_directories(dst);
  write_tensors((std::filesystem::path(dst) / "model.safetensors").string(), tensors);
  std::string cfg = read_file((std::filesystem::path(src) / "config.json").string());
  if (mutate_config) mutate_config(cfg);
  write_file((std::filesystem::path(dst) / "config.json").string(), cfg);
}

inline TensorData* find_tensor(std::vector<TensorData>& ts, const std::string& name) {
  for (auto& t : ts) {
    if (t.name == name) return &t;
  }
  ADD_FAILURE() << "no tensor " << name;
  return nullptr;
}

inline void erase_tensor(std::vector<TensorData>& ts, const std::string& name) {
  for (auto it = ts.begin(); it != ts.end(); ++it) {
    if (it->name == name) {
      ts.erase(it);
      return;
    }
  }
  ADD_FAILURE() << "no tensor " << name;
}

/// Runs f, expects a qmm::Error whose message contains every one of `parts`.
inline void expect_error(const std::function<void()>& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning " << (parts.empty() ? "" : parts.front());
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "message: " << msg << "\nmissing: " << p;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not a qmm::Error: " << e.what();
  }
}

/// max |a - b| / max |ref|.
template <typename A, typename B>
double relative_max_error(const std::vector<A>& a, const std::vector<B>& ref) {
  double err = 0, scale = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    err = std::max(err, std::fabs(static_cast<double>(a[i]) - static_cast<double>(ref[i])));
    scale = std::max(scale, std::fabs(static_cast<double>(ref[i])));
  }
  return scale > 0 ? err / scale : err;
}

inline void expect_same_tensor(const Tensor& a, const Tensor& b, const std::string& what) {
  ASSERT_EQ(a.defined(), b.defined()) << what;
  if (!a.defined()) return;
  ASSERT_EQ(a.shape(), b.shape()) << what;
  ASSERT_EQ(a.dtype(), b.dtype()) << what;
  const Tensor ha = a.to(Device::cpu()), hb = b.to(Device::cpu());
  EXPECT_EQ(std::memcmp(ha.data(), hb.data(), ha.nbytes()), 0) << what << " differs";
}

inline void expect_same_linear(const Linear& a, const Linear& b) {
  EXPECT_EQ(a.N, b.N) << a.name;
  EXPECT_EQ(a.K, b.K) << a.name;
  EXPECT_EQ(a.quant, b.quant) << a.name;
  expect_same_tensor(a.w_q, b.w_q, a.name + " w_q");
  expect_same_tensor(a.scales, b.scales, a.name + " scales");
  expect_same_tensor(a.biases, b.biases, a.name + " biases");
  expect_same_tensor(a.weight, b.weight, a.name + " weight");
  expect_same_tensor(a.bias, b.bias, a.name + " bias");
}

/// Every tensor of two ModelWeights is byte-identical (shared with the CUDA tests).
inline void expect_same_weights(const ModelWeights& a, const ModelWeights& b) {
  ASSERT_EQ(a.layers.size(), b.layers.size());
  expect_same_linear(a.embed, b.embed);
  expect_same_linear(a.lm_head, b.lm_head);
  EXPECT_EQ(a.tied, b.tied);
  expect_same_tensor(a.final_norm, b.final_norm, "final norm");
  for (std::size_t i = 0; i < a.layers.size(); ++i) {
    const Layer &x = a.layers[i], &y = b.layers[i];
    SCOPED_TRACE("layer " + std::to_string(i));
    EXPECT_EQ(x.fused_qkv, y.fused_qkv);
    EXPECT_EQ(x.fused_gate_up, y.fused_gate_up);
    for (auto [p, q] : {std::pair{&x.qkv, &y.qkv}, {&x.q, &y.q}, {&x.k, &y.k}, {&x.v, &y.v}, {&x.o, &y.o},
                        {&x.gate_up, &y.gate_up}, {&x.gate, &y.gate}, {&x.up, &y.up}, {&x.down, &y.down}}) {
      expect_same_linear(*p, *q);
    }
    expect_same_tensor(x.input_norm, y.input_norm, "input norm");
    expect_same_tensor(x.post_norm, y.post_norm, "post norm");
    expect_same_tensor(x.q_norm, y.q_norm, "q norm");
    expect_same_tensor(x.k_norm, y.k_norm, "k norm");
  }
}

}  // namespace qmm::model::testing
