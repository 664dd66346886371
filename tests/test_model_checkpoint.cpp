// qmm model: checkpoints written by --make-synthetic load back to exactly the in-memory synthetic
// weights (single file and shards); broken checkpoints (missing, mistyped, misshapen tensors,
// bits/group that contradict the shapes, bad indexes) give errors naming the file and tensor.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "model/checkpoint.h"
#include "model/weights.h"
#include "tests/model_test_util.h"

namespace qmm::model {
namespace {

using testing::expect_error;
using testing::expect_same_weights;
using testing::TempDir;


ModelWeights load_dir(const std::string& dir, Dtype dtype = Dtype::float16, bool fuse = true) {
  auto src = checkpoint_source(std::make_shared<const Checkpoint>(dir));
  LoadOptions lo;
  lo.dtype = dtype;
  lo.fuse = fuse;
  return load_weights(*src, lo);
}

ModelWeights load_synthetic(const ModelConfig& c, Dtype dtype, bool fuse = true, std::uint64_t seed = 0) {
  auto src = synthetic_source(c, seed, "synthetic", storage_dtype(c));
  LoadOptions lo;
  lo.dtype = dtype;
  lo.fuse = fuse;
  return load_weights(*src, lo);
}

void write_tiny(const std::string& dir, const ModelConfig& c, Dtype dtype = Dtype::float16,
                std::uint64_t shard = 5'000'000'000ull) {
  SyntheticOptions so;
  so.dtype = dtype;
  so.max_shard_bytes = shard;
  write_synthetic_checkpoint(dir, c, so);
}

TEST(ModelCheckpoint, MakeSyntheticLoadsBackToTheInMemoryWeights) {
  for (Dtype dtype : {Dtype::float16, Dtype::bfloat16}) {
    for (bool fuse : {true, false}) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + (fuse ? " fused" : " unfused"));
      TempDir dir;
      ModelConfig c = testing::tiny_config();
      c.torch_dtype = dtype == Dtype::bfloat16 ? "bfloat16" : "float16";
      write_tiny(dir.path(), c, dtype);
      EXPECT_TRUE(std::filesystem::exists(dir.file("model.safetensors")));
      EXPECT_FALSE(std::filesystem::exists(dir.file("model.safetensors.index.json")));
      expect_same_weights(load_dir(dir.path(), dtype, fuse), load_synthetic(c, dtype, fuse));
    }
  }
}

TEST(ModelCheckpoint, ShardsWithAnIndexLoadTheSameTensors) {
  TempDir one, many;
  const ModelConfig c = testing::tiny_config();
  write_tiny(one.path(), c);
  write_tiny(many.path(), c, Dtype::float16, 200'000);  // a few hundred kB per shard
  EXPECT_TRUE(std::filesystem::exists(many.file("model.safetensors.index.json")));
  const Checkpoint ck(many.path());
  EXPECT_GT(ck.file_count(), 2u);
  EXPECT_EQ(ck.names(), Checkpoint(one.path()).names());
  // Every tensor is byte-identical to the single-file checkpoint.
  const Checkpoint ck1(one.path());
  for (const auto& name : ck.names()) {
    const auto *a = ck.find(name)->tensor, *b = ck1.find(name)->tensor;
    ASSERT_EQ(a->shape, b->shape) << name;
    ASSERT_EQ(std::memcmp(a->data, b->data, a->nbytes()), 0) << name;
  }
  expect_same_weights(load_dir(many.path()), load_synthetic(c, Dtype::float16));
}

TEST(ModelCheckpoint, OverridesTiedEmbeddingsAndQkNormRoundTrip) {
  TempDir dir;
  ModelConfig c = testing::tiny_config(3, 32);
  c.model_type = "qwen3";
  c.qk_norm = true;
  c.qkv_bias = false;
  c.tie_word_embeddings = true;
  c.quant_overrides["model.layers.0.mlp.down_proj"] = QuantSpec{true, 128, 8};
  c.quant_overrides["model.layers.1.self_attn.k_proj"] = QuantSpec{false, 64, 4};
  c.quant_overrides["model.embed_tokens"] = QuantSpec{true, 64, 6};
  write_tiny(dir.path(), c);
  const Checkpoint ck(dir.path());
  EXPECT_EQ(ck.find("lm_head.weight"), nullptr);
  EXPECT_NE(ck.find("model.layers.1.self_attn.q_norm.weight"), nullptr);
  EXPECT_EQ(ck.find("model.layers.1.self_attn.k_proj.scales"), nullptr);
  EXPECT_EQ(ck.find("model.layers.0.mlp.down_proj.weight")->tensor->shape, (Shape{256, 512 * 8 / 32}));
  const ModelWeights w = load_dir(dir.path());
  EXPECT_TRUE(w.tied);
  EXPECT_FALSE(w.layers[1].fused_qkv);  // k is dense, q and v are not: stored differently
  EXPECT_TRUE(w.layers[0].fused_qkv);
  EXPECT_EQ(w.layers[0].down.quant, (QuantSpec{true, 128, 8}));
  EXPECT_EQ(w.embed.quant, (QuantSpec{true, 64, 6}));
  expect_same_weights(w, load_synthetic(c, Dtype::float16));
}

// ---- broken checkpoints ---------------------------------------------------------------------

class BrokenCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override { write_tiny(good_.path(), testing::tiny_config()); }
  /// Rewrites the good checkpoint with a mutation and expects loading to fail mentioning parts.
  void expect_load_error(const std::function<void(std::vector<testing::TensorData>&)>& mutate,
                         const std::vector<std::string>& parts,
                         const std::function<void(std::string&)>& mutate_config = {}) {
    TempDir bad;
    testing::rewrite_checkpoint(good_.path(), bad.path(), mutate, mutate_config);
    expect_error([&] { load_dir(bad.path()); }, parts);
  }
  TempDir good_;
};

