// qmm model: config.json, safetensors and index parsing; a corpus of malformed files generated
// here, each of which must give a clear qmm::Error naming the file (and the tensor at fault).
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "model/checkpoint.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "tests/model_test_util.h"

namespace qmm::model {
namespace {

using testing::expect_error;
using testing::TempDir;

// ---- config.json ----------------------------------------------------------------------------

TEST(ModelConfig, PresetsRoundTripThroughJson) {
  for (const auto& name : preset_names()) {
    const ModelConfig c = preset_config(name, 4, 64, Dtype::bfloat16);
    const ModelConfig d = parse_config(config_to_json(c), name);
    EXPECT_EQ(d.model_type, c.model_type) << name;
    EXPECT_EQ(d.hidden_size, c.hidden_size);
    EXPECT_EQ(d.intermediate_size, c.intermediate_size);
    EXPECT_EQ(d.num_layers, c.num_layers);
    EXPECT_EQ(d.num_heads, c.num_heads);
    EXPECT_EQ(d.num_kv_heads, c.num_kv_heads);
    EXPECT_EQ(d.head_dim, c.head_dim);
    EXPECT_EQ(d.vocab_size, c.vocab_size);
    EXPECT_EQ(d.rope_theta, c.rope_theta);
    EXPECT_EQ(d.rms_norm_eps, c.rms_norm_eps);
    EXPECT_EQ(d.rope_scaling, c.rope_scaling);
    EXPECT_EQ(d.rope_factor, c.rope_factor);
    EXPECT_EQ(d.tie_word_embeddings, c.tie_word_embeddings);
    EXPECT_EQ(d.qkv_bias, c.qkv_bias);
    EXPECT_EQ(d.torch_dtype, "bfloat16");
    EXPECT_TRUE(d.has_quantization);
    EXPECT_EQ(d.default_quant, c.default_quant);
  }
}

TEST(ModelConfig, Qwen25_14bIsTheShapesOfIssue3553) {
  const ModelConfig c = preset_config("qwen2.5-14b");
  EXPECT_EQ(c.hidden_size, 5120);
  EXPECT_EQ(c.intermediate_size, 13824);
  EXPECT_EQ(c.num_heads, 40);
  EXPECT_EQ(c.num_kv_heads, 8);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.num_layers, 48);
  EXPECT_EQ(c.vocab_size, 152064);
  EXPECT_EQ(c.rope_theta, 1e6);
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_FALSE(c.o_bias);
  EXPECT_EQ(c.q_dim(), 5120);
  EXPECT_EQ(c.kv_dim(), 1024);
}

TEST(ModelConfig, PerModuleQuantizationOverrides) {
  const std::string text = R"({
    "model_type": "llama", "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512, "rms_norm_eps": 1e-5,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    "quantization": {"group_size": 64, "bits": 4, "mode": "affine",
                     "model.layers.0.mlp.down_proj": {"group_size": 32, "bits": 8},
                     "lm_head": false, "model.embed_tokens": true}})";
  const ModelConfig c = parse_config(text, "cfg");
  EXPECT_EQ(c.head_dim, 64);  // hidden / heads when not given
  EXPECT_EQ(c.rope_scaling, RopeScaling::llama3);
  EXPECT_EQ(c.quant_for("model.layers.0.mlp.down_proj"), (QuantSpec{true, 32, 8}));
  EXPECT_EQ(c.quant_for("model.layers.1.mlp.down_proj"), (QuantSpec{true, 64, 4}));
  EXPECT_FALSE(c.quant_for("lm_head").quantized);
  EXPECT_TRUE(c.quant_for("model.embed_tokens").quantized);
  EXPECT_FALSE(c.tie_word_embeddings.has_value());
  EXPECT_FALSE(c.qkv_bias);
}

TEST(ModelConfig, QuantizationConfigIsTheFallbackKey) {
  const ModelConfig c = parse_config(
      R"({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2,
          "vocab_size": 10, "quantization_config": {"group_size": 32, "bits": 3}})",
      "cfg");
  EXPECT_EQ(c.quant_for("x"), (QuantSpec{true, 32, 3}));
}

