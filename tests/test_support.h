// Helpers shared by qmm's tests: poisoned buffers, bit-level comparisons, random tensors and the
// error bound used to compare matmul results.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "qmm/qmm.h"

namespace qmm::test {

/// The kernels every CPU op must agree on: the fp64 reference and the default (production) path.
inline std::vector<std::string> cpu_kernels() { return {"reference", ""}; }
inline std::string kernel_label(const std::string& k) { return k.empty() ? "default" : k; }

/// Fills a tensor with NaN (float types) or 0xDEADBEEF (uint32), so that any element an op fails
/// to write is caught, and so that a tensor an op must not write can be checked byte for byte.
inline void poison(const Tensor& t) {
  const std::int64_t n = t.numel();
  switch (t.dtype()) {
    case Dtype::float32:
      for (std::int64_t i = 0; i < n; ++i) t.data_as<float>()[i] = std::numeric_limits<float>::quiet_NaN();
      break;
    case Dtype::float16:
      for (std::int64_t i = 0; i < n; ++i) t.data_as<std::uint16_t>()[i] = 0x7e00u;
      break;
    case Dtype::bfloat16:
      for (std::int64_t i = 0; i < n; ++i) t.data_as<std::uint16_t>()[i] = 0x7fc0u;
      break;
    case Dtype::uint32:
      for (std::int64_t i = 0; i < n; ++i) t.data_as<std::uint32_t>()[i] = 0xDEADBEEFu;
      break;
  }
}

inline Tensor poisoned(const Shape& shape, Dtype dtype) {
  Tensor t = Tensor::empty(shape, dtype);
  poison(t);
  return t;
}

inline std::vector<unsigned char> bytes_of(const Tensor& t) {
  const auto* p = static_cast<const unsigned char*>(t.data());
  return std::vector<unsigned char>(p, p + t.nbytes());
}

/// Raw element i as an unsigned bit pattern (for messages).
inline std::uint32_t raw_bits(const Tensor& t, std::int64_t i) {
  if (itemsize(t.dtype()) == 2) return t.data_as<std::uint16_t>()[i];
  return t.data_as<std::uint32_t>()[i];
}

/// Element i as double (float types; uint32 as its value).
inline double element(const Tensor& t, std::int64_t i) {
  switch (t.dtype()) {
    case Dtype::float32:
      return t.data_as<float>()[i];
    case Dtype::float16:
      return float16_bits_to_float(t.data_as<std::uint16_t>()[i]);
    case Dtype::bfloat16:
      return bfloat16_bits_to_float(t.data_as<std::uint16_t>()[i]);
    case Dtype::uint32:
      return t.data_as<std::uint32_t>()[i];
  }
  return 0;
}

/// Multi-index "[a, b, c]" of flat index i in shape.
inline std::string index_string(const Shape& shape, std::int64_t i) {
  std::vector<std::int64_t> idx(shape.size());
  for (std::size_t d = shape.size(); d-- > 0;) {
    idx[d] = shape[d] ? i % shape[d] : 0;
    i = shape[d] ? i / shape[d] : 0;
  }
  std::string s = "[";
  for (std::size_t d = 0; d < idx.size(); ++d) s += (d ? ", " : "") + std::to_string(idx[d]);
  return s + "]";
}

/// Same shape, dtype and bytes; on failure names the first few differing elements.
inline ::testing::AssertionResult bitwise_equal(const Tensor& expected, const Tensor& actual) {
  if (expected.shape() != actual.shape() || expected.dtype() != actual.dtype()) {
    return ::testing::AssertionFailure() << "expected " << shape_to_string(expected.shape()) << " "
                                         << dtype_name(expected.dtype()) << ", got " << shape_to_string(actual.shape())
                                         << " " << dtype_name(actual.dtype());
  }
  int shown = 0;
  std::int64_t mismatches = 0;
  ::testing::AssertionResult r = ::testing::AssertionFailure();
  for (std::int64_t i = 0; i < expected.numel(); ++i) {
    if (raw_bits(expected, i) != raw_bits(actual, i)) {
      ++mismatches;
      if (shown++ < 8) {
        r << "\n  at " << index_string(expected.shape(), i) << ": expected " << element(expected, i) << " (0x"
          << std::hex << raw_bits(expected, i) << "), got " << std::dec << element(actual, i) << " (0x" << std::hex
          << raw_bits(actual, i) << std::dec << ")";
      }
    }
  }
  if (mismatches == 0) return ::testing::AssertionSuccess();
  return r << "\n  " << mismatches << " of " << expected.numel() << " elements differ";
}

/// Unit roundoff of a dtype (half the distance from 1 to the next value).
inline double unit_roundoff(Dtype d) {
  switch (d) {
    case Dtype::float16:
      return std::ldexp(1.0, -11);
    case Dtype::bfloat16:
      return std::ldexp(1.0, -8);
    default:
      return std::ldexp(1.0, -24);
  }
}

/// Smallest positive subnormal of a dtype: rounding a result to the dtype near zero can be off by
/// half of it in absolute terms, whatever its relative error.
inline double smallest_subnormal(Dtype d) {
  switch (d) {
    case Dtype::float16:
      return std::ldexp(1.0, -24);
    case Dtype::bfloat16:
      return std::ldexp(1.0, -133);
    default:
      return std::ldexp(1.0, -149);
  }
}

/// Random floats of a tensor: standard normal times `scale`, stored in the tensor's dtype.
inline Tensor random_tensor(const Shape& shape, Dtype dtype, std::mt19937& rng, float scale = 1.0f,
                            float offset = 0.0f) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> v(static_cast<std::size_t>(numel(shape)));
  for (auto& e : v) e = nd(rng) * scale + offset;
  return Tensor::from_floats(v, shape, dtype);
}