const std::string kQ = "model.layers.0.self_attn.q_proj";
const std::string kDown = "model.layers.1.mlp.down_proj";

TEST_F(BrokenCheckpoint, UnmodifiedRewriteLoads) {
  TempDir copy;
  testing::rewrite_checkpoint(good_.path(), copy.path(), {});
  EXPECT_NO_THROW(load_dir(copy.path()));
}

TEST_F(BrokenCheckpoint, MissingTensors) {
  expect_load_error([](auto& ts) { testing::erase_tensor(ts, kQ + ".weight"); }, {"'" + kQ + ".weight'", "missing"});
  expect_load_error([](auto& ts) { testing::erase_tensor(ts, kQ + ".scales"); },
                    {"model.safetensors", "'" + kQ + ".biases' exists but '" + kQ + ".scales' does not"});
  expect_load_error(
      [](auto& ts) {
        testing::erase_tensor(ts, kQ + ".scales");
        testing::erase_tensor(ts, kQ + ".biases");
      },
      {"model.safetensors", "'" + kQ + ".weight'", "U32", "'" + kQ + ".scales' is missing"});
  expect_load_error([](auto& ts) { testing::erase_tensor(ts, kQ + ".biases"); }, {"'" + kQ + ".biases' is missing"});
  expect_load_error([](auto& ts) { testing::erase_tensor(ts, kQ + ".bias"); }, {"'" + kQ + ".bias' is missing"});
  expect_load_error([](auto& ts) { testing::erase_tensor(ts, "model.norm.weight"); }, {"'model.norm.weight'", "missing"});
  expect_load_error([](auto& ts) { testing::erase_tensor(ts, "lm_head.weight"); },
                    {"lm_head"});  // config.json says untied
}

TEST_F(BrokenCheckpoint, WrongDtypes) {
  expect_load_error([](auto& ts) { testing::find_tensor(ts, kQ + ".weight")->dtype = StDtype::I32; },
                    {"model.safetensors", "'" + kQ + ".weight'", "I32", "must be U32"});
  expect_load_error(
      [](auto& ts) {
        auto* t = testing::find_tensor(ts, kQ + ".scales");
        t->dtype = StDtype::U16;
      },
      {"'" + kQ + ".scales'", "U16"});
  expect_load_error(
      [](auto& ts) {
        auto* t = testing::find_tensor(ts, kQ + ".biases");  // F16 -> BF16: same size, mismatched pair
        t->dtype = StDtype::BF16;
      },
      {"'" + kQ + ".biases'", "BF16", "the scales are F16"});
  expect_load_error(
      [](auto& ts) {
        auto* t = testing::find_tensor(ts, "model.norm.weight");
        t->dtype = StDtype::U16;
      },
      {"'model.norm.weight'", "U16"});
}

TEST_F(BrokenCheckpoint, WrongShapes) {
  expect_load_error(
      [](auto& ts) {
        auto* t = testing::find_tensor(ts, kDown + ".weight");
        t->shape = {t->shape[0] / 2, t->shape[1] * 2};
      },
      {"'" + kDown + ".weight'", "(128, 128)", "bits=4, group_size=64", "needs (256, 64)"});
  expect_load_error(
      [](auto& ts) {
        auto* t = testing::find_tensor(ts, kQ + ".scales");
        t->shape = {t->shape[0] * t->shape[1]};
      },
      {"'" + kQ + ".scales'", "needs (256, 4)"});
  expect_load_error(
      [](auto& ts) {
        auto* t = testing::find_tensor(ts, "model.layers.0.input_layernorm.weight");
        t->shape = {128};
        t->bytes.resize(256);
      },
      {"'model.layers.0.input_layernorm.weight'", "(128,)", "(256,)"});
}

