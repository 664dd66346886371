// An independent fp64 reference of the decoder forward pass, written plainly and separately from
// model/forward.cpp (no KV cache, no fusion, no shared kernels): the judge of the tests.
#pragma once

#include <cstdint>
#include <vector>

#include "model/checkpoint.h"

namespace qmm::model {

/// Logits of every position of `tokens` (tokens.size() x vocab, row-major), computed in double
/// with full causal attention from the checkpoint's tensors (quantized ones dequantized with
/// qmm::dequantize).
std::vector<double> reference_forward(const Checkpoint& checkpoint, const std::vector<std::int32_t>& tokens);

}  // namespace qmm::model
