// Threaded quantize and dequantize: the per-group rule of src/format/affine.h applied to rows
// in parallel. Bit-identical to the reference by construction (same float operations).
#include <vector>

#include "src/cpu/production.h"
#include "src/cpu/scalar.h"
#include "src/cpu/thread_pool.h"
#include "src/format/affine.h"

namespace qmm::detail::cpu_production {

using format::packed_words;

void quantize(const QuantizeProblem& p) {
  const std::int64_t words = packed_words(p.cols, p.bits);
  const std::int64_t groups = p.cols / p.group_size;
  const std::int64_t grain = std::max<std::int64_t>(1, 16384 / p.cols);
  cpu::parallel_for(p.rows, grain, [&](std::int64_t r0, std::int64_t r1) {
    std::vector<float> buf(static_cast<std::size_t>(p.group_size));
    for (std::int64_t r = r0; r < r1; ++r) {
      std::uint32_t* row_q = p.w_q + r * words;
      std::fill(row_q, row_q + words, 0u);
      for (std::int64_t g = 0; g < groups; ++g) {
        const std::int64_t base = r * p.cols + g * p.group_size;
        for (int i = 0; i < p.group_size; ++i) buf[i] = cpu::load(p.w, p.dtype, base + i);
        float wmin = buf[0], wmax = buf[0];
        for (int i = 1; i < p.group_size; ++i) {
          wmin = buf[i] < wmin ? buf[i] : wmin;
          wmax = buf[i] > wmax ? buf[i] : wmax;
        }
        const format::GroupParams gp = format::affine_group_params(wmin, wmax, p.bits);
        for (int i = 0; i < p.group_size; ++i) {
          format::insert(row_q, g * p.group_size + i, p.bits, format::affine_quantize_value(buf[i], gp, p.bits));
        }
        cpu::store(p.scales, p.dtype, r * groups + g, gp.scale);
        cpu::store(p.biases, p.dtype, r * groups + g, gp.bias);
      }
    }
  });
}

void dequantize(const DequantizeProblem& p) {
  const auto& w = p.w;
  const std::int64_t words = packed_words(w.cols, w.bits);
  const std::int64_t groups = w.cols / w.group_size;
  const Dtype storage = w.dtype;
  const auto round_storage = [storage](float v) { return cpu::round_to(storage, v); };
  const std::int64_t grain = std::max<std::int64_t>(1, 16384 / w.cols);
  cpu::parallel_for(w.rows, grain, [&](std::int64_t r0, std::int64_t r1) {
    for (std::int64_t r = r0; r < r1; ++r) {
      const std::uint32_t* row_q = w.w_q + r * words;
      for (std::int64_t g = 0; g < groups; ++g) {
        const float s = cpu::load(w.scales, storage, r * groups + g);
        const float b = cpu::load(w.biases, storage, r * groups + g);
        for (int i = 0; i < w.group_size; ++i) {
          const std::int64_t c = g * w.group_size + i;
          const float v = format::affine_dequantize_value(format::extract(row_q, c, w.bits), s, b, round_storage);
          cpu::store(p.out, p.out_dtype, r * w.cols + c, v);
        }
      }
    }
  });
}

}  // namespace qmm::detail::cpu_production
