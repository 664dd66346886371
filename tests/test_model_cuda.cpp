// qmm model on CUDA (label cuda; every test skips itself without a GPU): synthetic weights
// generated and quantized on the GPU equal the CPU's bit for bit; CPU and CUDA forwards agree
// (and both match the fp64 reference); row r of a verify pass of 8 tokens has exactly the bits of
// sequential single-token decoding; a captured graph replays to the eager result; the benchmark
// runs with graphs.
#include <gtest/gtest.h>

#include <random>

#include "model/bench.h"
#include "model/cuda/device.h"
#include "model/forward.h"
#include "model/reference.h"
#include "model/weights.h"
#include "qmm/device.h"
#include "tests/model_test_util.h"

namespace qmm::model {
namespace {

using testing::TempDir;

#define SKIP_WITHOUT_GPU()                                          \
  do {                                                              \
    if (!cuda_available()) GTEST_SKIP() << "no CUDA device/backend"; \
  } while (0)

std::vector<std::int32_t> random_tokens(int n, std::int64_t vocab, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<std::int32_t> t(static_cast<std::size_t>(n));
  for (auto& x : t) x = static_cast<std::int32_t>(rng() % static_cast<unsigned>(vocab));
  return t;
}

/// A model big enough for qmm's real CUDA dispatch and several attention splits.
ModelConfig mid_config() {
  ModelConfig c = preset_config("tiny");
  c.hidden_size = 1024;
  c.intermediate_size = 2816;
  c.num_heads = 8;
  c.num_kv_heads = 2;
  c.head_dim = 128;
  c.vocab_size = 4096;
  return c;
}

std::shared_ptr<const ModelWeights> synthetic_weights(const ModelConfig& c, Device device, Dtype dtype,
                                                      bool fuse = true) {
  auto src = synthetic_source(c, 5, "synthetic", dtype);
  LoadOptions lo;
  lo.device = device;
  lo.dtype = dtype;
  lo.fuse = fuse;
  return std::make_shared<const ModelWeights>(load_weights(*src, lo));
}

TEST(ModelCuda, SyntheticWeightsOnTheGpuEqualTheCpu) {
  SKIP_WITHOUT_GPU();
  for (Dtype dtype : {Dtype::float16, Dtype::bfloat16}) {
    for (int bits : {3, 4, 8}) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + " bits " + std::to_string(bits));
      ModelConfig c = testing::tiny_config(bits, 64);
      c.quant_overrides["model.layers.1.self_attn.k_proj"] = QuantSpec{false, 64, 4};  // dense fill too
      testing::expect_same_weights(*synthetic_weights(c, Device::cuda(), dtype),
                                   *synthetic_weights(c, Device::cpu(), dtype));
    }
  }
}

TEST(ModelCuda, CheckpointsLoadOnTheGpu) {
  SKIP_WITHOUT_GPU();
  TempDir dir;
  SyntheticOptions so;
  so.max_shard_bytes = 300'000;
  write_synthetic_checkpoint(dir.path(), testing::tiny_config(), so);
  auto ck = std::make_shared<const Checkpoint>(dir.path());
  auto src = checkpoint_source(ck);
  LoadOptions lo;
  lo.device = Device::cuda();
  const ModelWeights gpu = load_weights(*src, lo);
  lo.device = Device::cpu();
  testing::expect_same_weights(gpu, load_weights(*src, lo));
}

struct Case {
  std::string name;
  ModelConfig config;
  Dtype dtype;
  bool fuse;
};

void PrintTo(const Case& v, std::ostream* os) { *os << v.name; }

std::vector<Case> cases() {
  std::vector<Case> v;
  v.push_back({"tiny_fp16", testing::tiny_config(), Dtype::float16, true});
  v.push_back({"tiny_bf16", testing::tiny_config(), Dtype::bfloat16, true});
  {
    ModelConfig c = testing::tiny_config(3, 32);
    c.model_type = "qwen3";
    c.qk_norm = true;
    c.qkv_bias = false;
    c.tie_word_embeddings = true;
    c.quant_overrides["model.layers.1.self_attn.q_proj"] = QuantSpec{false, 64, 4};
    c.quant_overrides["model.embed_tokens"] = QuantSpec{true, 64, 5};
    v.push_back({"qwen3_tied_mixed_unfused", c, Dtype::float16, false});
  }
  {
    ModelConfig c = mid_config();
    c.model_type = "llama";
    c.qkv_bias = c.o_bias = c.mlp_bias = true;
    v.push_back({"mid_llama_biases", c, Dtype::bfloat16, true});
  }
  return v;
}

class ModelCudaVsCpu : public ::testing::TestWithParam<Case> {};

