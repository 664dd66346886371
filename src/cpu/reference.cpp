#include "src/cpu/reference.h"

#include <vector>

#include "src/cpu/scalar.h"
#include "src/format/affine.h"

namespace qmm::detail::reference {

using format::packed_words;

void quantize(const QuantizeProblem& p) {
  const std::int64_t words = packed_words(p.cols, p.bits);
  const std::int64_t groups = p.cols / p.group_size;
  const std::int64_t words_per_group = p.group_size * p.bits / 32;
  for (std::int64_t r = 0; r < p.rows; ++r) {
    for (std::int64_t g = 0; g < groups; ++g) {
      const std::int64_t base = r * p.cols + g * p.group_size;
      const auto value = [&](int i) { return cpu::load(p.w, p.dtype, base + i); };
      const format::GroupParams gp =
          format::quantize_group(value, p.group_size, p.bits, p.w_q + r * words + g * words_per_group);
      cpu::store(p.scales, p.dtype, r * groups + g, gp.scale);
      cpu::store(p.biases, p.dtype, r * groups + g, gp.bias);
    }
  }
}

void dequantize(const DequantizeProblem& p) {
  const auto& w = p.w;
  const std::int64_t words = packed_words(w.cols, w.bits);
  const std::int64_t groups = w.cols / w.group_size;
  const Dtype storage = w.dtype;
  const auto round_storage = [storage](float v) { return cpu::round_to(storage, v); };
  for (std::int64_t r = 0; r < w.rows; ++r) {
    for (std::int64_t c = 0; c < w.cols; ++c) {
      const std::int64_t g = r * groups + c / w.group_size;
      const std::uint32_t q = format::extract(w.w_q + r * words, c, w.bits);
      const float v = format::affine_dequantize_value(q, cpu::load(w.scales, storage, g),
                                                      cpu::load(w.biases, storage, g), round_storage);
      cpu::store(p.out, p.out_dtype, r * w.cols + c, v);
    }
  }
}

void quantized_matmul(const MatmulProblem& p) {
  const auto& w = p.w;
  const std::int64_t words = packed_words(w.cols, w.bits);
  const std::int64_t groups = w.cols / w.group_size;
  // Exact dequantized weights in double, laid out as W^T-free (n, k) for clarity.
  std::vector<double> wd(static_cast<std::size_t>(p.N * p.K));
  for (std::int64_t r = 0; r < w.rows; ++r) {
    for (std::int64_t c = 0; c < w.cols; ++c) {
      const std::int64_t g = r * groups + c / w.group_size;
      const double s = cpu::load(w.scales, w.dtype, g);
      const double b = cpu::load(w.biases, w.dtype, g);
      const double v = s * format::extract(w.w_q + r * words, c, w.bits) + b;
      // transpose: W is (N, K) -> (n=r, k=c); otherwise W is (K, N) -> (k=r, n=c).
      const std::int64_t n = p.transpose ? r : c;
      const std::int64_t k = p.transpose ? c : r;
      wd[static_cast<std::size_t>(n * p.K + k)] = v;
    }
  }
  for (std::int64_t m = 0; m < p.M; ++m) {
    for (std::int64_t n = 0; n < p.N; ++n) {
      double acc = 0.0;
      for (std::int64_t k = 0; k < p.K; ++k) {
        acc += static_cast<double>(cpu::load(p.x, p.x_dtype, m * p.K + k)) * wd[static_cast<std::size_t>(n * p.K + k)];
      }
      cpu::store(p.out, p.out_dtype, m * p.N + n, static_cast<float>(acc));
    }
  }
}

}  // namespace qmm::detail::reference
