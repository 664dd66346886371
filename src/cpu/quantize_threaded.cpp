// Production quantize and dequantize: rows in parallel, groups vectorised where the machine
// allows, bit-identical to the reference by construction.
//
// quantize: the group's minimum and maximum, its scale and bias (format::affine_group_params,
// scalar, once per group) and the stored scale and bias are computed exactly as the reference
// does. Only the per-element work is vectorised, and only with IEEE-exact operations that match
// the scalar ones lane for lane: subtraction, division (not a multiplication by a reciprocal),
// round-to-nearest-even, and max/min whose NaN behaviour matches fmaxf/fminf in the order used.
// The min/max scan keeps the reference's semantics too: a NaN in the first element poisons both,
// a NaN anywhere else is skipped.
//
// dequantize: for bit widths with at most as many levels as a group has elements, the group's
// 2^bits possible outputs are computed with the reference's scalar formula and stored once as
// output bit patterns, and every element is a table lookup. Otherwise each element goes through
// the scalar formula.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "src/cpu/production.h"
#include "src/cpu/scalar.h"
#include "src/cpu/thread_pool.h"
#include "src/format/affine.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define QMM_CPU_X86 1
#include <immintrin.h>
#endif

namespace qmm::detail::cpu_production {
namespace {

using format::packed_words;

// ---- packing 32 elements at a time ----------------------------------------------------------

/// Packs 32 levels into `Bits` words (the loop unrolls; every shift is a constant).
template <int Bits>
void pack32(const std::uint8_t* q, std::uint32_t* w) {
  std::uint32_t out[Bits] = {};
#pragma GCC unroll 32
  for (int i = 0; i < 32; ++i) {
    const int bit = i * Bits, word = bit >> 5, offset = bit & 31;
    out[word] |= static_cast<std::uint32_t>(q[i]) << offset;
    if (offset + Bits > 32) out[word + 1] |= static_cast<std::uint32_t>(q[i]) >> (32 - offset);
  }
  std::memcpy(w, out, sizeof out);
}

/// The 32 levels held in `Bits` words.
template <int Bits>
void unpack32(const std::uint32_t* w, std::uint8_t* q) {
#pragma GCC unroll 32
  for (int i = 0; i < 32; ++i) {
    const int bit = i * Bits, word = bit >> 5, offset = bit & 31;
    std::uint32_t v = w[word] >> offset;
    if (offset + Bits > 32) v |= w[word + 1] << (32 - offset);
    q[i] = static_cast<std::uint8_t>(v & ((1u << Bits) - 1u));
  }
}

using Pack32 = void (*)(const std::uint8_t*, std::uint32_t*);
using Unpack32 = void (*)(const std::uint32_t*, std::uint8_t*);

Pack32 pack32_for(int bits) {
  switch (bits) {
    case 2: return &pack32<2>;
    case 3: return &pack32<3>;
    case 4: return &pack32<4>;
    case 5: return &pack32<5>;
    case 6: return &pack32<6>;
    default: return &pack32<8>;
  }
}

Unpack32 unpack32_for(int bits) {
  switch (bits) {
    case 2: return &unpack32<2>;
    case 3: return &unpack32<3>;
    case 4: return &unpack32<4>;
    case 5: return &unpack32<5>;
    case 6: return &unpack32<6>;
    default: return &unpack32<8>;
  }
}

// ---- one group of quantize ------------------------------------------------------------------

/// The reference's per-group arithmetic: extremes, parameters, levels.
format::GroupParams quantize_group_portable(const float* v, int count, int bits, std::uint8_t* q) {
  float wmin = v[0], wmax = v[0];
  for (int i = 1; i < count; ++i) {
    wmin = v[i] < wmin ? v[i] : wmin;
    wmax = v[i] > wmax ? v[i] : wmax;
  }
  const format::GroupParams gp = format::affine_group_params(wmin, wmax, bits);
  for (int i = 0; i < count; ++i) q[i] = static_cast<std::uint8_t>(format::affine_quantize_value(v[i], gp, bits));
  return gp;
}

#if defined(QMM_CPU_X86)
#define QMM_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

QMM_AVX512 float lane_min(__m512 v) {
  __m256 a = _mm256_min_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  __m128 b = _mm_min_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  b = _mm_min_ps(b, _mm_movehl_ps(b, b));
  b = _mm_min_ss(b, _mm_movehdup_ps(b));
  return _mm_cvtss_f32(b);
}

QMM_AVX512 float lane_max(__m512 v) {
  __m256 a = _mm256_max_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  __m128 b = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  b = _mm_max_ps(b, _mm_movehl_ps(b, b));
  b = _mm_max_ss(b, _mm_movehdup_ps(b));
  return _mm_cvtss_f32(b);
}

/// quantize_group_portable, 16 lanes at a time (count is a multiple of 32).
QMM_AVX512 format::GroupParams quantize_group_avx512(const float* v, int count, int bits, std::uint8_t* q) {
  float wmin, wmax;
  if (v[0] != v[0]) {
    // The reference starts from element 0 and no comparison with NaN succeeds.
    wmin = wmax = v[0];
  } else {
    // _mm512_min_ps(x, m) is "x < m ? x : m" per lane: the reference's step, NaN x skipped.
    // Without NaN left in the lanes the order of the final reduction cannot matter (only the
    // sign of a zero extreme could, and the parameters do not depend on it).
    __m512 lo = _mm512_set1_ps(v[0]), hi = lo;
    for (int i = 0; i < count; i += 16) {
      const __m512 x = _mm512_loadu_ps(v + i);
      lo = _mm512_min_ps(x, lo);
      hi = _mm512_max_ps(x, hi);
    }
    wmin = lane_min(lo);
    wmax = lane_max(hi);
  }
  const format::GroupParams gp = format::affine_group_params(wmin, wmax, bits);
  const __m512 bias = _mm512_set1_ps(gp.bias), scale = _mm512_set1_ps(gp.scale);
  const __m512 zero = _mm512_setzero_ps(), top = _mm512_set1_ps(static_cast<float>(format::max_level(bits)));
  for (int i = 0; i < count; i += 16) {
    const __m512 x = _mm512_loadu_ps(v + i);
    const __m512 r = _mm512_roundscale_ps(_mm512_div_ps(_mm512_sub_ps(x, bias), scale),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    // fmaxf(r, 0) then fminf(., n): max_ps(r, 0) returns 0 for a NaN r, as fmaxf does.
    const __m512 c = _mm512_min_ps(_mm512_max_ps(r, zero), top);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(c)));
  }
  return gp;
}

/// Rounds float32 lanes to bfloat16 the way float_to_bfloat16_bits does for non-NaN values
/// (add 0x7fff plus the kept lowest bit, truncate), returning the bf16 bits in the low half.
QMM_AVX512 __m512i bf16_bits(__m512 v) {
  const __m512i x = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
  return _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(x, _mm512_set1_epi32(0x7fff)), lsb), 16);
}

