#include "tools/qmm/build_info.h"

#include "qmm/version.h"

#ifdef QMM_HAVE_CUDA
#include "tools/qmm/bench_cuda.h"
#endif

#ifndef QMM_BUILD_TYPE
#define QMM_BUILD_TYPE "unknown"
#endif
#ifndef QMM_CUDA_ARCHITECTURES
#define QMM_CUDA_ARCHITECTURES ""
#endif

namespace qmm::bench {

nlohmann::json build_info() {
  nlohmann::json j;
  j["version"] = QMM_VERSION_STRING;
#if defined(__clang__)
  j["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  j["compiler"] = std::string("gcc ") + __VERSION__;
#else
  j["compiler"] = "unknown";
#endif
  j["build_type"] = QMM_BUILD_TYPE;
#ifdef QMM_HAVE_CUDA
  j["cuda"] = true;
  j["cuda_architectures"] = QMM_CUDA_ARCHITECTURES;
  try {
    j["cuda_versions"] = gpu::Context::versions();
  } catch (const std::exception& e) {
    j["cuda_versions"] = std::string("unavailable: ") + e.what();
  }
#else
  j["cuda"] = false;
#endif
  return j;
}

}  // namespace qmm::bench