TEST_F(BrokenCheckpoint, BitsAndGroupSizeThatContradictTheShapes) {
  // config.json says 8 bits for this layer; the tensors are 4-bit.
  expect_load_error({}, {"'" + kDown + ".weight'", "bits=8", "needs (256, 128)"}, [](std::string& cfg) {
    const std::string key = "\"quantization\": {";
    cfg.replace(cfg.find(key), key.size(), key + "\"" + kDown + "\": {\"group_size\": 64, \"bits\": 8}, ");
  });
  // Group size 128 for everything: the scales have twice too many columns.
  expect_load_error({}, {".scales'", "group_size=128"}, [](std::string& cfg) {
    for (std::size_t p; (p = cfg.find("\"group_size\": 64")) != std::string::npos;) cfg.replace(p, 16, "\"group_size\": 128");
  });
  // Scales present but config.json says the layer is not quantized, or has no quantization at all.
  expect_load_error({}, {"'" + kQ + ".scales'", "not quantized"}, [](std::string& cfg) {
    const std::string key = "\"quantization\": {";
    cfg.replace(cfg.find(key), key.size(), key + "\"" + kQ + "\": false, ");
  });
  expect_load_error({}, {".scales'", "no \"quantization\""}, [](std::string& cfg) {
    for (const char* key : {"\"quantization\"", "\"quantization_config\""}) {
      cfg.replace(cfg.find(key), std::strlen(key), "\"unused_" + std::string(key + 1));
    }
  });
}

TEST_F(BrokenCheckpoint, BiasesThatContradictTheConfig) {
  // A llama config has no q/k/v bias: the checkpoint's biases are unexpected.
  expect_load_error({}, {"'" + kQ + ".bias' exists"}, [](std::string& cfg) {
    const std::string key = "\"model_type\": \"qwen2\"";
    cfg.replace(cfg.find(key), key.size(), "\"model_type\": \"llama\"");
  });
}

TEST_F(BrokenCheckpoint, DirectoryAndIndexErrors) {
  TempDir empty;
  expect_error([&] { Checkpoint ck(empty.path()); }, {empty.path(), "no config.json"});
  expect_error([&] { Checkpoint ck(empty.file("nope")); }, {"not a directory"});
  testing::write_file(empty.file("config.json"), testing::read_file(good_.file("config.json")));
  expect_error([&] { Checkpoint ck(empty.path()); }, {"no model.safetensors"});

  TempDir sharded;
  write_tiny(sharded.path(), testing::tiny_config(), Dtype::float16, 200'000);
  const std::string index = testing::read_file(sharded.file("model.safetensors.index.json"));
  std::vector<std::string> shards;
  for (const auto& e : std::filesystem::directory_iterator(sharded.path())) {
    const std::string name = e.path().filename().string();
    if (name.rfind("model-", 0) == 0) shards.push_back(name);
  }
  std::sort(shards.begin(), shards.end());
  ASSERT_GE(shards.size(), 3u);
  auto with_index = [&](const std::string& text) {
    testing::write_file(sharded.file("model.safetensors.index.json"), text);
  };
  with_index(R"({"weight_map": {"model.norm.weight": "model-00009-of-00009.safetensors"}})");
  expect_error([&] { Checkpoint ck(sharded.path()); }, {"index.json", "model-00009-of-00009.safetensors", "does not exist"});
  with_index(R"({"weight_map": {"model.norm.weight": "../model.safetensors"}})");
  expect_error([&] { Checkpoint ck(sharded.path()); }, {"index.json", "plain file name"});
  with_index(R"({"weight_map": {"model.norm.weight": ")" + shards[0] + R"("}})");
  expect_error([&] { Checkpoint ck(sharded.path()); }, {"index.json", "'model.norm.weight'", "has no such tensor"});
  with_index(index);
  EXPECT_NO_THROW(Checkpoint ck(sharded.path()));
  // A corrupted shard: its error names the shard.
  const std::string shard = sharded.file(shards[1]);
  const std::string bytes = testing::read_file(shard);
  testing::write_file(shard, bytes.substr(0, bytes.size() - 3));
  expect_error([&] { Checkpoint ck(sharded.path()); }, {shards[1], "past the end"});
}

}  // namespace
}  // namespace qmm::model
