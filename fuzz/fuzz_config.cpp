// libFuzzer target: config.json (model/config.cpp) and model.safetensors.index.json
// (model/checkpoint.cpp) parsers on arbitrary text. Any outcome but a result or a qmm::Error is a
// bug; a parsed config must satisfy validate_config and round-trip through config_to_json.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "model/checkpoint.h"
#include "model/config.h"
#include "qmm/ops.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const qmm::model::ModelConfig c = qmm::model::parse_config(text, "fuzz/config.json");
    qmm::model::validate_config(c, "fuzz/config.json");
    const qmm::model::ModelConfig d = qmm::model::parse_config(qmm::model::config_to_json(c), "round trip");
    if (d.hidden_size != c.hidden_size || d.num_layers != c.num_layers || d.head_dim != c.head_dim ||
        d.has_quantization != c.has_quantization || d.quant_overrides.size() != c.quant_overrides.size()) {
      std::abort();
    }
    for (const auto& [path, spec] : c.quant_overrides) {
      if (d.quant_for(path) != spec) std::abort();
    }
    (void)qmm::model::model_modules(c).size();
  } catch (const qmm::Error&) {
  }
  try {
    (void)qmm::model::parse_safetensors_index(text, "fuzz/model.safetensors.index.json");
  } catch (const qmm::Error&) {
  }
  return 0;
}
