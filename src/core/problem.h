// Validated problems handed from the op front end (src/core/ops.cpp) to a backend. Everything
// here has passed validation: shapes agree, pointers are non-null, memory is contiguous.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "qmm/dtype.h"

namespace qmm::detail {

/// One quantized matrix of rows x cols logical elements, grouped along cols. For
/// transpose=true it is W (N, K); for transpose=false it is W (K, N).
struct QuantizedMatrix {
  const std::uint32_t* w_q = nullptr;  // rows x packed_words(cols, bits)
  const void* scales = nullptr;        // rows x cols/group_size, dtype
  const void* biases = nullptr;
  Dtype dtype = Dtype::float16;  // dtype of scales and biases
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  int bits = 4;
  int group_size = 64;
};

struct QuantizeProblem {
  const void* w = nullptr;  // rows x cols, dtype
  Dtype dtype = Dtype::float32;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  int bits = 4;
  int group_size = 64;
  std::uint32_t* w_q = nullptr;
  void* scales = nullptr;
  void* biases = nullptr;
};

struct DequantizeProblem {
  QuantizedMatrix w;
  void* out = nullptr;  // rows x cols
  Dtype out_dtype = Dtype::float16;
};

/// out (M, N) = x (M, K) @ W^T (transpose) or x @ W, for one weight matrix. Batched calls are a
/// list of these (see MatmulBatch).
struct MatmulProblem {
  const void* x = nullptr;  // M x K, x_dtype
  Dtype x_dtype = Dtype::float16;
  void* out = nullptr;  // M x N, out_dtype
  Dtype out_dtype = Dtype::float16;
  std::int64_t M = 0;
  std::int64_t N = 0;
  std::int64_t K = 0;
  bool transpose = true;
  QuantizedMatrix w;
};

}  // namespace qmm::detail
