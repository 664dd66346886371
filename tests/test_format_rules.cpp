// The per-group quantization rule and the packing of DESIGN.md section 2, checked on patterns
// whose answer is known by hand, through the public API on every CPU kernel.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "qmm/qmm.h"
#include "src/format/affine.h"
#include "tests/test_support.h"

namespace qmm::test {
namespace {

class FormatRules : public ::testing::TestWithParam<std::string> {
 protected:
  CallOptions options() const {
    CallOptions o;
    o.kernel = GetParam();
    return o;
  }
  /// Quantizes one row of float32 values with the kernel under test.
  QuantizedWeights quantize_row(const std::vector<float>& v, int group_size, int bits) const {
    const Tensor w = Tensor::from_floats(v, {1, static_cast<std::int64_t>(v.size())}, Dtype::float32);
    return quantize(w, group_size, bits, options());
  }
  static std::vector<std::uint32_t> levels(const QuantizedWeights& q, std::int64_t cols, int bits) {
    std::vector<std::uint32_t> out(static_cast<std::size_t>(cols));
    for (std::int64_t k = 0; k < cols; ++k) out[k] = format::extract(q.w_q.data_as<std::uint32_t>(), k, bits);
    return out;
  }
};

TEST_P(FormatRules, LargerMaximumGivesNegativeScale) {
  // 0..15 in a 4-bit group of 32: |wmin| = 0 < |wmax| = 15, so the edge is wmax and the scale is
  // negative: s = -1, bias = 15, q = 15 - w.
  std::vector<float> v(32);
  for (int i = 0; i < 32; ++i) v[i] = static_cast<float>(i % 16);
  const auto q = quantize_row(v, 32, 4);
  EXPECT_EQ(q.scales.data_as<float>()[0], -1.0f);
  EXPECT_EQ(q.biases.data_as<float>()[0], 15.0f);
  const auto lv = levels(q, 32, 4);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(lv[i], 15u - static_cast<std::uint32_t>(i % 16)) << "element " << i;
}

TEST_P(FormatRules, LargerMinimumGivesPositiveScale) {
  // -15..0: the edge is wmin, s = +1, bias = -15, q = w + 15.
  std::vector<float> v(32);
  for (int i = 0; i < 32; ++i) v[i] = -static_cast<float>(i % 16);
  const auto q = quantize_row(v, 32, 4);
  EXPECT_EQ(q.scales.data_as<float>()[0], 1.0f);
  EXPECT_EQ(q.biases.data_as<float>()[0], -15.0f);
  const auto lv = levels(q, 32, 4);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(lv[i], 15u - static_cast<std::uint32_t>(i % 16)) << "element " << i;
}

TEST_P(FormatRules, EqualMagnitudesPickTheMaximum) {
  // |wmin| == |wmax|: "if |wmin| > |wmax|" is false, so the edge is wmax and the scale negative.
  std::vector<float> v(64);
  for (int i = 0; i < 64; ++i) v[i] = -1.0f + 2.0f * static_cast<float>(i) / 63.0f;
  v[63] = 1.0f;
  const auto q = quantize_row(v, 64, 4);
  EXPECT_LT(q.scales.data_as<float>()[0], 0.0f);
  EXPECT_EQ(q.biases.data_as<float>()[0], 1.0f);
}

TEST_P(FormatRules, TiesRoundToEven) {
  // Extremes 0 and 15 make s = -1 and bias = 15, so (w - 15) / -1 = 15 - w exactly: half-integers
  // w land on ties, and rint picks the even neighbour (MLX's std::rint in the default mode).
  std::vector<float> v(32, 0.0f);
  v[1] = 15.0f;
  const float w_half[] = {0.5f, 1.5f, 2.5f, 3.5f, 12.5f, 13.5f, 14.5f};
  const std::uint32_t expect[] = {14u, 14u, 12u, 12u, 2u, 2u, 0u};  // 14.5, 13.5, 12.5, 11.5, 2.5, 1.5, 0.5
  for (int i = 0; i < 7; ++i) v[2 + i] = w_half[i];
  const auto q = quantize_row(v, 32, 4);
  ASSERT_EQ(q.scales.data_as<float>()[0], -1.0f);
  const auto lv = levels(q, 32, 4);
  for (int i = 0; i < 7; ++i) EXPECT_EQ(lv[2 + i], expect[i]) << "w = " << w_half[i];
}

TEST_P(FormatRules, EdgeSnapsAndZeroIsALevel) {
  // Mixed signs: s snaps to edge / q0, so the edge itself is level 0 (stored exactly as the bias)
  // and level -q0 is zero: an exact 0 in the input comes back as (almost exactly) 0.
  std::vector<float> v(64);
  for (int i = 0; i < 64; ++i) v[i] = 0.37f * std::sin(0.7f * static_cast<float>(i)) - 0.11f;
  v[10] = 0.0f;
  for (int bits : {2, 3, 4, 5, 6, 8}) {
    SCOPED_TRACE("bits=" + std::to_string(bits));
    const auto q = quantize_row(v, 64, bits);
    float wmin = v[0], wmax = v[0];
    for (float e : v) wmin = std::min(wmin, e), wmax = std::max(wmax, e);
    const float edge = std::fabs(wmin) > std::fabs(wmax) ? wmin : wmax;
    EXPECT_EQ(q.biases.data_as<float>()[0], edge);
    const auto lv = levels(q, 64, bits);
    const std::int64_t edge_at = std::find(v.begin(), v.end(), edge) - v.begin();
    EXPECT_EQ(lv[edge_at], 0u) << "the edge is level 0";
    const Tensor d = dequantize(q.w_q, q.scales, q.biases, 64, bits, std::nullopt, options());
    EXPECT_EQ(d.data_as<float>()[edge_at], edge) << "the edge is exact";
    EXPECT_LE(std::fabs(d.data_as<float>()[10]), 4 * std::ldexp(std::fabs(edge), -24)) << "zero stays zero";
  }
}

TEST_P(FormatRules, ConstantAndZeroGroups) {
  // Constant c: wmax - wmin = 0, s = max(0, 1e-7) then -1e-7 (edge = wmax); q0 = rint(c / s) != 0,
  // so bias = c and every q is 0: c comes back exactly. All-zero: q0 = 0, bias = 0, s = -1e-7.
  // A constant below half the floor (3e-8): q0 = rint(-0.3) = 0, so bias = 0 and it comes back 0.
  std::vector<float> v(96);
  for (int i = 0; i < 32; ++i) v[i] = 0.3f, v[32 + i] = 0.0f, v[64 + i] = 3e-8f;
  const auto q = quantize_row(v, 32, 4);
  const float* s = q.scales.data_as<float>();
  const float* b = q.biases.data_as<float>();
  EXPECT_EQ(b[0], 0.3f);
  EXPECT_LT(s[0], 0.0f);
  EXPECT_EQ(b[1], 0.0f);
  EXPECT_EQ(s[1], -1e-7f);
  EXPECT_EQ(b[2], 0.0f);
  EXPECT_EQ(s[2], -1e-7f);
  for (auto l : levels(q, 96, 4)) EXPECT_EQ(l, 0u);
  const Tensor d = dequantize(q.w_q, q.scales, q.biases, 32, 4, std::nullopt, options());
  for (int i = 0; i < 32; ++i) {
    EXPECT_EQ(d.data_as<float>()[i], 0.3f);
    EXPECT_EQ(d.data_as<float>()[32 + i], 0.0f);
    EXPECT_EQ(d.data_as<float>()[64 + i], 0.0f);
  }
}

TEST_P(FormatRules, ScaleFloorIsOneEMinus7) {
  // A spread far below 1e-7 * n keeps the floor: s = -1e-7 before snapping.
  std::vector<float> v(32, 1.0f);
  v[5] = 1.0f + std::ldexp(1.0f, -23);
  const auto q = quantize_row(v, 32, 2);
  // q0 = rint(edge / -1e-7) = -1.0000001e7 (in float), s = edge / q0 ~ -1e-7.
  EXPECT_NEAR(q.scales.data_as<float>()[0], -1e-7f, 1e-13f);
}

TEST_P(FormatRules, PackingIsOneLittleEndianBitStream) {
  // Levels q[k] = (7k + 3) mod 2^bits placed through a 0..n ramp; the packed words must equal an
  // independent bit-by-bit construction: bit p of the stream is bit p % 32 of word p / 32.
  for (int bits : {2, 3, 4, 5, 6, 8}) {
    SCOPED_TRACE("bits=" + std::to_string(bits));
    const int n = (1 << bits) - 1;
    const int cols = 128;
    std::vector<float> v(cols);
    std::vector<std::uint32_t> want_q(cols);
    for (int k = 0; k < cols; ++k) {
      // Extremes 0 and n in each group of 32 fix s = -1 and bias = n, so w = n - q.
      const int qk = k % 32 == 0 ? n : (k % 32 == 1 ? 0 : (7 * k + 3) % (n + 1));
      want_q[k] = static_cast<std::uint32_t>(qk);
      v[k] = static_cast<float>(n - qk);
    }
    const auto q = quantize_row(v, 32, bits);
    std::vector<std::uint32_t> want(static_cast<std::size_t>(cols * bits / 32), 0u);
    for (int k = 0; k < cols; ++k) {
      for (int j = 0; j < bits; ++j) {
        const int p = k * bits + j;
        if ((want_q[k] >> j) & 1u) want[p / 32] |= 1u << (p % 32);
      }
    }
    ASSERT_EQ(q.w_q.numel(), static_cast<std::int64_t>(want.size()));
    for (std::size_t i = 0; i < want.size(); ++i) {
      EXPECT_EQ(q.w_q.data_as<std::uint32_t>()[i], want[i]) << "word " << i;
    }
  }
}

TEST_P(FormatRules, HalfTypesQuantizeWithFloat32Parameters) {
  // Storage dtype rounding happens after q is computed: quantizing float16 data must give the same
  // levels as quantizing the same values held in float32, and the fp16 scale/bias must be the
  // float32 ones rounded to nearest even.
  std::mt19937 rng(7);
  const Tensor w16 = random_tensor({4, 128}, Dtype::float16, rng, 0.8f, 0.1f);
  const Tensor w32 = Tensor::from_floats(w16.to_floats(), {4, 128}, Dtype::float32);
  const auto q16 = quantize(w16, 64, 5, options());
  const auto q32 = quantize(w32, 64, 5, options());
  EXPECT_TRUE(bitwise_equal(q32.w_q, q16.w_q));
  for (std::int64_t i = 0; i < q16.scales.numel(); ++i) {
    EXPECT_EQ(q16.scales.data_as<std::uint16_t>()[i], float_to_float16_bits(q32.scales.data_as<float>()[i]));
    EXPECT_EQ(q16.biases.data_as<std::uint16_t>()[i], float_to_float16_bits(q32.biases.data_as<float>()[i]));
  }
}

INSTANTIATE_TEST_SUITE_P(Cpu, FormatRules, ::testing::ValuesIn(cpu_kernels()),
                         [](const ::testing::TestParamInfo<std::string>& i) { return kernel_label(i.param); });

// fp16 and bf16 conversions are round-to-nearest-even, including subnormals and overflow.
TEST(Conversions, Float16RoundTripAndRounding) {
  for (std::uint32_t h = 0; h < 0x10000u; ++h) {
    const auto bits = static_cast<std::uint16_t>(h);
    const float f = float16_bits_to_float(bits);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(float16_bits_to_float(float_to_float16_bits(f))));
      continue;
    }
    ASSERT_EQ(float_to_float16_bits(f), bits) << "0x" << std::hex << h;
  }
  EXPECT_EQ(float_to_float16_bits(1.0f + std::ldexp(1.0f, -11)), 0x3c00u);          // tie -> even (down)
  EXPECT_EQ(float_to_float16_bits(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02u);      // tie -> even (up)
  EXPECT_EQ(float_to_float16_bits(std::ldexp(1.0f, -25)), 0x0000u);                 // half the min subnormal
  EXPECT_EQ(float_to_float16_bits(std::ldexp(1.5f, -25)), 0x0001u);
  EXPECT_EQ(float_to_float16_bits(std::ldexp(3.0f, -25)), 0x0002u);                 // 1.5 subnormals -> 2
  EXPECT_EQ(float_to_float16_bits(65519.0f), 0x7bffu);
  EXPECT_EQ(float_to_float16_bits(65520.0f), 0x7c00u);                              // overflow to inf
  EXPECT_EQ(float_to_float16_bits(-1e-7f), 0x8002u);
}

TEST(Conversions, Bfloat16RoundTripAndRounding) {
  for (std::uint32_t h = 0; h < 0x10000u; ++h) {
    const auto bits = static_cast<std::uint16_t>(h);
    const float f = bfloat16_bits_to_float(bits);
    if (std::isnan(f)) continue;
    ASSERT_EQ(float_to_bfloat16_bits(f), bits) << "0x" << std::hex << h;
  }
  EXPECT_EQ(float_to_bfloat16_bits(1.0f + std::ldexp(1.0f, -8)), 0x3f80u);      // tie -> even (down)
  EXPECT_EQ(float_to_bfloat16_bits(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82u);  // tie -> even (up)
  EXPECT_TRUE(std::isnan(bfloat16_bits_to_float(float_to_bfloat16_bits(NAN))));
}

}  // namespace
}  // namespace qmm::test
