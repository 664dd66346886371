// libFuzzer target: the safetensors header parser (model/safetensors.cpp) on arbitrary bytes.
// Any outcome but a parsed header or a qmm::Error is a bug (ASan/UBSan catch the rest); every
// tensor a parsed header returns must lie inside the input.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "model/safetensors.h"
#include "qmm/ops.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const qmm::model::StHeader h = qmm::model::parse_safetensors(data, size, "fuzz.safetensors");
    unsigned acc = 0;
    for (const auto& t : h.tensors) {
      if (t.data < data || t.data + t.nbytes() > data + size) std::abort();
      if (t.nbytes() > 0) acc += t.data[0] + t.data[t.nbytes() - 1];  // touched: ASan checks the bounds
    }
    volatile unsigned sink = acc;
    (void)sink;
  } catch (const qmm::Error&) {
  }
  return 0;
}
