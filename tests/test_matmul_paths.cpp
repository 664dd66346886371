// The CPU production quantized_matmul against the fp64 reference on fresh random data: every
// bits x group x dtype, both transposes, M = 1..17, N not a multiple of 8, batched and broadcast
// shapes, 1-D x and mixed dtypes. Outputs are poisoned (NaN) before every run. The expected
// value of a batched call is computed slice by slice through the 2-D API, so the front end's
// broadcasting is checked independently.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <tuple>

#include "qmm/qmm.h"
#include "tests/test_support.h"

namespace qmm::test {
namespace {

using Config = std::tuple<int, int, Dtype>;  // bits, group_size, dtype

class MatmulPaths : public ::testing::TestWithParam<Config> {
 protected:
  int bits() const { return std::get<0>(GetParam()); }
  int group() const { return std::get<1>(GetParam()); }
  Dtype dtype() const { return std::get<2>(GetParam()); }

  /// A random quantized weight (batch..., rows, cols), quantized by the reference.
  QuantizedWeights weight(const Shape& shape, std::mt19937& rng) const {
    CallOptions ref;
    ref.kernel = "reference";
    return quantize(random_tensor(shape, dtype(), rng, 0.5f, 0.05f), group(), bits(), ref);
  }

  /// Runs the production path (default kernel) into a poisoned output, then checks every output
  /// slice against the reference run on the corresponding 2-D slices of x and w.
  /// x_index(b) and w_index(b) give the x and w slices of output batch b.
  template <typename XIndex, typename WIndex>
  void check(const Tensor& x, const QuantizedWeights& q, bool transpose, const Shape& out_shape, XIndex x_index,
             WIndex w_index) const {
    const auto [shape, out_dtype] = quantized_matmul_output(x, q.w_q, q.scales, q.biases, transpose, group(), bits());
    ASSERT_EQ(shape, out_shape);
    ASSERT_EQ(out_dtype, promote_types(x.dtype(), dtype()));
    const Tensor out = poisoned(out_shape, out_dtype);
    quantized_matmul_into(x, q.w_q, q.scales, q.biases, out, transpose, group(), bits());

    const std::int64_t K = x.shape().back();
    const std::int64_t M = x.ndim() >= 2 ? x.shape()[x.ndim() - 2] : 1;
    const std::int64_t N = out_shape.back();
    const Shape wq_inner(q.w_q.shape().end() - 2, q.w_q.shape().end());
    const Shape s_inner(q.scales.shape().end() - 2, q.scales.shape().end());
    const std::int64_t batches = out.numel() / (M * N);
    CallOptions ref;
    ref.kernel = "reference";
    for (std::int64_t b = 0; b < batches; ++b) {
      const std::int64_t xi = x_index(b), wi = w_index(b);
      const Tensor expected = Tensor::empty({M, N}, out_dtype);
      quantized_matmul_into(slice_view(x, xi, {M, K}), slice_view(q.w_q, wi, wq_inner), slice_view(q.scales, wi, s_inner),
                            slice_view(q.biases, wi, s_inner), expected, transpose, group(), bits(), ref);
      const MatmulMagnitudes mags =
          matmul_magnitudes(x, q.w_q, q.scales, q.biases, transpose, group(), bits(), M, K, N, xi * M * K, wi);
      for (std::int64_t i = 0; i < M * N; ++i) {
        const double want = element(expected, i), got = element(out, b * M * N + i);
        // The reference itself: the fp64 sum rounded to the output dtype (through float32, so
        // half types may see a double rounding: u_out + 2^-24).
        ASSERT_LE(std::fabs(want - mags.exact[i]),
                  (unit_roundoff(out_dtype) + std::ldexp(1.0, -24)) * std::fabs(mags.exact[i]) +
                      smallest_subnormal(out_dtype))
            << "reference out" << index_string(out_shape, b * M * N + i);
        const double tol = float32_path_tolerance(K, out_dtype, mags.exact[i], mags.magnitude[i]);
        ASSERT_TRUE(std::fabs(got - want) <= tol)
            << "out" << index_string(out_shape, b * M * N + i) << " (x " << shape_to_string(x.shape()) << ", w_q "
            << shape_to_string(q.w_q.shape()) << ", transpose=" << transpose << "): production " << got
            << ", reference " << want << ", tolerance " << tol;
      }
    }
  }
};

constexpr std::int64_t kRows = 13;  // N for transpose=true, K for transpose=false: not a multiple of 8

TEST_P(MatmulPaths, EveryMFrom1To17) {
  std::mt19937 rng(1000 * bits() + group() + static_cast<int>(dtype()));
  const std::int64_t cols = 2 * group();
  const QuantizedWeights q = weight({kRows, cols}, rng);
  for (bool transpose : {true, false}) {
    const std::int64_t K = transpose ? cols : kRows, N = transpose ? kRows : cols;
    for (std::int64_t M = 1; M <= 17; ++M) {
      SCOPED_TRACE("transpose=" + std::to_string(transpose) + " M=" + std::to_string(M));
      const Tensor x = random_tensor({M, K}, dtype(), rng);
      check(x, q, transpose, {M, N}, [](std::int64_t) { return 0; }, [](std::int64_t) { return 0; });
    }
  }
}

TEST_P(MatmulPaths, BatchedAndBroadcastShapes) {
  std::mt19937 rng(2000 * bits() + group() + static_cast<int>(dtype()));
  const std::int64_t cols = group();
  const QuantizedWeights w2 = weight({kRows, cols}, rng);
  const QuantizedWeights w3 = weight({3, kRows, cols}, rng);
  const auto same = [](std::int64_t b) { return b; };
  const auto zero = [](std::int64_t) { return 0; };
  for (bool transpose : {true, false}) {
    const std::int64_t K = transpose ? cols : kRows, N = transpose ? kRows : cols;
    for (std::int64_t M : {1, 3, 9}) {
      SCOPED_TRACE("transpose=" + std::to_string(transpose) + " M=" + std::to_string(M));
      // x (B, M, K) with w (N, K): one weight for every batch.
      check(random_tensor({4, M, K}, dtype(), rng), w2, transpose, {4, M, N}, same, zero);
      // x (M, K) with w (B, N, K): x broadcast over the weight's batch.
      check(random_tensor({M, K}, dtype(), rng), w3, transpose, {3, M, N}, zero, same);
      // x (2, 1, M, K) with w (3, N, K): out (2, 3, M, N), out[i, j] = x[i] @ w[j].
      check(random_tensor({2, 1, M, K}, dtype(), rng), w3, transpose, {2, 3, M, N},
            [](std::int64_t b) { return b / 3; }, [](std::int64_t b) { return b % 3; });
      // x (3, M, K) with w (3, N, K): batch by batch.
      check(random_tensor({3, M, K}, dtype(), rng), w3, transpose, {3, M, N}, same, same);
    }
    SCOPED_TRACE("1-D x, transpose=" + std::to_string(transpose));
    // A 1-D x is one row and loses its M axis: (K) @ w (N, K) -> (N); against w (3, N, K) -> (3, N).
    check(random_tensor({K}, dtype(), rng), w2, transpose, {N}, zero, zero);
    check(random_tensor({K}, dtype(), rng), w3, transpose, {3, N}, zero, same);
  }
}

TEST_P(MatmulPaths, MixedDtypesPromote) {
  std::mt19937 rng(3000 * bits() + group() + static_cast<int>(dtype()));
  const std::int64_t cols = 2 * group();
  const QuantizedWeights q = weight({kRows, cols}, rng);
  for (Dtype xd : {Dtype::float32, Dtype::float16, Dtype::bfloat16}) {
    if (xd == dtype()) continue;
    for (bool transpose : {true, false}) {
      const std::int64_t K = transpose ? cols : kRows, N = transpose ? kRows : cols;
      for (std::int64_t M : {1, 5}) {
        SCOPED_TRACE(std::string("x ") + dtype_name(xd) + " transpose=" + std::to_string(transpose) +
                     " M=" + std::to_string(M));
        check(random_tensor({M, K}, xd, rng), q, transpose, {M, N}, [](std::int64_t) { return 0; },
              [](std::int64_t) { return 0; });
      }
    }
  }
}

std::vector<Config> all_configs() {
  std::vector<Config> out;
  for (int b : {2, 3, 4, 5, 6, 8}) {
    for (int g : {32, 64, 128}) {
      for (Dtype d : {Dtype::float32, Dtype::float16, Dtype::bfloat16}) out.emplace_back(b, g, d);
    }
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Cpu, MatmulPaths, ::testing::ValuesIn(all_configs()),
                         [](const ::testing::TestParamInfo<Config>& i) {
                           return "b" + std::to_string(std::get<0>(i.param)) + "_g" +
                                  std::to_string(std::get<1>(i.param)) + "_" + dtype_name(std::get<2>(i.param));
                         });

}  // namespace
}  // namespace qmm::test
