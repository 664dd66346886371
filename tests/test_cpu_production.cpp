// The CPU production path against the fp64 reference on shapes that exercise its tiling: weight
// rows not a multiple of any tile, several groups per row, M across the register-tile sizes and
// past them (chunks of rows of x), on every code path (the machine's best, AVX-512 where
// present, and the generic code for AVX2 and for the baseline, forced with QMM_CPU_ISA).
// quantize and dequantize
// must match the reference bit for bit, including constant, zero, tied, huge, tiny, infinite and
// NaN groups.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>
#include <tuple>

#include "qmm/qmm.h"
#include "tests/test_support.h"

namespace qmm::test {
namespace {

/// Sets QMM_CPU_ISA for its lifetime ("" = the machine's best path).
class IsaScope {
 public:
  explicit IsaScope(const std::string& isa) {
    if (const char* old = std::getenv("QMM_CPU_ISA")) saved_ = old, had_ = true;
    if (isa.empty()) {
      unsetenv("QMM_CPU_ISA");
    } else {
      setenv("QMM_CPU_ISA", isa.c_str(), 1);
    }
  }
  ~IsaScope() {
    if (had_) {
      setenv("QMM_CPU_ISA", saved_.c_str(), 1);
    } else {
      unsetenv("QMM_CPU_ISA");
    }
  }
  IsaScope(const IsaScope&) = delete;
  IsaScope& operator=(const IsaScope&) = delete;

 private:
  std::string saved_;
  bool had_ = false;
};

/// The machine's best path (with the BF16 kernel for 16-bit activations where the CPU has
/// AVX512_BF16), AVX-512 without it, and the generic code built for AVX2 and for the baseline.
/// QMM_CPU_ISA only lowers the choice, so on a machine without a feature two entries coincide.
const char* const kIsas[] = {"", "avx512", "avx2", "portable"};

using Config = std::tuple<int, int, Dtype>;  // bits, group_size, dtype of x and of the weight

class CpuProduction : public ::testing::TestWithParam<Config> {
 protected:
  int bits() const { return std::get<0>(GetParam()); }
  int group() const { return std::get<1>(GetParam()); }
  Dtype dtype() const { return std::get<2>(GetParam()); }
  static CallOptions reference() {
    CallOptions o;
    o.kernel = "reference";
    return o;
  }
};

TEST_P(CpuProduction, MatmulAgreesWithReferenceAcrossTiles) {
  std::mt19937 rng(31 * bits() + group() + 7 * static_cast<int>(dtype()));
  for (bool transpose : {true, false}) {
    // transpose=true: 37 weight rows (no tile of 2, 3 or 4 divides it), 5 groups per row.
    // transpose=false: 37 rows of K, N = 3 groups (a partial 128-column tile for g = 32, 64).
    const std::int64_t K = transpose ? 5 * group() : 37, N = transpose ? 37 : 3 * group();
    const Shape w_shape = transpose ? Shape{N, K} : Shape{K, N};
    const QuantizedWeights q =
        quantize(random_tensor(w_shape, dtype(), rng, 0.5f, 0.05f), group(), bits(), reference());
    for (std::int64_t M : {1, 2, 3, 4, 5, 6, 8, 9, 16, 17, 33}) {
      const Tensor x = random_tensor({M, K}, dtype(), rng);
      const MatmulMagnitudes mags = matmul_magnitudes(x, q.w_q, q.scales, q.biases, transpose, group(), bits(), M, K, N);
      const Tensor expected = Tensor::empty({M, N}, dtype());
      quantized_matmul_into(x, q.w_q, q.scales, q.biases, expected, transpose, group(), bits(), reference());
      for (const char* isa : kIsas) {
        SCOPED_TRACE(std::string("transpose=") + (transpose ? "true" : "false") + " M=" + std::to_string(M) +
                     " path=" + (*isa ? isa : "default"));
        const IsaScope scope(isa);
        const Tensor out = poisoned({M, N}, dtype());
        quantized_matmul_into(x, q.w_q, q.scales, q.biases, out, transpose, group(), bits());
        for (std::int64_t i = 0; i < M * N; ++i) {
          const double want = element(expected, i), got = element(out, i);
          const double tol = float32_path_tolerance(K, dtype(), mags.exact[i], mags.magnitude[i]);
          ASSERT_TRUE(std::fabs(got - want) <= tol)
              << "out" << index_string({M, N}, i) << ": production " << got << ", reference " << want
              << ", tolerance " << tol;
        }
      }
    }
  }
}

// The BF16 kernel (4-bit, M <= 2) splits x into bf16 pieces that vdpbf16ps would flush if they
// were subnormal; x with tiny nonzero values must take the FMA kernel and still be right.
TEST(CpuProductionTinyActivations, FallBackAndAgree) {
  std::mt19937 rng(99);
  const std::int64_t N = 37, K = 256;
  CallOptions ref;
  ref.kernel = "reference";
  for (Dtype dtype : {Dtype::float32, Dtype::bfloat16, Dtype::float16}) {
    const QuantizedWeights q = quantize(random_tensor({N, K}, dtype, rng, 0.5f, 0.05f), 64, 4, ref);
    for (std::int64_t M : {1, 2}) {
      std::vector<float> xv = random_tensor({M, K}, Dtype::float32, rng).to_floats();
      xv[3] = 1.0e-33f;  // a float32 / bfloat16 normal far below 2^-100 (float16: rounds to 0)
      xv[static_cast<std::size_t>(K + 7) % xv.size()] = -3.0e-36f;
      const Tensor x = Tensor::from_floats(xv, {M, K}, dtype);
      const MatmulMagnitudes mags = matmul_magnitudes(x, q.w_q, q.scales, q.biases, true, 64, 4, M, K, N);
      const Tensor expected = Tensor::empty({M, N}, dtype);
      quantized_matmul_into(x, q.w_q, q.scales, q.biases, expected, true, 64, 4, ref);
      const Tensor out = poisoned({M, N}, dtype);
      quantized_matmul_into(x, q.w_q, q.scales, q.biases, out, true, 64, 4);
      for (std::int64_t i = 0; i < M * N; ++i) {
        const double tol = float32_path_tolerance(K, dtype, mags.exact[i], mags.magnitude[i]);
        ASSERT_LE(std::fabs(element(out, i) - element(expected, i)), tol)
            << dtype_name(dtype) << " M=" << M << " out" << index_string({M, N}, i);
      }
    }
  }
}

/// Weights whose groups are, in turn: random, constant, all zero, exact ties between levels,
/// huge, tiny, all negative, NaN first, NaN inside, +inf inside.
Tensor nasty_weights(std::int64_t rows, std::int64_t cols, int group_size, Dtype dtype, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> v(static_cast<std::size_t>(rows * cols));
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < cols; ++c) {
      const std::int64_t kind = (r * (cols / group_size) + c / group_size) % 10, i = c % group_size;
      float& e = v[static_cast<std::size_t>(r * cols + c)];
      switch (kind) {
        case 0: e = nd(rng); break;
        case 1: e = 0.75f; break;
        case 2: e = 0.0f; break;
        case 3: e = static_cast<float>(i % 7) * 0.5f - 1.25f; break;
        case 4: e = nd(rng) * 6.0e4f; break;
        case 5: e = nd(rng) * 1.0e-6f; break;
        case 6: e = -std::fabs(nd(rng)) - 0.5f; break;
        case 7: e = i == 0 ? nan : nd(rng); break;
        case 8: e = i == 5 ? nan : nd(rng); break;
        default: e = i == 3 ? inf : nd(rng); break;
      }
    }
  }
  return Tensor::from_floats(v, {rows, cols}, dtype);
}

