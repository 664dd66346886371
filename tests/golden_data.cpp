#include "tests/golden_data.h"

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <mutex>
#include <stdexcept>

#include <nlohmann/json.hpp>

#ifndef QMM_GOLDEN_DEFAULT_DIR
#error "QMM_GOLDEN_DEFAULT_DIR must name the committed golden directory (set by tests/CMakeLists.txt)"
#endif

namespace qmm::test {
namespace {

using nlohmann::json;

std::vector<char> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open golden file " + path);
  return std::vector<char>(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

Tensor load_array(const json& j, const std::vector<char>& blob, const std::string& where) {
  const auto offset = j.at("offset").get<std::size_t>();
  const auto nbytes = j.at("nbytes").get<std::size_t>();
  const Shape shape = j.at("shape").get<Shape>();
  const Dtype dtype = parse_dtype(j.at("dtype").get<std::string>());
  Tensor t = Tensor::empty(shape, dtype);
  if (t.nbytes() != nbytes || offset + nbytes > blob.size()) {
    throw std::runtime_error("golden array " + where + ": " + std::to_string(nbytes) + " bytes at " +
                             std::to_string(offset) + " do not fit shape " + shape_to_string(shape) + " " +
                             dtype_name(dtype) + " in a blob of " + std::to_string(blob.size()) + " bytes");
  }
  // The blob is little-endian, like every machine qmm targets (x86-64, aarch64, CUDA hosts).
  if (nbytes) std::memcpy(t.data(), blob.data() + offset, nbytes);
  return t;
}

GoldenSet load(const std::string& dir) {
  const std::vector<char> text = read_file(dir + "/golden.json");
  const json index = json::parse(text.begin(), text.end());
  const std::vector<char> blob = read_file(dir + "/" + index.at("blob").get<std::string>());
  GoldenSet set;
  set.dir = dir;
  set.mlx_version = index.at("mlx_version").get<std::string>();
  for (const auto& c : index.at("cases")) {
    GoldenCase gc;
    gc.name = c.at("name").get<std::string>();
    gc.bits = c.at("bits").get<int>();
    gc.group_size = c.at("group_size").get<int>();
    gc.dtype = parse_dtype(c.at("dtype").get<std::string>());
    gc.w = load_array(c.at("w"), blob, gc.name + ".w");
    gc.w_q = load_array(c.at("w_q"), blob, gc.name + ".w_q");
    gc.scales = load_array(c.at("scales"), blob, gc.name + ".scales");
    gc.biases = load_array(c.at("biases"), blob, gc.name + ".biases");
    gc.dequantized = load_array(c.at("dequantized"), blob, gc.name + ".dequantized");
    for (const auto& n : c.at("nasty_groups")) {
      gc.nasty_groups.push_back({n.at("row").get<std::int64_t>(), n.at("group").get<std::int64_t>(),
                                 n.at("kind").get<std::string>()});
    }
    for (const auto& m : c.at("matmuls")) {
      GoldenMatmul gm;
      gm.label = m.at("label").get<std::string>();
      gm.transpose = m.at("transpose").get<bool>();
      gm.x = load_array(m.at("x"), blob, gc.name + " " + gm.label + ".x");
      gm.out = load_array(m.at("out"), blob, gc.name + " " + gm.label + ".out");
      gc.matmuls.push_back(std::move(gm));
    }
    set.cases.push_back(std::move(gc));
  }
  if (set.cases.empty()) throw std::runtime_error("golden set " + dir + " has no cases");
  return set;
}

}  // namespace

std::string golden_dir() {
  const char* env = std::getenv("QMM_GOLDEN_DIR");
  return env && *env ? std::string(env) : std::string(QMM_GOLDEN_DEFAULT_DIR);
}

const GoldenSet& golden_set() {
  static std::once_flag once;
  static std::unique_ptr<GoldenSet> set;
  std::call_once(once, [] { set = std::make_unique<GoldenSet>(load(golden_dir())); });
  return *set;
}

std::vector<std::string> golden_case_names() {
  std::vector<std::string> names;
  try {
    for (const auto& c : golden_set().cases) names.push_back(c.name);
  } catch (const std::exception&) {
    // Reported by GoldenSet.Loads.
  }
  return names;
}

const GoldenCase& golden_case(const std::string& name) {
  for (const auto& c : golden_set().cases) {
    if (c.name == name) return c;
  }
  throw std::runtime_error("no golden case " + name);
}

}  // namespace qmm::test