/// Rounds float32 lanes to `storage` (float16 with F16C, round to nearest even; bfloat16 as
/// above) and back. Exact counterparts of cpu::round_to for every non-NaN value.
QMM_AVX512 __m512 round_lanes(__m512 v, Dtype storage) {
  if (storage == Dtype::float16) {
    return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  if (storage == Dtype::bfloat16) return _mm512_castsi512_ps(_mm512_slli_epi32(bf16_bits(v), 16));
  return v;
}

/// The level table of one group, 16 levels at a time, for finite s and b (then no lane can be
/// NaN, the only values where the vector conversions and the scalar ones may differ).
template <typename T>
QMM_AVX512 void level_table_avx512(int bits, float s, float b, Dtype storage, Dtype out_dtype, T* table) {
  const __m512 vs = _mm512_set1_ps(s), vb = _mm512_set1_ps(b);
  const int levels = 1 << bits;
  for (int q0 = 0; q0 < levels; q0 += 16) {
    const __m512 q = _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_set1_epi32(q0),
                                                         _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)));
    // round(round(s * q) + b), as format::affine_dequantize_value.
    const __m512 v = round_lanes(_mm512_add_ps(round_lanes(_mm512_mul_ps(vs, q), storage), vb), storage);
    const __mmask16 keep = levels - q0 >= 16 ? 0xffff : static_cast<__mmask16>((1u << (levels - q0)) - 1u);
    if constexpr (sizeof(T) == 4) {
      _mm512_mask_storeu_ps(reinterpret_cast<float*>(table) + q0, keep, v);
    } else {
      const __m256i h = out_dtype == Dtype::float16 ? _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
                                                    : _mm512_cvtepi32_epi16(bf16_bits(v));
      _mm256_mask_storeu_epi16(reinterpret_cast<std::uint16_t*>(table) + q0, keep, h);
    }
  }
}

#pragma GCC diagnostic pop
#endif  // QMM_CPU_X86

using QuantizeGroup = format::GroupParams (*)(const float*, int, int, std::uint8_t*);

QuantizeGroup quantize_group_for_machine() {
#if defined(QMM_CPU_X86)
  if (cpu_has_avx512()) return &quantize_group_avx512;
#endif
  return &quantize_group_portable;
}

// ---- dequantize: one group ------------------------------------------------------------------

