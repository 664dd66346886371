// Turning run-time problem parameters (activation dtype, bit width, token tiles) into the
// template arguments of a kernel instantiation, once, for every tensor-core kernel family.
// Each helper calls f with a tag carrying the compile-time value and returns what f returns
// (typically a kernel function pointer), so launch and occupancy queries share one resolver.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <stdexcept>
#include <string>
#include <type_traits>

#include "qmm/dtype.h"

namespace qmm::cuda {

template <typename T>
struct TypeTag {
  using type = T;
};

/// f(TypeTag<__half>) or f(TypeTag<__nv_bfloat16>) for 16-bit activations.
template <typename F>
decltype(auto) with_16bit_dtype(Dtype x_dtype, F&& f) {
  if (x_dtype == Dtype::bfloat16) return f(TypeTag<__nv_bfloat16>{});
  if (x_dtype == Dtype::float16) return f(TypeTag<__half>{});
  throw std::logic_error("a tensor-core launcher got activations that are not 16-bit");
}

/// f(std::integral_constant<int, B>{}) for B = bits, one of 2, 3, 4, 5, 6, 8.
template <typename F>
decltype(auto) with_bits(int bits, F&& f) {
  switch (bits) {
    case 2:
      return f(std::integral_constant<int, 2>{});
    case 3:
      return f(std::integral_constant<int, 3>{});
    case 4:
      return f(std::integral_constant<int, 4>{});
    case 5:
      return f(std::integral_constant<int, 5>{});
    case 6:
      return f(std::integral_constant<int, 6>{});
    case 8:
      return f(std::integral_constant<int, 8>{});
    default:
      throw std::logic_error("a tensor-core launcher got unsupported bits: " + std::to_string(bits));
  }
}

/// f(std::integral_constant<int, T>{}) for T = token_tiles, which must be one of Tiles (only
/// those are instantiated). f's result must be default-constructible (a kernel pointer).
template <int... Tiles, typename F>
auto with_token_tiles(int token_tiles, F&& f) {
  decltype(f(std::integral_constant<int, 1>{})) result{};
  const bool found =
      ((token_tiles == Tiles ? (result = f(std::integral_constant<int, Tiles>{}), true) : false) || ...);
  if (!found) throw std::logic_error("a tensor-core launcher got an unsupported token tile count");
  return result;
}

}  // namespace qmm::cuda
