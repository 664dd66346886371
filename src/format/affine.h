// MLX's affine quantization format, defined once for every backend (CPU and CUDA include this
// header; it needs no CUDA headers). See ../../README.md "The format" and DESIGN.md section 2.
//
// A quantized matrix row of `cols` elements is one little-endian bit stream of uint32 words:
// element k occupies bits [k*bits, (k+1)*bits), bit p lives in bit p%32 of word p/32. For 3, 5
// and 6 bits an element may straddle two words. Each group of `group_size` consecutive elements
// of a row has a scale s and a bias b (stored in the weight's float dtype), and
//     w_hat = s * q + b,   q in [0, 2^bits - 1].
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define QMM_HD __host__ __device__ __forceinline__
#else
#define QMM_HD inline
#endif

namespace qmm::format {

constexpr int kSupportedBits[] = {2, 3, 4, 5, 6, 8};
constexpr int kSupportedGroupSizes[] = {32, 64, 128};

constexpr bool is_supported_bits(int bits) {
  return bits == 2 || bits == 3 || bits == 4 || bits == 5 || bits == 6 || bits == 8;
}
constexpr bool is_supported_group_size(int group_size) {
  return group_size == 32 || group_size == 64 || group_size == 128;
}

/// Largest quantized value, 2^bits - 1.
QMM_HD constexpr std::uint32_t max_level(int bits) { return (1u << bits) - 1u; }

/// uint32 words holding `cols` packed elements. Every supported (bits, group_size) makes a
/// group a whole number of words (group_size * bits is a multiple of 32), so cols divisible by
/// the group size packs exactly.
QMM_HD constexpr std::int64_t packed_words(std::int64_t cols, int bits) { return cols * bits / 32; }

/// Element k of a packed row.
QMM_HD std::uint32_t extract(const std::uint32_t* row, std::int64_t k, int bits) {
  const std::int64_t bit = k * bits;
  const std::int64_t word = bit >> 5;
  const int offset = static_cast<int>(bit & 31);
  std::uint32_t v = row[word] >> offset;
  if (offset + bits > 32) v |= row[word + 1] << (32 - offset);
  return v & max_level(bits);
}

/// Sets element k of a packed row whose words start at zero.
QMM_HD void insert(std::uint32_t* row, std::int64_t k, int bits, std::uint32_t q) {
  const std::int64_t bit = k * bits;
  const std::int64_t word = bit >> 5;
  const int offset = static_cast<int>(bit & 31);
  row[word] |= q << offset;
  if (offset + bits > 32) row[word + 1] |= q >> (32 - offset);
}

/// Scale and bias of one group, in float32, before they are stored in the weight's dtype.
struct GroupParams {
  float scale;
  float bias;
};

/// MLX's CPU rule for one group with extremes wmin <= wmax (all float32):
///   s = max((wmax - wmin) / n, 1e-7) with n = 2^bits - 1;
///   the extreme of larger magnitude is the "edge"; if it is wmax the scale turns negative;
///   q0 = rint(edge / s); if q0 != 0 the scale snaps so that the edge is exactly representable
///   (s = edge / q0) and bias = edge, otherwise bias = 0.
/// Scales are therefore signed: never assume bias = min or scale > 0.
QMM_HD GroupParams affine_group_params(float wmin, float wmax, int bits) {
  const float n = static_cast<float>(max_level(bits));
  float scale = fmaxf((wmax - wmin) / n, 1e-7f);
  const bool min_is_edge = fabsf(wmin) > fabsf(wmax);
  const float edge = min_is_edge ? wmin : wmax;
  if (!min_is_edge) scale = -scale;
  const float q0 = rintf(edge / scale);
  GroupParams p{scale, 0.0f};
  if (q0 != 0.0f) {
    p.scale = edge / q0;
    p.bias = edge;
  }
  return p;
}

/// q = clamp(rint((w - bias) / scale), 0, n), computed with the float32 scale and bias (not the
/// values rounded to the storage dtype); rint rounds ties to even.
QMM_HD std::uint32_t affine_quantize_value(float w, GroupParams p, int bits) {
  const float q = rintf((w - p.bias) / p.scale);  // no product: nothing to contract
  const float n = static_cast<float>(max_level(bits));
  return static_cast<std::uint32_t>(fminf(fmaxf(q, 0.0f), n));
}

/// Quantizes one group of `group_size` values, `value(i)` giving element i as float: finds the
/// extremes, applies affine_group_params and packs every q into `group_words` (the group's
/// group_size*bits/32 words, which this function zeroes first). Returns the float32 scale and
/// bias, which the caller stores in the weight's dtype. The one definition every backend uses.
template <typename ValueAt>
QMM_HD GroupParams quantize_group(ValueAt value, int group_size, int bits, std::uint32_t* group_words) {
  float wmin = value(0);
  float wmax = wmin;
  for (int i = 1; i < group_size; ++i) {
    const float v = value(i);
    wmin = v < wmin ? v : wmin;
    wmax = v > wmax ? v : wmax;
  }
  const GroupParams gp = affine_group_params(wmin, wmax, bits);
  for (int w = 0; w < group_size * bits / 32; ++w) group_words[w] = 0;
  for (int i = 0; i < group_size; ++i) insert(group_words, i, bits, affine_quantize_value(value(i), gp, bits));
  return gp;
}

/// IEEE float product and sum that the compiler may not fuse into an FMA: the format's results
/// must not depend on contraction (the host build also uses -ffp-contract=off).
QMM_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
QMM_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

/// Dequantized value as MLX's CPU backend computes it in the storage dtype T: the product is
/// rounded to T, then the sum is rounded to T. `round_to_storage` maps a float to the nearest
/// value of T (identity for float32). scale and bias are the stored values, widened to float.
template <typename RoundToStorage>
QMM_HD float affine_dequantize_value(std::uint32_t q, float scale, float bias,
                                     RoundToStorage round_to_storage) {
  return round_to_storage(add_rn(round_to_storage(mul_rn(scale, static_cast<float>(q))), bias));
}

}  // namespace qmm::format