TEST(ModelConfig, MalformedConfigsGiveClearErrors) {
  const std::string base = R"("hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
      "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512)";
  struct Case {
    std::string text;
    std::string mention;
  };
  const std::vector<Case> cases = {
      {"", "not valid JSON"},
      {"{", "not valid JSON"},
      {"[1, 2]", "must be a JSON object"},
      {"{}", "hidden_size"},
      {"{" + base + R"(, "hidden_size": -3})", "hidden_size"},
      {R"({"hidden_size": "big", "intermediate_size": 512})", "hidden_size"},
      {R"({"hidden_size": 256.5, "intermediate_size": 512})", "hidden_size"},
      {R"({"hidden_size": 1e300, "intermediate_size": 512})", "hidden_size"},
      {"{" + base + R"(, "num_key_value_heads": 3})", "multiple of num_key_value_heads"},
      {"{" + base + R"(, "head_dim": 63})", "head_dim"},
      {"{" + base + R"(, "model_type": "gpt2"})", "model_type"},
      {"{" + base + R"(, "rope_theta": "x"})", "rope_theta"},
      {"{" + base + R"(, "rms_norm_eps": 0})", "rms_norm_eps"},
      {"{" + base + R"(, "rope_scaling": {"rope_type": "yarn", "factor": 4}})", "yarn"},
      {"{" + base + R"(, "rope_scaling": {"type": "linear"}})", "factor"},
      {"{" + base + R"(, "rope_scaling": 7})", "rope_scaling"},
      {"{" + base + R"(, "tie_word_embeddings": 1})", "tie_word_embeddings"},
      {"{" + base + R"(, "quantization": {"bits": 4}})", "group_size"},
      {"{" + base + R"(, "quantization": {"group_size": 64, "bits": 7}})", "bits=7"},
      {"{" + base + R"(, "quantization": {"group_size": 16, "bits": 4}})", "group_size=16"},
      {"{" + base + R"(, "quantization": {"group_size": 64, "bits": 4, "mode": "mxfp4"}})", "mxfp4"},
      {"{" + base + R"(, "quantization": {"group_size": 64, "bits": 4, "model.layers.0.mlp.up_proj": {"bits": 9}}})",
       "model.layers.0.mlp.up_proj"},
      {"{" + base + R"(, "quantization": [64, 4]})", "quantization"},
      {"{" + base + R"(, "use_sliding_window": true})", "use_sliding_window"},
      {"{" + base + R"(, "vocab_size": 100000000})", "vocab_size"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.text);
    expect_error([&] { parse_config(c.text, "dir/config.json"); }, {"[config] dir/config.json: ", c.mention});
  }
}

TEST(ModelConfig, DeepNestingDoesNotCrash) {
  std::string deep(200000, '[');
  expect_error([&] { parse_config(deep, "deep.json"); }, {"deep.json"});
  std::string ok = std::string(100000, '[') + std::string(100000, ']');
  expect_error([&] { parse_config("{\"a\": " + ok + "}", "deep.json"); }, {"hidden_size"});
}

// ---- safetensors ----------------------------------------------------------------------------

std::string le64(std::uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(v >> (8 * i));
  return s;
}

/// A safetensors file with the given header text and data bytes.
std::string make_file(const std::string& header, std::size_t data_bytes) {
  return le64(header.size()) + header + std::string(data_bytes, '\x01');
}

StHeader parse_bytes(const std::string& bytes, const std::string& name = "x.safetensors") {
  return parse_safetensors(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size(), name);
}

TEST(Safetensors, WriterAndReaderRoundTripEveryDtype) {
  TempDir dir;
  std::vector<testing::TensorData> ts;
  std::mt19937 rng(3);
  for (StDtype d : {StDtype::F32, StDtype::F16, StDtype::BF16, StDtype::U32, StDtype::I32, StDtype::U8, StDtype::I64}) {
    testing::TensorData t{std::string("t_") + st_dtype_name(d), d, {3, 5}, ""};
    t.bytes.resize(15 * st_itemsize(d));
    for (auto& ch : t.bytes) ch = static_cast<char>(rng());
    ts.push_back(t);
  }
  ts.push_back({"empty", StDtype::F16, {0, 7}, ""});
  ts.push_back({"scalar", StDtype::F32, {}, std::string(4, 'a')});
  testing::write_tensors(dir.file("a.safetensors"), ts);
  SafetensorsFile f(dir.file("a.safetensors"));
  EXPECT_EQ(f.header().metadata.at("format"), "mlx");
  EXPECT_EQ(f.header().data_offset % 8, 0u);
  for (const auto& t : ts) {
    const StTensor* s = f.find(t.name);
    ASSERT_NE(s, nullptr) << t.name;
    EXPECT_EQ(s->dtype, t.dtype);
    EXPECT_EQ(s->shape, t.shape);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(s->data), s->nbytes()), t.bytes);
  }
  EXPECT_EQ(f.find("nope"), nullptr);
}