/// The exact products of one quantized_matmul output in double, for error bounds: for out[m, n],
/// sum_k |x[m,k]| * (|s q| + |b|) over the weights it reads (the magnitude every partial sum and
/// every s*q, +b, *x rounding is relative to).
struct MatmulMagnitudes {
  std::vector<double> exact;      // sum_k x * (s q + b), same layout as the 2-D output (M, N)
  std::vector<double> magnitude;  // sum_k |x| (|s q| + |b|)
};

/// x (M, K) of dtype xd, weight (rows, cols) quantized; transpose as in the op.
inline MatmulMagnitudes matmul_magnitudes(const Tensor& x, const Tensor& w_q, const Tensor& scales,
                                          const Tensor& biases, bool transpose, int group_size, int bits,
                                          std::int64_t M, std::int64_t K, std::int64_t N,
                                          std::int64_t x_offset = 0, std::int64_t w_index = 0) {
  const std::int64_t rows = transpose ? N : K, cols = transpose ? K : N;
  const std::int64_t words = cols * bits / 32, groups = cols / group_size;
  const auto* wq = w_q.data_as<std::uint32_t>() + w_index * rows * words;
  const std::int64_t sg0 = w_index * rows * groups;
  auto q_at = [&](std::int64_t r, std::int64_t c) {
    const std::int64_t bit = c * bits;
    const std::uint64_t lo = wq[r * words + bit / 32];
    const std::uint64_t hi = (bit % 32 + bits > 32) ? wq[r * words + bit / 32 + 1] : 0;
    return static_cast<std::uint32_t>(((lo | (hi << 32)) >> (bit % 32)) & ((1u << bits) - 1u));
  };
  MatmulMagnitudes r;
  r.exact.assign(static_cast<std::size_t>(M * N), 0.0);
  r.magnitude.assign(static_cast<std::size_t>(M * N), 0.0);
  for (std::int64_t m = 0; m < M; ++m) {
    for (std::int64_t n = 0; n < N; ++n) {
      double e = 0, a = 0;
      for (std::int64_t k = 0; k < K; ++k) {
        const std::int64_t wr = transpose ? n : k, wc = transpose ? k : n;
        const std::int64_t gi = sg0 + wr * groups + wc / group_size;
        const double s = element(scales, gi), b = element(biases, gi);
        const double sq = s * q_at(wr, wc);
        const double xv = element(x, x_offset + m * K + k);
        e += xv * (sq + b);
        a += std::fabs(xv) * (std::fabs(sq) + std::fabs(b));
      }
      r.exact[static_cast<std::size_t>(m * N + n)] = e;
      r.magnitude[static_cast<std::size_t>(m * N + n)] = a;
    }
  }
  return r;
}

}  // namespace qmm::test

namespace qmm::test {

/// A contiguous view of slice `index` of t's leading dims, with shape `inner` (the trailing dims).
inline TensorView slice_view(const Tensor& t, std::int64_t index, const Shape& inner) {
  const std::int64_t n = numel(inner);
  auto* p = static_cast<char*>(t.data()) + static_cast<std::size_t>(index * n) * itemsize(t.dtype());
  return TensorView(p, inner, t.dtype());
}

/// Bound on |production - reference| for one quantized_matmul output whose exact value is `exact`
/// and whose magnitude sum_k |x| (|s q| + |b|) is `magnitude`:
///   - the reference is the fp64 sum (error ~K 2^-53, negligible) rounded once: u_out |S|;
///   - a float32-accumulating path errs by at most gamma_{K+3}(2^-24) * magnitude before its own
///     rounding (per group: g products and sums for sum x q, one for sum x, s*, b*, +; then one
///     addition per group: at most K + 3 roundings on any path, each relative to a part of the
///     magnitude), then rounds once: u_out (|S| + that error);
///   - near zero, subnormal results can be off by half the smallest subnormal per rounding.
inline double float32_path_tolerance(std::int64_t K, Dtype out_dtype, double exact, double magnitude) {
  const double u = std::ldexp(1.0, -24), n = static_cast<double>(K) + 3.0;
  const double gamma = n * u / (1.0 - n * u);
  const double uo = unit_roundoff(out_dtype);
  return (1.0 + uo) * gamma * magnitude + 2.0 * uo * std::fabs(exact) + 2.0 * smallest_subnormal(out_dtype) +
         n * std::ldexp(1.0, -149);
}

}  // namespace qmm::test
