#include "model/checkpoint.h"

#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "qmm/ops.h"

namespace qmm::model {

namespace {

namespace fs = std::filesystem;

[[noreturn]] void fail(const std::string& where, const std::string& msg) {
  throw Error("[checkpoint] " + where + ": " + msg);
}

std::string read_text_file(const std::string& path, std::size_t limit) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) fail(path, "cannot be read (missing?)");
  if (!S_ISREG(st.st_mode)) fail(path, "is not a regular file");
  if (static_cast<std::uint64_t>(st.st_size) > limit) {
    fail(path, "is " + std::to_string(st.st_size) + " bytes, over the limit of " + std::to_string(limit));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "cannot be opened");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool is_file(const std::string& path) {
  std::error_code ec;
  return fs::is_regular_file(path, ec);
}

}  // namespace

std::map<std::string, std::string> parse_safetensors_index(const std::string& text, const std::string& source) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(source, std::string("not valid JSON: ") + e.what());
  }
  if (!j.is_object()) fail(source, "the top level must be a JSON object");
  auto wm = j.find("weight_map");
  if (wm == j.end()) fail(source, "missing \"weight_map\"");
  if (!wm->is_object()) fail(source, "\"weight_map\" must be an object of tensor name -> file name");
  std::map<std::string, std::string> out;
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    if (!it.value().is_string()) fail(source, "\"weight_map\" entry for '" + it.key() + "' must be a file name");
    const std::string file = it.value().get<std::string>();
    const bool plain = !file.empty() && file != "." && file != ".." && file.find('/') == std::string::npos &&
                       file.find('\\') == std::string::npos && file.find('\0') == std::string::npos &&
                       file.size() <= 255;
    if (!plain) {
      fail(source, "\"weight_map\" maps '" + it.key() + "' to '" + file.substr(0, 100) +
                       "', which is not a plain file name in the checkpoint directory");
    }
    if (it.key().empty()) fail(source, "\"weight_map\" has an empty tensor name");
    out[it.key()] = file;
  }
  return out;
}

Checkpoint::Checkpoint(const std::string& dir) : dir_(dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) fail(dir, "is not a directory");
  const std::string config_path = (fs::path(dir) / "config.json").string();
  if (!is_file(config_path)) fail(dir, "has no config.json");
  config_ = parse_config(read_text_file(config_path, 16u << 20), config_path);

  const std::string index_path = (fs::path(dir) / "model.safetensors.index.json").string();
  if (is_file(index_path)) {
    const auto map = parse_safetensors_index(read_text_file(index_path, 64u << 20), index_path);
    std::map<std::string, const SafetensorsFile*> opened;
    for (const auto& [name, file] : map) {
      auto it = opened.find(file);
      if (it == opened.end()) {
        const std::string path = (fs::path(dir) / file).string();
        if (!is_file(path)) fail(index_path, "lists '" + file + "' (for tensor '" + name + "'), which does not exist");
        files_.push_back(std::make_unique<SafetensorsFile>(path));
        it = opened.emplace(file, files_.back().get()).first;
      }
      const StTensor* t = it->second->find(name);
      if (!t) fail(index_path, "maps tensor '" + name + "' to " + it->second->path() + ", which has no such tensor");
      entries_[name] = Entry{it->second, t};
    }
    return;
  }
  std::vector<std::string> paths;
  const std::string single = (fs::path(dir) / "model.safetensors").string();
  if (is_file(single)) {
    paths.push_back(single);
  } else {
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      const std::string name = e.path().filename().string();
      if (name.rfind("model", 0) == 0 && name.size() > 12 && name.substr(name.size() - 12) == ".safetensors" &&
          e.is_regular_file(ec)) {
        paths.push_back(e.path().string());
      }
    }
    std::sort(paths.begin(), paths.end());
  }
  if (paths.empty()) fail(dir, "has no model.safetensors, model.safetensors.index.json or model*.safetensors");
  for (const auto& path : paths) {
    files_.push_back(std::make_unique<SafetensorsFile>(path));
    for (const auto& t : files_.back()->tensors()) {
      auto [it, inserted] = entries_.emplace(t.name, Entry{files_.back().get(), &t});
      if (!inserted) fail(path, "tensor '" + t.name + "' is also in " + it->second.file->path());
    }
  }
}

const Checkpoint::Entry* Checkpoint::find(const std::string& name) const {
  auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : &it->second;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  for (const auto& [k, v] : entries_) out.push_back(k);
  return out;
}

std::vector<ModuleSpec> model_modules(const ModelConfig& c) {
  std::vector<ModuleSpec> out;
  auto linear = [&](const std::string& path, std::int64_t n, std::int64_t k, bool bias) {
    ModuleSpec m;
    m.path = path;
    m.kind = ModuleKind::linear;
    m.rows = n;
    m.cols = k;
    m.bias = bias;
    m.quant = c.quant_for(path);
    if (m.quant.quantized && k % m.quant.group_size != 0) m.quant.quantized = false;
    out.push_back(m);
  };
  auto norm = [&](const std::string& path, std::int64_t n) {
    ModuleSpec m;
    m.path = path;
    m.kind = ModuleKind::norm;
    m.rows = n;
    out.push_back(m);
  };
  linear(kEmbedPath, c.vocab_size, c.hidden_size, false);
  for (std::int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = layer_prefix(l);
    norm(p + "input_layernorm", c.hidden_size);
    linear(p + "self_attn.q_proj", c.q_dim(), c.hidden_size, c.qkv_bias);
    linear(p + "self_attn.k_proj", c.kv_dim(), c.hidden_size, c.qkv_bias);
    linear(p + "self_attn.v_proj", c.kv_dim(), c.hidden_size, c.qkv_bias);
    linear(p + "self_attn.o_proj", c.hidden_size, c.q_dim(), c.o_bias);
    if (c.qk_norm) {
      norm(p + "self_attn.q_norm", c.head_dim);
      norm(p + "self_attn.k_norm", c.head_dim);
    }
    norm(p + "post_attention_layernorm", c.hidden_size);
    linear(p + "mlp.gate_proj", c.intermediate_size, c.hidden_size, c.mlp_bias);
    linear(p + "mlp.up_proj", c.intermediate_size, c.hidden_size, c.mlp_bias);
    linear(p + "mlp.down_proj", c.hidden_size, c.intermediate_size, c.mlp_bias);
  }
  norm("model.norm", c.hidden_size);
  if (!c.tie_word_embeddings.value_or(false)) linear(kLmHeadPath, c.vocab_size, c.hidden_size, false);
  return out;
}

std::vector<SafetensorsWriter::Spec> module_tensors(const ModuleSpec& m, Dtype dtype) {
  const StDtype fd = qmm_to_st_dtype(dtype);
  std::vector<SafetensorsWriter::Spec> out;
  if (m.kind == ModuleKind::norm) {
    out.push_back({m.path + ".weight", fd, {m.rows}});
    return out;
  }
  if (m.quant.quantized) {
    out.push_back({m.path + ".weight", StDtype::U32, {m.rows, m.cols * m.quant.bits / 32}});
    out.push_back({m.path + ".scales", fd, {m.rows, m.cols / m.quant.group_size}});
    out.push_back({m.path + ".biases", fd, {m.rows, m.cols / m.quant.group_size}});
  } else {
    out.push_back({m.path + ".weight", fd, {m.rows, m.cols}});
  }
  if (m.bias) out.push_back({m.path + ".bias", fd, {m.rows}});
  return out;
}

}  // namespace qmm::model
