// Built only when qmm is configured without CUDA: every CUDA request is an error.
#include "qmm/ops.h"
#include "src/core/runtime.h"

namespace qmm::detail {

namespace {
[[noreturn]] void no_cuda(const char* what) {
  throw Error(std::string("[") + what + "] this build of qmm has no CUDA backend (configure with CUDA)");
}
}  // namespace

bool cuda_runtime_available() { return false; }
CudaDeviceScope::CudaDeviceScope(int) {}
CudaDeviceScope::~CudaDeviceScope() = default;
void* cuda_malloc(std::size_t, int) { no_cuda("tensor"); }
void cuda_free(void*, int) noexcept {}
void cuda_copy(void*, const void*, std::size_t) { no_cuda("tensor"); }
void cuda_synchronize(Stream) {}
void cuda_quantize(const QuantizeProblem&, Stream, const std::string&) { no_cuda("quantize"); }
void cuda_dequantize(const DequantizeProblem&, Stream, const std::string&) { no_cuda("dequantize"); }
void cuda_quantized_matmul(const std::vector<MatmulProblem>&, Stream, const std::string&) {
  no_cuda("quantized_matmul");
}
std::vector<std::string> cuda_kernel_names(const std::string&) { return {}; }
LaunchInfo cuda_describe(const std::vector<MatmulProblem>&, const std::string&) { no_cuda("quantized_matmul"); }
int cuda_device_count() { return 0; }
DeviceInfo cuda_device_info(int) { no_cuda("device_info"); }

}  // namespace qmm::detail
