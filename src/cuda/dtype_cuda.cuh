// Device-side loads and stores of qmm's float dtypes through float, matching the host
// conversions in src/core/dtype.cpp (round to nearest even).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "qmm/dtype.h"

namespace qmm::cuda {

__device__ __forceinline__ float load_as_float(const void* base, Dtype dtype, std::int64_t i) {
  switch (dtype) {
    case Dtype::float16:
      return __half2float(static_cast<const __half*>(base)[i]);
    case Dtype::bfloat16:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]);
    default:
      return static_cast<const float*>(base)[i];
  }
}

__device__ __forceinline__ void store_from_float(void* base, Dtype dtype, std::int64_t i, float v) {
  switch (dtype) {
    case Dtype::float16:
      static_cast<__half*>(base)[i] = __float2half_rn(v);
      break;
    case Dtype::bfloat16:
      static_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16_rn(v);
      break;
    default:
      static_cast<float*>(base)[i] = v;
      break;
  }
}

/// v rounded to the nearest value of dtype, widened back to float.
__device__ __forceinline__ float round_to(Dtype dtype, float v) {
  switch (dtype) {
    case Dtype::float16:
      return __half2float(__float2half_rn(v));
    case Dtype::bfloat16:
      return __bfloat162float(__float2bfloat16_rn(v));
    default:
      return v;
  }
}

}  // namespace qmm::cuda
