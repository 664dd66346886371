// Scalar loads and stores of qmm's float dtypes on the host, through float. Shared by the CPU
// reference, the CPU production path and the tensor helpers.
#pragma once

#include <cstdint>
#include <cstring>

#include "qmm/dtype.h"

namespace qmm::cpu {

inline float load(const void* base, Dtype dtype, std::int64_t i) {
  switch (dtype) {
    case Dtype::float32:
      return static_cast<const float*>(base)[i];
    case Dtype::float16:
      return float16_bits_to_float(static_cast<const std::uint16_t*>(base)[i]);
    case Dtype::bfloat16:
      return bfloat16_bits_to_float(static_cast<const std::uint16_t*>(base)[i]);
    case Dtype::uint32:
      return static_cast<float>(static_cast<const std::uint32_t*>(base)[i]);
  }
  return 0.0f;
}

inline void store(void* base, Dtype dtype, std::int64_t i, float v) {
  switch (dtype) {
    case Dtype::float32:
      static_cast<float*>(base)[i] = v;
      break;
    case Dtype::float16:
      static_cast<std::uint16_t*>(base)[i] = float_to_float16_bits(v);
      break;
    case Dtype::bfloat16:
      static_cast<std::uint16_t*>(base)[i] = float_to_bfloat16_bits(v);
      break;
    case Dtype::uint32:
      static_cast<std::uint32_t*>(base)[i] = static_cast<std::uint32_t>(v);
      break;
  }
}

/// v rounded to the nearest value representable in dtype (round to nearest even).
inline float round_to(Dtype dtype, float v) {
  switch (dtype) {
    case Dtype::float16:
      return float16_bits_to_float(float_to_float16_bits(v));
    case Dtype::bfloat16:
      return bfloat16_bits_to_float(float_to_bfloat16_bits(v));
    default:
      return v;
  }
}

}  // namespace qmm::cpu
