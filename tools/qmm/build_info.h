// The build's configuration as `qmm info` and the bench reports show it.
#pragma once

#include <nlohmann/json.hpp>

namespace qmm::bench {

/// {"version", "cuda" (bool), "compiler", "build_type", "cuda_architectures", "cuda_versions"}.
nlohmann::json build_info();

}  // namespace qmm::bench
