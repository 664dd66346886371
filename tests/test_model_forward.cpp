// qmm model on the CPU: the forward pass (prefill in chunks, then a verify pass of M tokens) of
// tiny synthetic checkpoints against the independent fp64 reference, over variants that cover
// Qwen2/Llama/Qwen3 features, quantization overrides, tied and quantized embeddings and both
// dtypes; pass-level errors; the benchmark end to end.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>

#include "model/bench.h"
#include "model/forward.h"
#include "model/reference.h"
#include "model/weights.h"
#include "tests/model_test_util.h"

namespace qmm::model {
namespace {

using testing::TempDir;

struct Variant {
  std::string name;
  ModelConfig config;
  Dtype dtype = Dtype::float16;
  bool fuse = true;
};

void PrintTo(const Variant& v, std::ostream* os) { *os << v.name; }

std::vector<Variant> variants() {
  std::vector<Variant> v;
  v.push_back({"qwen2_fp16", testing::tiny_config(), Dtype::float16, true});
  v.push_back({"qwen2_bf16", testing::tiny_config(), Dtype::bfloat16, true});
  {
    // Llama with every bias, tied quantized 6-bit embeddings, llama3 RoPE scaling that bites at
    // these positions, an 8-bit g32 layer and a dense layer.
    ModelConfig c = testing::tiny_config();
    c.model_type = "llama";
    c.qkv_bias = c.o_bias = c.mlp_bias = true;
    c.tie_word_embeddings = true;
    c.rope_scaling = RopeScaling::llama3;
    c.rope_factor = 8.0;
    c.rope_low_freq_factor = 1.0;
    c.rope_high_freq_factor = 4.0;
    c.rope_original_max_position = 64;
    c.rope_theta = 500000.0;
    c.rms_norm_eps = 1e-5;
    c.quant_overrides["model.layers.0.mlp.down_proj"] = QuantSpec{true, 32, 8};
    c.quant_overrides["model.layers.1.self_attn.q_proj"] = QuantSpec{false, 64, 4};
    c.quant_overrides["model.embed_tokens"] = QuantSpec{true, 64, 6};
    v.push_back({"llama_tied_llama3rope_mixed", c, Dtype::float16, true});
  }
  {
    ModelConfig c = testing::tiny_config(3, 32);
    c.model_type = "qwen3";
    c.qk_norm = true;
    c.qkv_bias = false;
    c.rope_scaling = RopeScaling::linear;
    c.rope_factor = 2.0;
    v.push_back({"qwen3_qknorm_3bit_unfused", c, Dtype::bfloat16, false});
  }
  {
    ModelConfig c = testing::tiny_config(2, 128);
    c.num_heads = 8;
    c.num_kv_heads = 1;
    c.head_dim = 32;
    c.quant_overrides["model.embed_tokens"] = QuantSpec{false, 64, 4};
    c.quant_overrides["lm_head"] = QuantSpec{true, 32, 5};
    v.push_back({"mqa_2bit_dense_embedding_5bit_head", c, Dtype::float16, true});
  }
  return v;
}

std::vector<std::int32_t> random_tokens(int n, std::int64_t vocab, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<std::int32_t> t(static_cast<std::size_t>(n));
  for (auto& x : t) x = static_cast<std::int32_t>(rng() % static_cast<unsigned>(vocab));
  return t;
}

class ModelVsReference : public ::testing::TestWithParam<Variant> {};

TEST_P(ModelVsReference, LogitsMatchTheFp64Reference) {
  const Variant& v = GetParam();
  TempDir dir;
  ModelConfig c = v.config;
  c.torch_dtype = dtype_name(v.dtype);
  SyntheticOptions so;
  so.dtype = v.dtype;
  so.seed = 11;
  write_synthetic_checkpoint(dir.path(), c, so);
  auto ck = std::make_shared<const Checkpoint>(dir.path());
  auto src = checkpoint_source(ck);
  LoadOptions lo;
  lo.dtype = v.dtype;
  lo.fuse = v.fuse;
  auto w = std::make_shared<const ModelWeights>(load_weights(*src, lo));
  ModelOptions mo;
  mo.max_seq = 40;
  mo.max_verify_rows = 8;
  mo.prefill_chunk = 7;  // the 13-token prefill runs as 7 + 6
  Model model(w, mo);

  const int P = 13, M = 6;
  const auto tokens = random_tokens(P + M, c.vocab_size, 5);
  const auto prefill_logits = model.prefill(std::vector<std::int32_t>(tokens.begin(), tokens.begin() + P));
  const auto verify = model.forward(std::vector<std::int32_t>(tokens.begin() + P, tokens.end()), P);
  const auto ref = reference_forward(*ck, tokens);
  const std::size_t V = static_cast<std::size_t>(c.vocab_size);

  // Activations are rounded to 16 bits between ops (bf16 keeps 8 significant bits).
  const double tol = v.dtype == Dtype::bfloat16 ? 0.04 : 0.005;
  const std::vector<double> ref_last(ref.begin() + (P - 1) * V, ref.begin() + P * V);
  EXPECT_LT(testing::relative_max_error(prefill_logits, ref_last), tol) << "prefill's last row";
  double worst = 0;
  for (int r = 0; r < M; ++r) {
    const std::vector<float> row(verify.begin() + r * V, verify.begin() + (r + 1) * V);
    const std::vector<double> rrow(ref.begin() + (P + r) * V, ref.begin() + (P + r + 1) * V);
    const double err = testing::relative_max_error(row, rrow);
    worst = std::max(worst, err);
    EXPECT_LT(err, tol) << "verify row " << r;
    // The logits carry information: the reference's top token is near the top here too.
    const auto top = std::max_element(rrow.begin(), rrow.end()) - rrow.begin();
    const float best = *std::max_element(row.begin(), row.end());
    double scale = 0;
    for (double x : rrow) scale = std::max(scale, std::fabs(x));
    EXPECT_GT(row[top], best - 2 * tol * scale) << "verify row " << r;
  }
  std::printf("[     INFO ] %s: largest |logit - fp64 reference| / max |reference| = %.2e (tolerance %.0e)\n",
              v.name.c_str(), worst, tol);
}

INSTANTIATE_TEST_SUITE_P(Tiny, ModelVsReference, ::testing::ValuesIn(variants()),
                         [](const ::testing::TestParamInfo<Variant>& i) { return i.param.name; });

std::shared_ptr<const ModelWeights> tiny_weights(Dtype dtype = Dtype::float16, bool fuse = true) {
  auto src = synthetic_source(testing::tiny_config(), 3, "synthetic tiny", dtype);
  LoadOptions lo;
  lo.dtype = dtype;
  lo.fuse = fuse;
  return std::make_shared<const ModelWeights>(load_weights(*src, lo));
}

TEST(ModelForward, VerifyPassesDoNotAdvanceTheCache) {
  ModelOptions mo;
  mo.max_seq = 64;
  mo.max_verify_rows = 8;
  Model m(tiny_weights(), mo);
  const auto prompt = random_tokens(20, 512, 1), draft = random_tokens(5, 512, 2);
  m.prefill(prompt);
  const auto a = m.forward(draft, 20);
  const auto b = m.forward(random_tokens(3, 512, 9), 20);  // a different verify pass in between
  const auto c = m.forward(draft, 20);
  EXPECT_EQ(a, c);
  EXPECT_NE(a, std::vector<float>(b.begin(), b.end()));
}

TEST(ModelForward, AVerifyPassEqualsSequentialDecodingClosely) {
  ModelOptions mo;
  mo.max_seq = 64;
  mo.max_verify_rows = 8;
  Model m(tiny_weights(), mo);
  const auto prompt = random_tokens(10, 512, 1), draft = random_tokens(6, 512, 2);
  m.prefill(prompt);
  const auto batch = m.forward(draft, 10);
  const std::size_t V = 512;
  for (int r = 0; r < 6; ++r) {
    const auto one = m.forward({draft[static_cast<std::size_t>(r)]}, 10 + r);
    const std::vector<float> row(batch.begin() + r * V, batch.begin() + (r + 1) * V);
    EXPECT_LT(testing::relative_max_error(one, row), 2e-3) << "row " << r;
  }
}

TEST(ModelForward, FusedAndUnfusedProjectionsAgree) {
  ModelOptions mo;
  mo.max_seq = 32;
  mo.max_verify_rows = 4;
  Model fused(tiny_weights(Dtype::float16, true), mo), unfused(tiny_weights(Dtype::float16, false), mo);
  EXPECT_TRUE(fused.weights().layers[0].fused_qkv);
  EXPECT_FALSE(unfused.weights().layers[0].fused_qkv);
  const auto t = random_tokens(4, 512, 4);
  EXPECT_LT(testing::relative_max_error(fused.forward(t, 0), unfused.forward(t, 0)), 2e-3);
}

TEST(ModelForward, PassErrors) {
  ModelOptions mo;
  mo.max_seq = 16;
  mo.max_verify_rows = 4;
  mo.prefill_chunk = 8;
  Model m(tiny_weights(), mo);
  testing::expect_error([&] { m.forward({1, 2, 512}, 0); }, {"[model]", "token id 512", "vocabulary of 512"});
  testing::expect_error([&] { m.forward({-1}, 0); }, {"token id -1"});
  testing::expect_error([&] { m.forward({1, 2}, 15); }, {"exceed the KV cache of 16"});
  testing::expect_error([&] { m.forward({1, 2, 3, 4, 5}, 0); }, {"max_verify_rows"});
  testing::expect_error([&] { m.forward({}, 0); }, {"[model]"});
  testing::expect_error([&] { m.prefill(random_tokens(17, 512, 1)); }, {"exceed the KV cache"});
  EXPECT_NO_THROW(m.prefill(random_tokens(16, 512, 1)));
}

TEST(ModelForward, LoadErrors) {
  auto src = synthetic_source(testing::tiny_config(), 0);
  LoadOptions lo;
  lo.dtype = Dtype::float32;
  testing::expect_error([&] { load_weights(*src, lo); }, {"float16 or bfloat16"});
}

TEST(ModelBench, ParsesMLists) {
  EXPECT_EQ(parse_m_list("1-8"), (std::vector<int>{1, 2, 3, 4, 5, 6, 7, 8}));
  EXPECT_EQ(parse_m_list("1,2,4,8"), (std::vector<int>{1, 2, 4, 8}));
  EXPECT_EQ(parse_m_list("1-3,16"), (std::vector<int>{1, 2, 3, 16}));
  for (const char* bad : {"", "0", "a", "3-1", "1,,2", "-2", "1-", "99999"}) {
    EXPECT_THROW(parse_m_list(bad), Error) << bad;
  }
}

TEST(ModelBench, RunsEndToEndOnTheCpu) {
  ModelOptions mo;
  mo.max_seq = 8 + 3;
  mo.max_verify_rows = 16;
  Model m(tiny_weights(), mo);
  BenchOptions bo;
  bo.prefill = 8;
  bo.ms = {1, 2, 3};
  bo.repeats = 2;
  bo.warmup = 1;
  bo.probe_bytes = 8 << 20;
  const BenchResult r = run_benchmark(m, bo);
  ASSERT_EQ(r.rows.size(), 3u);
  for (const auto& row : r.rows) {
    EXPECT_GT(row.ms, 0);
    EXPECT_GE(row.linears_ms, 0);
    EXPECT_GE(row.attention_ms, 0);
    EXPECT_GE(row.other_ms, 0);
  }
  EXPECT_DOUBLE_EQ(r.rows[0].ratio, 1.0);
  EXPECT_GT(r.read_gbs, 0);
  EXPECT_GT(r.weight_bytes, r.linear_bytes);
  EXPECT_EQ(r.mmax, 3);
  EXPECT_EQ(r.linears.size(), 5u);  // qkv, o, gate_up, down, lm_head
  const std::string table = format_result(r);
  EXPECT_NE(table.find("tokens/s"), std::string::npos);
  EXPECT_NE(table.find("weight-read floor"), std::string::npos);
  const auto j = nlohmann::json::parse(result_json(r));
  EXPECT_EQ(j["schema"], "qmm-model-bench/1");
  EXPECT_EQ(j["rows"].size(), 3u);
  EXPECT_EQ(j["device"], "cpu");
  EXPECT_TRUE(j["targets"].contains("mmax_over_m1"));
}

}  // namespace
}  // namespace qmm::model