TEST(Safetensors, MalformedFilesGiveClearErrors) {
  struct Case {
    std::string name;
    std::string bytes;
    std::vector<std::string> mentions;
  };
  const std::string ok_entry = R"("w": {"dtype": "F16", "shape": [2, 2], "data_offsets": [0, 8]})";
  auto file = [](const std::string& header, std::size_t data) { return make_file(header, data); };
  const std::vector<Case> cases = {
      {"empty", "", {"too short"}},
      {"seven bytes", std::string(7, '\0'), {"too short"}},
      {"huge header length", le64(std::uint64_t(1) << 40) + "{}", {"exceeds the limit"}},
      {"header past the end", le64(100) + "{}", {"runs past the end"}},
      {"header length zero", le64(0), {"too short for a JSON object"}},
      {"not json", file("{garbage", 0), {"not valid JSON"}},
      {"array", file("[1,2]", 0), {"must be a JSON object"}},
      {"entry not an object", file(R"({"w": 5})", 0), {"tensor 'w'", "must be an object"}},
      {"missing dtype", file(R"({"w": {"shape": [1], "data_offsets": [0, 2]}})", 2), {"tensor 'w'", "dtype"}},
      {"unknown dtype", file(R"({"w": {"dtype": "F17", "shape": [1], "data_offsets": [0, 2]}})", 2),
       {"tensor 'w'", "unknown dtype 'F17'"}},
      {"dtype not a string", file(R"({"w": {"dtype": 3, "shape": [1], "data_offsets": [0, 2]}})", 2),
       {"tensor 'w'", "dtype"}},
      {"negative dimension", file(R"({"w": {"dtype": "F16", "shape": [-1], "data_offsets": [0, 2]}})", 2),
       {"tensor 'w'", "negative"}},
      {"float dimension", file(R"({"w": {"dtype": "F16", "shape": [1.5], "data_offsets": [0, 2]}})", 2),
       {"tensor 'w'", "shape dimension"}},
      {"shape not an array", file(R"({"w": {"dtype": "F16", "shape": 4, "data_offsets": [0, 8]}})", 8),
       {"tensor 'w'", "shape"}},
      {"overflowing shape",
       file(R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296, 16], "data_offsets": [0, 8]}})", 8),
       {"tensor 'w'", "too large"}},
      {"offsets wrong length", file(R"({"w": {"dtype": "F16", "shape": [1], "data_offsets": [0]}})", 2),
       {"tensor 'w'", "data_offsets"}},
      {"offsets reversed", file(R"({"w": {"dtype": "F16", "shape": [0], "data_offsets": [4, 2]}})", 4),
       {"tensor 'w'", "reversed"}},
      {"offsets past the end", file("{" + ok_entry + "}", 6), {"tensor 'w'", "past the end of the data"}},
      {"size does not match shape",
       file(R"({"w": {"dtype": "F16", "shape": [2, 2], "data_offsets": [0, 6]}})", 8),
       {"tensor 'w'", "6 bytes of data", "need 8"}},
      {"overlap",
       file(R"({"a": {"dtype": "F16", "shape": [4], "data_offsets": [0, 8]},
               "b": {"dtype": "F16", "shape": [4], "data_offsets": [4, 12]}})",
            12),
       {"'a'", "'b'", "overlap"}},
      {"duplicate name",
       file(R"({"a": {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]},
               "a": {"dtype": "F16", "shape": [1], "data_offsets": [2, 4]}})",
            4),
       {"'a' twice"}},
      {"unknown field", file(R"({"w": {"dtype": "F16", "shape": [1], "data_offsets": [0, 2], "x": 1}})", 2),
       {"tensor 'w'", "unknown field 'x'"}},
      {"metadata not strings", file(R"({"__metadata__": {"format": 1}})", 0), {"__metadata__"}},
      {"empty name", file(R"({"": {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]}})", 2), {"empty name"}},
      {"binary name", file("{\"\\u0001w\": 3}", 0), {"tensor '\\x01w'"}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    std::vector<std::string> mentions = c.mentions;
    mentions.push_back("[safetensors] bad.safetensors: ");
    expect_error([&] { parse_bytes(c.bytes, "bad.safetensors"); }, mentions);
  }
}

