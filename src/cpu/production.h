// The CPU production path: multi-threaded, vectorised, bit-identical to the reference for
// quantize and dequantize; quantized_matmul streams each weight once for all M rows.
#pragma once

#include "src/core/problem.h"

namespace qmm::detail::cpu_production {

void quantize(const QuantizeProblem& p);
void dequantize(const DequantizeProblem& p);
void quantized_matmul(const MatmulProblem& p);

}  // namespace qmm::detail::cpu_production
