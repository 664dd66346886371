// CPU production quantized_matmul: weight-stationary. Each weight row is unpacked once into
// small integers and applied to all M rows of x, using
//     sum_k x[k] * (s*q[k] + b) = s * sum_k x[k]*q[k] + b * sum_k x[k]   (per group),
// so the inner loop is a plain float dot product the compiler vectorises, and the per-group
// sums of x are computed once per call.
#include <algorithm>
#include <vector>

#include "src/cpu/production.h"
#include "src/cpu/scalar.h"
#include "src/cpu/thread_pool.h"
#include "src/format/affine.h"

namespace qmm::detail::cpu_production {
namespace {

/// x converted to float once (M x K).
std::vector<float> load_rows(const void* x, Dtype dtype, std::int64_t count) {
  std::vector<float> out(static_cast<std::size_t>(count));
  if (dtype == Dtype::float32) {
    std::copy_n(static_cast<const float*>(x), count, out.begin());
  } else {
    for (std::int64_t i = 0; i < count; ++i) out[static_cast<std::size_t>(i)] = cpu::load(x, dtype, i);
  }
  return out;
}

/// Unpacks `count` elements starting at element `first` of a packed row into floats.
void unpack_floats(const std::uint32_t* row, std::int64_t first, int count, int bits, float* out) {
  if (bits == 4 && first % 8 == 0) {
    const std::uint32_t* w = row + first / 8;
    for (int i = 0; i < count; i += 8) {
      const std::uint32_t v = w[i / 8];
      for (int j = 0; j < 8; ++j) out[i + j] = static_cast<float>((v >> (4 * j)) & 15u);
    }
    return;
  }
  if (bits == 8 && first % 4 == 0) {
    const std::uint32_t* w = row + first / 4;
    for (int i = 0; i < count; i += 4) {
      const std::uint32_t v = w[i / 4];
      for (int j = 0; j < 4; ++j) out[i + j] = static_cast<float>((v >> (8 * j)) & 255u);
    }
    return;
  }
  for (int i = 0; i < count; ++i) out[i] = static_cast<float>(format::extract(row, first + i, bits));
}

float dot(const float* a, const float* b, int n) {
  // Eight independent partial sums so the loop vectorises without reassociation flags.
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  }
  float s = 0;
  for (; i < n; ++i) s += a[i] * b[i];
  return s + ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

void matmul_transposed(const MatmulProblem& p) {
  const auto& w = p.w;
  const std::int64_t M = p.M, N = p.N, K = p.K;
  const int g = w.group_size;
  const std::int64_t groups = K / g;
  const std::int64_t words = format::packed_words(K, w.bits);
  const std::vector<float> x = load_rows(p.x, p.x_dtype, M * K);
  std::vector<float> xsum(static_cast<std::size_t>(M * groups));
  for (std::int64_t m = 0; m < M; ++m) {
    for (std::int64_t gi = 0; gi < groups; ++gi) {
      float s = 0;
      for (int i = 0; i < g; ++i) s += x[static_cast<std::size_t>(m * K + gi * g + i)];
      xsum[static_cast<std::size_t>(m * groups + gi)] = s;
    }
  }
  cpu::parallel_for(N, 8, [&](std::int64_t n0, std::int64_t n1) {
    std::vector<float> q(static_cast<std::size_t>(g));
    std::vector<float> acc(static_cast<std::size_t>(M));
    for (std::int64_t n = n0; n < n1; ++n) {
      std::fill(acc.begin(), acc.end(), 0.0f);
      const std::uint32_t* row = w.w_q + n * words;
      for (std::int64_t gi = 0; gi < groups; ++gi) {
        unpack_floats(row, gi * g, g, w.bits, q.data());
        const float s = cpu::load(w.scales, w.dtype, n * groups + gi);
        const float b = cpu::load(w.biases, w.dtype, n * groups + gi);
        for (std::int64_t m = 0; m < M; ++m) {
          const float d = dot(&x[static_cast<std::size_t>(m * K + gi * g)], q.data(), g);
          acc[static_cast<std::size_t>(m)] += s * d + b * xsum[static_cast<std::size_t>(m * groups + gi)];
        }
      }
      for (std::int64_t m = 0; m < M; ++m) cpu::store(p.out, p.out_dtype, m * N + n, acc[static_cast<std::size_t>(m)]);
    }
  });
}

void matmul_plain(const MatmulProblem& p) {
  // W is (K, N) grouped along N: walk k, dequantize a block of columns, add x[m,k] * w[k, n].
  const auto& w = p.w;
  const std::int64_t M = p.M, N = p.N, K = p.K;
  const int g = w.group_size;
  const std::int64_t groups = N / g;
  const std::int64_t words = format::packed_words(N, w.bits);
  const std::vector<float> x = load_rows(p.x, p.x_dtype, M * K);
  // Each task owns whole groups of columns so it can dequantize a group at a time.
  cpu::parallel_for(groups, 1, [&](std::int64_t g0, std::int64_t g1) {
    const std::int64_t c0 = g0 * g, width = (g1 - g0) * g;
    std::vector<float> acc(static_cast<std::size_t>(M * width), 0.0f);
    std::vector<float> wrow(static_cast<std::size_t>(width));
    for (std::int64_t k = 0; k < K; ++k) {
      const std::uint32_t* row = w.w_q + k * words;
      unpack_floats(row, c0, static_cast<int>(width), w.bits, wrow.data());
      for (std::int64_t gi = g0; gi < g1; ++gi) {
        const float s = cpu::load(w.scales, w.dtype, k * groups + gi);
        const float b = cpu::load(w.biases, w.dtype, k * groups + gi);
        float* seg = &wrow[static_cast<std::size_t>((gi - g0) * g)];
        for (int i = 0; i < g; ++i) seg[i] = s * seg[i] + b;
      }
      for (std::int64_t m = 0; m < M; ++m) {
        const float xv = x[static_cast<std::size_t>(m * K + k)];
        float* a = &acc[static_cast<std::size_t>(m * width)];
        for (std::int64_t i = 0; i < width; ++i) a[i] += xv * wrow[static_cast<std::size_t>(i)];
      }
    }
    for (std::int64_t m = 0; m < M; ++m) {
      for (std::int64_t i = 0; i < width; ++i) {
        cpu::store(p.out, p.out_dtype, m * N + c0 + i, acc[static_cast<std::size_t>(m * width + i)]);
      }
    }
  });
}

}  // namespace

void quantized_matmul(const MatmulProblem& p) {
  if (p.transpose) {
    matmul_transposed(p);
  } else {
    matmul_plain(p);
  }
}

}  // namespace qmm::detail::cpu_production
