// The CPU production path: multi-threaded, vectorised, bit-identical to the reference for
// quantize and dequantize; quantized_matmul streams each weight once for all M rows.
//
// The library is built for the baseline instruction set; the AVX-512 code carries per-function
// target attributes and runs only where the CPU has it (AVX-512 F/BW/VL/DQ/VBMI, FMA, F16C);
// elsewhere quantized_matmul runs generic C++ compiled for AVX2 + FMA (where present) or for the
// baseline. QMM_CPU_ISA=avx2 or QMM_CPU_ISA=portable in the environment lowers the choice (read
// on every call, so a test can cover every path in one process).
#pragma once

#include <cstdint>

#include "src/core/problem.h"

namespace qmm::detail::cpu_production {

void quantize(const QuantizeProblem& p);
void dequantize(const DequantizeProblem& p);
void quantized_matmul(const MatmulProblem& p);

/// Whether the AVX-512 code may run (the CPU has it and QMM_CPU_ISA does not say "portable").
bool cpu_has_avx512();
/// `count` elements of a float dtype as float32 (exact; F16C/AVX-512 where available).
void convert_to_float(const void* src, Dtype dtype, std::int64_t count, float* dst);

}  // namespace qmm::detail::cpu_production