/// Output bits of every level of a group, computed with the reference's formula.
template <typename T>
void level_table(int bits, float s, float b, Dtype storage, Dtype out_dtype, T* table) {
  const auto round_storage = [storage](float v) { return cpu::round_to(storage, v); };
  for (std::uint32_t q = 0; q <= format::max_level(bits); ++q) {
    const float v = format::affine_dequantize_value(q, s, b, round_storage);
    cpu::store(table, out_dtype, q, v);
  }
}

/// Dequantizes rows [r0, r1) with output element type T (float or a 16-bit pattern).
template <typename T>
void dequantize_rows(const DequantizeProblem& p, std::int64_t r0, std::int64_t r1) {
  const auto& w = p.w;
  const std::int64_t words = packed_words(w.cols, w.bits), groups = w.cols / w.group_size;
  const Unpack32 unpack = unpack32_for(w.bits);
  const bool use_table = (1 << w.bits) <= w.group_size;
  const bool vector_tables = cpu_has_avx512();
  (void)vector_tables;  // only the x86 build has vector tables
  const auto round_storage = [storage = w.dtype](float v) { return cpu::round_to(storage, v); };
  std::vector<std::uint8_t> q(static_cast<std::size_t>(w.group_size));
  T table[256];
  T* out = static_cast<T*>(p.out);
  for (std::int64_t r = r0; r < r1; ++r) {
    const std::uint32_t* row = w.w_q + r * words;
    for (std::int64_t g = 0; g < groups; ++g) {
      for (int i = 0; i < w.group_size; i += 32) unpack(row + (g * w.group_size + i) / 32 * w.bits, &q[i]);
      const float s = cpu::load(w.scales, w.dtype, r * groups + g);
      const float b = cpu::load(w.biases, w.dtype, r * groups + g);
      T* o = out + r * w.cols + g * w.group_size;
      if (use_table) {
#if defined(QMM_CPU_X86)
        if (vector_tables && std::isfinite(s) && std::isfinite(b)) {
          level_table_avx512(w.bits, s, b, w.dtype, p.out_dtype, table);
        } else {
          level_table(w.bits, s, b, w.dtype, p.out_dtype, table);
        }
#else
        level_table(w.bits, s, b, w.dtype, p.out_dtype, table);
#endif
        for (int i = 0; i < w.group_size; ++i) o[i] = table[q[i]];
      } else {
        for (int i = 0; i < w.group_size; ++i) {
          cpu::store(o, p.out_dtype, i, format::affine_dequantize_value(q[i], s, b, round_storage));
        }
      }
    }
  }
}

}  // namespace

void quantize(const QuantizeProblem& p) {
  const std::int64_t words = packed_words(p.cols, p.bits);
  const std::int64_t groups = p.cols / p.group_size;
  const std::int64_t grain = std::max<std::int64_t>(1, 16384 / p.cols);
  const QuantizeGroup quantize_group = quantize_group_for_machine();
  const Pack32 pack = pack32_for(p.bits);
  const std::size_t item = itemsize(p.dtype);
  cpu::parallel_for(p.rows, grain, [&](std::int64_t r0, std::int64_t r1) {
    std::vector<float> row(static_cast<std::size_t>(p.cols));
    std::vector<std::uint8_t> q(static_cast<std::size_t>(p.group_size));
    for (std::int64_t r = r0; r < r1; ++r) {
      convert_to_float(static_cast<const char*>(p.w) + static_cast<std::size_t>(r * p.cols) * item, p.dtype, p.cols,
                       row.data());
      std::uint32_t* row_q = p.w_q + r * words;
      for (std::int64_t g = 0; g < groups; ++g) {
        const format::GroupParams gp = quantize_group(&row[static_cast<std::size_t>(g * p.group_size)], p.group_size,
                                                      p.bits, q.data());
        for (int i = 0; i < p.group_size; i += 32) pack(&q[static_cast<std::size_t>(i)], row_q + (g * p.group_size + i) / 32 * p.bits);
        cpu::store(p.scales, p.dtype, r * groups + g, gp.scale);
        cpu::store(p.biases, p.dtype, r * groups + g, gp.bias);
      }
    }
  });
}

void dequantize(const DequantizeProblem& p) {
  const std::int64_t grain = std::max<std::int64_t>(1, 16384 / p.w.cols);
  cpu::parallel_for(p.w.rows, grain, [&](std::int64_t r0, std::int64_t r1) {
    if (p.out_dtype == Dtype::float32) {
      dequantize_rows<float>(p, r0, r1);
    } else {
      dequantize_rows<std::uint16_t>(p, r0, r1);
    }
  });
}

}  // namespace qmm::detail::cpu_production