TEST_P(CpuProduction, QuantizeAndDequantizeAreBitIdentical) {
  std::mt19937 rng(17 * bits() + group() + 5 * static_cast<int>(dtype()));
  const std::int64_t rows = 67, cols = 6 * group();  // rows split unevenly across threads
  const Tensor w = nasty_weights(rows, cols, group(), dtype(), rng);
  const QuantizedWeights want = quantize(w, group(), bits(), reference());
  for (const char* isa : kIsas) {
    SCOPED_TRACE(std::string("path=") + (*isa ? isa : "default"));
    const IsaScope scope(isa);
    const QuantizedWeights got = quantize(w, group(), bits());
    EXPECT_TRUE(bitwise_equal(want.w_q, got.w_q)) << "w_q";
    EXPECT_TRUE(bitwise_equal(want.scales, got.scales)) << "scales";
    EXPECT_TRUE(bitwise_equal(want.biases, got.biases)) << "biases";
    for (Dtype out : {Dtype::float32, Dtype::float16, Dtype::bfloat16}) {
      const Tensor expected = dequantize(want.w_q, want.scales, want.biases, group(), bits(), out, reference());
      const Tensor actual = dequantize(want.w_q, want.scales, want.biases, group(), bits(), out);
      EXPECT_TRUE(bitwise_equal(expected, actual)) << "dequantize to " << dtype_name(out);
    }
  }
}

std::string config_name(const ::testing::TestParamInfo<Config>& info) {
  return "b" + std::to_string(std::get<0>(info.param)) + "_g" + std::to_string(std::get<1>(info.param)) + "_" +
         dtype_name(std::get<2>(info.param));
}

INSTANTIATE_TEST_SUITE_P(Cpu, CpuProduction,
                         ::testing::Combine(::testing::Values(2, 3, 4, 5, 6, 8), ::testing::Values(32, 64, 128),
                                            ::testing::Values(Dtype::float32, Dtype::float16, Dtype::bfloat16)),
                         config_name);

}  // namespace
}  // namespace qmm::test