TEST(Safetensors, EveryTruncationOfAValidFileIsAnErrorNotACrash) {
  TempDir dir;
  std::vector<testing::TensorData> ts = {{"a", StDtype::F16, {3}, std::string(6, 'x')},
                                         {"b", StDtype::U32, {2, 2}, std::string(16, 'y')}};
  testing::write_tensors(dir.file("v.safetensors"), ts);
  const std::string bytes = testing::read_file(dir.file("v.safetensors"));
  EXPECT_NO_THROW(parse_bytes(bytes));
  for (std::size_t cut = 0; cut < bytes.size(); ++cut) {
    SCOPED_TRACE(cut);
    EXPECT_THROW(parse_bytes(bytes.substr(0, cut)), Error);
  }
}

TEST(Safetensors, RandomCorruptionsNeverCrash) {
  TempDir dir;
  std::vector<testing::TensorData> ts = {{"model.norm.weight", StDtype::F16, {8}, std::string(16, 'x')},
                                         {"lm_head.weight", StDtype::U32, {4, 2}, std::string(32, 'y')},
                                         {"lm_head.scales", StDtype::BF16, {4, 1}, std::string(8, 'z')}};
  testing::write_tensors(dir.file("v.safetensors"), ts);
  const std::string bytes = testing::read_file(dir.file("v.safetensors"));
  std::mt19937 rng(7);
  int parsed = 0, rejected = 0;
  for (int i = 0; i < 3000; ++i) {
    std::string b = bytes;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) {
      const std::size_t at = rng() % std::min<std::size_t>(b.size(), 8 + 200);
      b[at] = static_cast<char>(rng());
    }
    try {
      const StHeader h = parse_bytes(b);
      for (const auto& t : h.tensors) {  // everything it returns is inside the buffer
        ASSERT_GE(t.data, reinterpret_cast<const std::uint8_t*>(b.data()));
        ASSERT_LE(t.data + t.nbytes(), reinterpret_cast<const std::uint8_t*>(b.data()) + b.size());
      }
      ++parsed;
    } catch (const Error&) {
      ++rejected;
    }
  }
  EXPECT_GT(rejected, 0);
  EXPECT_EQ(parsed + rejected, 3000);
}

TEST(Safetensors, FileErrorsNameThePath) {
  TempDir dir;
  expect_error([&] { SafetensorsFile f(dir.file("missing.safetensors")); }, {"missing.safetensors", "cannot open"});
  expect_error([&] { SafetensorsFile f(dir.path()); }, {"not a regular file"});
  testing::write_file(dir.file("short.safetensors"), "abc");
  expect_error([&] { SafetensorsFile f(dir.file("short.safetensors")); }, {"short.safetensors", "too short"});
}

// ---- index ----------------------------------------------------------------------------------

TEST(SafetensorsIndex, ParsesAndRejectsPathsOutsideTheDirectory) {
  const auto m = parse_safetensors_index(R"({"metadata": {"total_size": 10},
      "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})", "idx");
  EXPECT_EQ(m.at("a"), "model-00001-of-00002.safetensors");
  EXPECT_EQ(m.size(), 2u);
  expect_error([] { parse_safetensors_index(R"({"weight_map": {"a": "../../etc/passwd"}})", "idx"); },
               {"[checkpoint] idx", "'a'", "not a plain file name"});
  expect_error([] { parse_safetensors_index(R"({"weight_map": {"a": "/abs.safetensors"}})", "idx"); }, {"plain file name"});
  expect_error([] { parse_safetensors_index(R"({"weight_map": {"a": ".."}})", "idx"); }, {"plain file name"});
  expect_error([] { parse_safetensors_index(R"({"weight_map": {"a": 3}})", "idx"); }, {"'a'", "file name"});
  expect_error([] { parse_safetensors_index(R"({"weights": {}})", "idx"); }, {"weight_map"});
  expect_error([] { parse_safetensors_index("nope", "idx"); }, {"not valid JSON"});
}

}  // namespace
}  // namespace qmm::model