TEST_P(ModelCudaVsCpu, CpuAndCudaAgreeAndMatchTheReference) {
  SKIP_WITHOUT_GPU();
  const Case& k = GetParam();
  TempDir dir;
  ModelConfig c = k.config;
  c.torch_dtype = dtype_name(k.dtype);
  SyntheticOptions so;
  so.dtype = k.dtype;
  write_synthetic_checkpoint(dir.path(), c, so);
  auto ck = std::make_shared<const Checkpoint>(dir.path());
  auto src = checkpoint_source(ck);
  ModelOptions mo;
  mo.max_seq = 96;
  mo.max_verify_rows = 8;
  mo.prefill_chunk = 32;  // 40 tokens: a 32-row pass (one attention split) then an 8-row pass
  const int P = 40, M = 8;
  const auto tokens = random_tokens(P + M, c.vocab_size, 3);
  const std::vector<std::int32_t> prompt(tokens.begin(), tokens.begin() + P), draft(tokens.begin() + P, tokens.end());
  std::vector<float> out[2];
  for (int d = 0; d < 2; ++d) {
    LoadOptions lo;
    lo.device = d ? Device::cuda() : Device::cpu();
    lo.dtype = k.dtype;
    lo.fuse = k.fuse;
    Model m(std::make_shared<const ModelWeights>(load_weights(*src, lo)), mo);
    m.prefill(prompt);
    out[d] = m.forward(draft, P);
  }
  const double tol = k.dtype == Dtype::bfloat16 ? 0.06 : 0.01;
  EXPECT_LT(testing::relative_max_error(out[1], out[0]), tol) << "CUDA vs CPU";
  if (c.hidden_size <= 256) {
    const auto ref = reference_forward(*ck, tokens);
    const std::vector<double> ref_rows(ref.begin() + P * c.vocab_size, ref.end());
    EXPECT_LT(testing::relative_max_error(out[1], ref_rows), tol) << "CUDA vs the fp64 reference";
  }
}

INSTANTIATE_TEST_SUITE_P(Models, ModelCudaVsCpu, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& i) { return i.param.name; });

class ModelCudaBatchInvariance : public ::testing::TestWithParam<Case> {};

TEST_P(ModelCudaBatchInvariance, RowRIsIdenticalForM8AndSequentialM1) {
  SKIP_WITHOUT_GPU();
  const Case& k = GetParam();
  ModelOptions mo;
  mo.max_seq = 512;  // several attention splits at these positions
  mo.max_verify_rows = 8;
  Model m(synthetic_weights(k.config, Device::cuda(), k.dtype, k.fuse), mo);
  const int P = 300;
  const std::int64_t V = k.config.vocab_size;
  m.prefill(random_tokens(P, V, 1));
  const auto draft = random_tokens(8, V, 2);
  const auto batch = m.forward(draft, P);
  for (int r = 0; r < 8; ++r) {
    const auto one = m.forward({draft[static_cast<std::size_t>(r)]}, P + r);  // sequential decoding
    const std::vector<float> row(batch.begin() + r * V, batch.begin() + (r + 1) * V);
    std::size_t differ = 0;
    for (std::int64_t i = 0; i < V; ++i) differ += one[i] != row[i];
    EXPECT_EQ(differ, 0u) << "row " << r << ": " << differ << " of " << V
                          << " logits differ between M=8 and M=1 (max rel diff "
                          << testing::relative_max_error(one, row) << ")";
  }
  // And every M in between gives row 0 the same bits.
  for (int n = 2; n <= 7; ++n) {
    const auto part = m.forward(std::vector<std::int32_t>(draft.begin(), draft.begin() + n), P);
    EXPECT_TRUE(std::equal(part.begin(), part.begin() + V, batch.begin())) << "M=" << n;
  }
}

INSTANTIATE_TEST_SUITE_P(Models, ModelCudaBatchInvariance, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& i) { return i.param.name; });

TEST(ModelCuda, GraphReplayEqualsEager) {
  SKIP_WITHOUT_GPU();
  ModelOptions mo;
  mo.max_seq = 128;
  mo.max_verify_rows = 8;
  Model m(synthetic_weights(mid_config(), Device::cuda(), Dtype::float16), mo);
  m.prefill(random_tokens(100, 4096, 1));
  const auto draft = random_tokens(4, 4096, 2);
  const auto eager = m.forward(draft, 100);
  m.set_tokens(draft);
  cuda::capture_begin(m.stream());
  m.enqueue(4, 100, true);
  const char* err = nullptr;
  void* graph = cuda::capture_end(m.stream(), &err);
  ASSERT_NE(graph, nullptr) << "capture failed: " << (err ? err : "?");
  for (int i = 0; i < 3; ++i) cuda::graph_launch(graph, m.stream());
  m.synchronize();
  EXPECT_EQ(m.read_logits(4), eager);
  cuda::graph_destroy(graph);
}

TEST(ModelCuda, BenchmarkRunsWithGraphs) {
  SKIP_WITHOUT_GPU();
  ModelOptions mo;
  mo.max_seq = 64 + 8;
  mo.max_verify_rows = 16;
  Model m(synthetic_weights(mid_config(), Device::cuda(), Dtype::float16), mo);
  BenchOptions bo;
  bo.prefill = 64;
  bo.repeats = 3;
  bo.warmup = 1;
  bo.probe_bytes = 256 << 20;
  const BenchResult r = run_benchmark(m, bo);
  EXPECT_TRUE(r.graphs) << r.graph_note;
  ASSERT_EQ(r.rows.size(), 8u);
  for (const auto& row : r.rows) {
    EXPECT_GT(row.ms, 0);
    EXPECT_GT(row.linears_ms, 0);
    EXPECT_GT(row.attention_ms, 0);
    EXPECT_GT(row.other_ms, 0);
  }
  EXPECT_GT(r.read_gbs, 100);
  for (const auto& l : r.linears) EXPECT_NE(l.kernel_m1, "?") << l.name;
  std::printf("%s", format_result(r).c_str());
}

}  // namespace
}  // namespace qmm::model
