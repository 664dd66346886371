// The CPU backend: the fp64 reference (src/cpu/reference.cpp) and the production path
// (src/cpu/quantize_threaded.cpp, src/cpu/quantized_matmul_cpu.cpp), behind one entry per op.
#pragma once

#include <string>
#include <vector>

#include "qmm/device.h"
#include "qmm/ops.h"
#include "src/core/problem.h"

namespace qmm::detail {

void cpu_quantize(const QuantizeProblem& p, const std::string& kernel);
void cpu_dequantize(const DequantizeProblem& p, const std::string& kernel);
void cpu_quantized_matmul(const std::vector<MatmulProblem>& problems, const std::string& kernel);
std::vector<std::string> cpu_kernel_names(const std::string& op);
LaunchInfo cpu_describe(const std::vector<MatmulProblem>& problems, const std::string& kernel);
DeviceInfo cpu_device_info();
/// Throws qmm::Error if `kernel` is not "" and not a CPU kernel name of `op`.
void cpu_check_kernel(const std::string& op, const std::string& kernel);

}  // namespace qmm::detail
