// The reference: scalar, fp64 accumulation, written to be obviously correct and never tuned.
// Every other path is tested against it.
#pragma once

#include "src/core/problem.h"

namespace qmm::detail::reference {

void quantize(const QuantizeProblem& p);
void dequantize(const DequantizeProblem& p);
/// Each output is sum_k x[m,k] * (scale * q + bias) in double, with the stored scale and bias,
/// rounded once to the output dtype.
void quantized_matmul(const MatmulProblem& p);

}  // namespace qmm::detail::reference
