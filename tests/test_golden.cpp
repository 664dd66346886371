// qmm against golden vectors written by real MLX (scripts/make_golden.py, mlx[cpu]): quantize and
// dequantize must match bit for bit on every CPU kernel; quantized_matmul within the error bound
// derived below.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>
#include <tuple>

#include "qmm/qmm.h"
#include "tests/golden_data.h"
#include "tests/test_support.h"

namespace qmm::test {
namespace {

TEST(GoldenSet, LoadsAndCoversEveryConfiguration) {
  const GoldenSet* set = nullptr;
  ASSERT_NO_THROW(set = &golden_set()) << "golden directory: " << golden_dir();
  RecordProperty("mlx_version", set->mlx_version);
  RecordProperty("golden_dir", set->dir);
  std::set<std::tuple<int, int, Dtype>> seen;
  for (const auto& c : set->cases) seen.insert({c.bits, c.group_size, c.dtype});
  for (int bits : {2, 3, 4, 5, 6, 8}) {
    for (int g : {32, 64, 128}) {
      for (Dtype d : {Dtype::float32, Dtype::float16, Dtype::bfloat16}) {
        EXPECT_TRUE(seen.count({bits, g, d})) << "no golden case for bits=" << bits << " group_size=" << g << " "
                                              << dtype_name(d);
      }
    }
  }
}

class Golden : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {
 protected:
  const GoldenCase& gc() const { return golden_case(std::get<0>(GetParam())); }
  CallOptions options() const {
    CallOptions o;
    o.kernel = std::get<1>(GetParam());
    return o;
  }
  /// The nasty-group kind of (row, group) of a 2-D golden weight, for failure messages.
  std::string kind_of(std::int64_t flat_group) const {
    const auto& c = gc();
    const std::int64_t groups = c.scales.shape().back();
    for (const auto& n : c.nasty_groups) {
      if (n.row * groups + n.group == flat_group) return n.kind;
    }
    return "random";
  }
};

/// Per-group diagnosis of a scales/biases mismatch: which nasty kinds are affected.
std::string mismatched_kinds(const Tensor& expected, const Tensor& actual,
                             const std::function<std::string(std::int64_t)>& kind_of) {
  std::set<std::string> kinds;
  for (std::int64_t i = 0; i < expected.numel(); ++i) {
    if (raw_bits(expected, i) != raw_bits(actual, i)) kinds.insert(kind_of(i));
  }
  std::string s;
  for (const auto& k : kinds) s += (s.empty() ? "" : ", ") + k;
  return s.empty() ? "none" : s;
}

TEST_P(Golden, QuantizeMatchesMlxBitForBit) {
  const auto& c = gc();
  const auto kind = [this](std::int64_t g) { return kind_of(g); };
  // Allocating form.
  const QuantizedWeights q = quantize(c.w, c.group_size, c.bits, options());
  EXPECT_TRUE(bitwise_equal(c.scales, q.scales)) << "scales; group kinds: " << mismatched_kinds(c.scales, q.scales, kind);
  EXPECT_TRUE(bitwise_equal(c.biases, q.biases)) << "biases; group kinds: " << mismatched_kinds(c.biases, q.biases, kind);
  EXPECT_TRUE(bitwise_equal(c.w_q, q.w_q)) << "w_q";
  // Into poisoned buffers: every word and every scale must be written.
  const Tensor w_q = poisoned(c.w_q.shape(), Dtype::uint32);
  const Tensor scales = poisoned(c.scales.shape(), c.dtype);
  const Tensor biases = poisoned(c.biases.shape(), c.dtype);
  quantize_into(c.w, w_q, scales, biases, c.group_size, c.bits, options());
  EXPECT_TRUE(bitwise_equal(c.w_q, w_q)) << "quantize_into w_q";
  EXPECT_TRUE(bitwise_equal(c.scales, scales)) << "quantize_into scales";
  EXPECT_TRUE(bitwise_equal(c.biases, biases)) << "quantize_into biases";
}

TEST_P(Golden, DequantizeMatchesMlxBitForBit) {
  const auto& c = gc();
  const Tensor d = dequantize(c.w_q, c.scales, c.biases, c.group_size, c.bits, std::nullopt, options());
  EXPECT_TRUE(bitwise_equal(c.dequantized, d));
  const Tensor out = poisoned(c.dequantized.shape(), c.dtype);
  dequantize_into(c.w_q, c.scales, c.biases, out, c.group_size, c.bits, options());
  EXPECT_TRUE(bitwise_equal(c.dequantized, out)) << "dequantize_into";
}

// ---- quantized_matmul tolerance ------------------------------------------------------------
//
// Let t_k = x_k (s q_k + b) and S = sum_k t_k over the K products of one output, with the stored
// x, s, b (S is computed here in double; its own error is ~K * 2^-53, negligible). Let
// A = sum_k |x_k| (|s q_k| + |b|): every rounding below is relative to a quantity bounded by A.
//
// MLX 0.32 CPU (the golden judge) computes each term in the input dtype T with up to three
// roundings (s*q, +b, *x) and adds it to a running sum in T (one more rounding), or, for
// float32 with 2/4/8 bits and transpose=True, accumulates in float32 SIMD lanes. With unit
// roundoff u of T, its error is bounded by
//   - deterministically, for any summation order: gamma_{K+3} A, gamma_n = n u / (1 - n u)
//     (Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed., eq. 3.4 and 4.4);
//   - probabilistically (Higham & Mary, SIAM J. Sci. Comput. 41(5), 2019, Thm 3.1), modelling
//     rounding errors as independent and mean-zero: gammã_{K+3}(lambda) A with
//     gammã_n(lambda) = exp(lambda sqrt(n) u + n u^2 / (1 - u)) - 1, which holds with
//     probability >= 1 - 2 n exp(-lambda^2 (1 - u)^2 / 2). lambda = 8 puts that failure
//     probability below 1e-10 per output for K <= 2048.
// The deterministic bound is the smaller one for float32 (n u << 1) and is useless for bfloat16
// (K u ~ 1 at K = 256), so the tolerance takes the smaller of the two.
// qmm adds its own error: the reference rounds the fp64 sum once to the output dtype
// (u_out |S|); the production path accumulates in float32 (gamma_{K+2}(2^-24) A, covering
// s * sum x q + b * sum x per group) and rounds once (u_out |S|). Near zero the relative model
// breaks for subnormal results: every one of the K + 4 roundings in T and the output rounding can
// be off by half the smallest subnormal, so (K + 5) * subnormal_T is added.
//
//   tol = min(gamma_{K+3}(u_T), gammã_{K+3}(8, u_T)) A + gamma_{K+2}(2^-24) A + 2 u_out |S|
//         + (K + 5) subnormal_T
double gamma_n(double n, double u) { return n * u / (1.0 - n * u); }
double gamma_prob(double n, double u, double lambda) {
  return std::expm1(lambda * std::sqrt(n) * u + n * u * u / (1.0 - u));
}
double matmul_tolerance(std::int64_t K, Dtype t, Dtype out_dtype, double exact, double magnitude) {
  const double n = static_cast<double>(K) + 3.0;
  const double u = unit_roundoff(t);
  const double deterministic = n * u < 1.0 ? gamma_n(n, u) : INFINITY;
  const double mlx = std::min(deterministic, gamma_prob(n, u, 8.0));
  const double qmm = gamma_n(static_cast<double>(K) + 2.0, std::ldexp(1.0, -24));
  return (mlx + qmm) * magnitude + 2.0 * unit_roundoff(out_dtype) * std::fabs(exact) +
         (static_cast<double>(K) + 5.0) * smallest_subnormal(t);
}

TEST_P(Golden, QuantizedMatmulMatchesMlxWithinBound) {
  const auto& c = gc();
  double worst_ratio = 0;
  for (const auto& gm : c.matmuls) {
    SCOPED_TRACE(gm.label + (gm.transpose ? " transpose=true" : " transpose=false"));
    const Tensor out = poisoned(gm.out.shape(), gm.out.dtype());
    quantized_matmul_into(gm.x, c.w_q, c.scales, c.biases, out, gm.transpose, c.group_size, c.bits, options());
    const Tensor alloc = quantized_matmul(gm.x, c.w_q, c.scales, c.biases, gm.transpose, c.group_size, c.bits, options());
    EXPECT_TRUE(bitwise_equal(out, alloc)) << "quantized_matmul and quantized_matmul_into differ";
    // Walk the batches the same way MLX broadcasts them: x (..., M, K), w (..., rows, cols).
    const std::int64_t K = gm.x.shape().back();
    const std::int64_t M = gm.x.ndim() >= 2 ? gm.x.shape()[gm.x.ndim() - 2] : 1;
    const std::int64_t N = out.shape().back();
    const Shape w_shape = c.w_q.shape();
    const std::int64_t w_batches = numel(Shape(w_shape.begin(), w_shape.end() - 2));
    const std::int64_t x_batches = gm.x.numel() / (M * K);
    const std::int64_t out_batches = out.numel() / (M * N);
    // The golden shapes broadcast x's and w's batches as out[i, j] = x[i or 0] @ w[j]: the
    // batch of w is the fastest-varying part of the output batch.
    for (std::int64_t b = 0; b < out_batches; ++b) {
      const std::int64_t wi = w_batches == 1 ? 0 : b % w_batches;
      const std::int64_t xi = x_batches == 1 ? 0 : (w_batches == 1 ? b : b / w_batches);
      const MatmulMagnitudes mags =
          matmul_magnitudes(gm.x, c.w_q, c.scales, c.biases, gm.transpose, c.group_size, c.bits, M, K, N, xi * M * K, wi);
      for (std::int64_t i = 0; i < M * N; ++i) {
        const std::int64_t o = b * M * N + i;
        const double expected = element(gm.out, o), got = element(out, o);
        const double tol = matmul_tolerance(K, c.dtype, out.dtype(), mags.exact[i], mags.magnitude[i]);
        const double err = std::fabs(got - expected);
        ASSERT_TRUE(err <= tol) << "out" << index_string(out.shape(), o) << ": qmm " << got << ", MLX " << expected
                                << ", exact " << mags.exact[i] << ", |error| " << err << " > tolerance " << tol;
        worst_ratio = std::max(worst_ratio, err / tol);
      }
    }
  }
  RecordProperty("worst_error_over_tolerance", std::to_string(worst_ratio));
}

std::string golden_param_name(const ::testing::TestParamInfo<Golden::ParamType>& info) {
  return std::get<0>(info.param) + "_" + kernel_label(std::get<1>(info.param));
}

INSTANTIATE_TEST_SUITE_P(Mlx, Golden,
                         ::testing::Combine(::testing::ValuesIn(golden_case_names()),
                                            ::testing::ValuesIn(cpu_kernels())),
                         golden_param_name);

}  // namespace
}  // namespace qmm::test
