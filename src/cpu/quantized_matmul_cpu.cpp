// CPU production quantized_matmul: weight-stationary. Every weight is read from memory once per
// call and decoded once per chunk of at most 8 rows of x, then applied to those rows while it
// sits in registers; x is converted to float32 once per call and accumulation is float32
// throughout (each weight is s*q+b rounded once to float32, then multiplied and added).
//
// Three code paths, chosen at run time (the library is compiled for generic x86-64, so the
// faster ones carry target attributes and run only after __builtin_cpu_supports said yes):
//   - AVX-512 (F, BW, VL, DQ, VBMI; e.g. Zen 4, Ice Lake and later). transpose=true, 2 and 4
//     bits: GroupTableDecoder -- a group's words are loaded once, spread over the 16 lanes and
//     advanced by one per-lane shift per vector, and vpermps looks each lane's low nibble up in a
//     16-entry table of s*q+b built once per group (x is permuted within groups to match). So 16
//     weights cost a shift and a vpermps, and each row of x one FMA. 3, 5, 6 and 8 bits decode 16
//     consecutive elements with a byte permute and shifts, or a widening load.
//   - generic C++ (src/cpu/matmul_generic.inc), compiled for AVX2 + FMA and for the baseline:
//     dequantize a block to float32 in L1, then dot products / axpys the compiler vectorises.
// QMM_CPU_ISA=avx2 or =portable lowers the choice (tests cover every path on one machine).
//
// transpose=true (W is N x K, the Linear layout): threads take chunks of output columns n and
// stream those weight rows; a tile of NT rows (4, 3 or 2, by M) is decoded in lock step and each
// decoded vector of 16 k meets up to 8 rows of x held in registers: MT*NT accumulators of 16
// lanes, reduced once per row at the end. transpose=false (W is K x N, grouped along n): threads
// take 128-column tiles, decode a block of 32 rows into an L1 buffer, and apply it to the rows of
// x as broadcast-x FMAs into 3 x 8 register accumulators.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
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

// ---- common pieces --------------------------------------------------------------------------

/// The float32 view of one slice of scales or biases: the data itself for float32, else `buf`
/// filled with the converted values.
const float* scales_as_float(const void* base, Dtype dtype, std::int64_t first, std::int64_t count,
                             std::vector<float>& buf) {
  if (dtype == Dtype::float32) return static_cast<const float*>(base) + first;
  buf.resize(static_cast<std::size_t>(count));
  convert_to_float(static_cast<const char*>(base) + first * static_cast<std::int64_t>(itemsize(dtype)), dtype, count,
                   buf.data());
  return buf.data();
}

/// Stores `count` float results at out[first...] in the output dtype.
void store_floats(void* out, Dtype dtype, std::int64_t first, const float* v, std::int64_t count) {
  switch (dtype) {
    case Dtype::float32:
      std::memcpy(static_cast<float*>(out) + first, v, static_cast<std::size_t>(count) * sizeof(float));
      return;
    case Dtype::float16: {
      auto* o = static_cast<std::uint16_t*>(out) + first;
      for (std::int64_t i = 0; i < count; ++i) o[i] = float_to_float16_bits(v[i]);
      return;
    }
    case Dtype::bfloat16: {
      auto* o = static_cast<std::uint16_t*>(out) + first;
      for (std::int64_t i = 0; i < count; ++i) o[i] = float_to_bfloat16_bits(v[i]);
      return;
    }
    case Dtype::uint32:
      break;
  }
  for (std::int64_t i = 0; i < count; ++i) cpu::store(out, dtype, first + i, v[i]);
}

struct AlignedDelete {
  void operator()(float* p) const { ::operator delete[](p, std::align_val_t{64}); }
};
struct AlignedDelete16 {
  void operator()(std::uint16_t* p) const { ::operator delete[](p, std::align_val_t{64}); }
};
/// Uninitialised floats on a 64-byte (cache line, zmm) boundary.
float* aligned_floats(std::int64_t count) {
  return static_cast<float*>(::operator new[](static_cast<std::size_t>(count) * sizeof(float), std::align_val_t{64}));
}
/// Uninitialised 16-bit values on a 64-byte boundary.
std::uint16_t* aligned_halves(std::int64_t count) {
  return static_cast<std::uint16_t*>(
      ::operator new[](static_cast<std::size_t>(count) * sizeof(std::uint16_t), std::align_val_t{64}));
}

/// Splits `total` rows into `parts` chunks as equal as possible; chunk c is [begin, end).
struct Chunks {
  std::int64_t total, parts;
  std::int64_t begin(std::int64_t c) const { return c * (total / parts) + std::min(c, total % parts); }
  std::int64_t end(std::int64_t c) const { return begin(c + 1); }
};

/// The code paths, best last: the generic C++ for the baseline instruction set, the same built
/// for AVX2 + FMA, the AVX-512 kernels, and those plus the BF16 kernel for 16-bit activations.
enum class Isa { portable, avx2, avx512, avx512_bf16 };

Isa machine_isa() {
#if defined(QMM_CPU_X86)
  static const Isa isa = [] {
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                        __builtin_cpu_supports("avx512vbmi");
    if (avx512) return __builtin_cpu_supports("avx512bf16") ? Isa::avx512_bf16 : Isa::avx512;
    return avx2 ? Isa::avx2 : Isa::portable;
  }();
  return isa;
#else
  return Isa::portable;
#endif
}

/// The machine's best path, or a lower one that QMM_CPU_ISA asks for ("portable", "avx2",
/// "avx512" = without the BF16 kernel); read per call so that a test can cover every path in one
/// process.
Isa selected_isa() {
  const Isa best = machine_isa();
  const char* env = std::getenv("QMM_CPU_ISA");
  if (env == nullptr) return best;
  if (std::strcmp(env, "portable") == 0) return Isa::portable;
  if (std::strcmp(env, "avx2") == 0) return std::min(best, Isa::avx2);
  if (std::strcmp(env, "avx512") == 0) return std::min(best, Isa::avx512);
  return best;
}

// ---- generic path: plain C++ for the vectoriser, built for two instruction sets -------------
namespace generic_baseline {
#include "src/cpu/matmul_generic.inc"
}  // namespace generic_baseline
#if defined(QMM_CPU_X86)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace generic_avx2 {
#include "src/cpu/matmul_generic.inc"
}  // namespace generic_avx2
#pragma GCC pop_options
#endif

// ---- AVX-512 path ---------------------------------------------------------------------------
#if defined(QMM_CPU_X86)
#define QMM_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,fma,f16c")))
// GCC 12's AVX-512 headers start unmasked intrinsics from _mm512_undefined_*(), which
// -Wuninitialized reports at every inlined use (a false positive inside the system headers).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

QMM_AVX512 void convert_to_float_avx512(const void* src, Dtype dtype, std::int64_t count, float* dst) {
  const auto* h = static_cast<const std::uint16_t*>(src);
  std::int64_t i = 0;
  if (dtype == Dtype::float16) {
    for (; i + 16 <= count; i += 16) {
      _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h + i))));
    }
  } else if (dtype == Dtype::bfloat16) {
    for (; i + 16 <= count; i += 16) {
      const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h + i)));
      _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16)));
    }
  }
  for (; i < count; ++i) dst[i] = cpu::load(src, dtype, i);
}

/// One scale or bias as float (F16C for float16).
QMM_AVX512 inline float load_one(const void* base, Dtype dtype, std::int64_t i) {
  switch (dtype) {
    case Dtype::float32:
      return static_cast<const float*>(base)[i];
    case Dtype::float16:
      return _cvtsh_ss(static_cast<const std::uint16_t*>(base)[i]);
    default:
      return cpu::load(base, dtype, i);
  }
}

QMM_AVX512 inline float hsum(__m512 v) {
  const __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  b = _mm_add_ps(b, _mm_movehl_ps(b, b));
  b = _mm_add_ss(b, _mm_movehdup_ps(b));
  return _mm_cvtss_f32(b);
}

// Consecutive decoders: decode(row, element, params) turns the 16 consecutive elements of a
// packed row starting at `element` (a multiple of 16) into dequantized float32 lanes, s*q + b.
// `Params` is the per-group state (a lookup table, or s and b) that params(s, b) builds at each
// group boundary.

/// 2 and 4 bits: vpmultishiftqb moves element i's bits to the low byte of lane i, and vpermps
/// reads lane i's low 4 bits as an index into the group's table of s * q + b.
template <int Bits>
struct TableDecoder {
  static_assert(Bits == 2 || Bits == 4, "table decoding needs 16 elements in one qword");
  __m512i control;  // byte 4i of the qword pair holding lane i: bit offset Bits * i
  __m512 levels;    // q for table entry v: v mod 2^Bits (the index's upper bits are other elements)
  QMM_AVX512 TableDecoder() {
    alignas(64) std::uint8_t c[64] = {};
    alignas(64) float l[16];
    for (int i = 0; i < 16; ++i) {
      c[4 * i] = static_cast<std::uint8_t>(Bits * i);
      l[i] = static_cast<float>(i & ((1 << Bits) - 1));
    }
    control = _mm512_load_si512(c);
    levels = _mm512_load_ps(l);
  }
  struct Params {
    __m512 table;
  };
  QMM_AVX512 Params params(float s, float b) const {
    return {_mm512_fmadd_ps(levels, _mm512_set1_ps(s), _mm512_set1_ps(b))};
  }
  QMM_AVX512 __m512 decode(const std::uint32_t* row, std::int64_t element, const Params& g) const {
    __m512i bits;
    if constexpr (Bits == 4) {
      long long v;
      std::memcpy(&v, row + element / 8, 8);
      bits = _mm512_set1_epi64(v);
    } else {
      bits = _mm512_set1_epi32(static_cast<int>(row[element / 16]));
    }
    return _mm512_permutexvar_ps(_mm512_multishift_epi64_epi8(control, bits), g.table);
  }
};

/// 3, 5 and 6 bits: 16 elements fill 2*Bits bytes. A masked byte permute gives lane i the two
/// bytes holding element i, a variable shift aligns it; 3 bits then use the table, 5 and 6 bits
/// convert and apply s and b with one FMA.
template <int Bits>
struct ByteDecoder {
  __m512i index;   // bytes 4i, 4i+1: the bytes holding element i
  __m512i shift;   // lane i: bit offset of element i within its first byte
  __m512i mask;    // 2^Bits - 1
  __m512 levels;   // 3 bits: table levels (index's bit 3 is another element's)
  QMM_AVX512 ByteDecoder() {
    alignas(64) std::uint8_t idx[64] = {};
    alignas(64) std::int32_t sh[16];
    alignas(64) float l[16];
    for (int i = 0; i < 16; ++i) {
      idx[4 * i] = static_cast<std::uint8_t>(Bits * i / 8);
      idx[4 * i + 1] = static_cast<std::uint8_t>(Bits * i / 8 + 1);
      sh[i] = Bits * i % 8;
      l[i] = static_cast<float>(i & ((1 << Bits) - 1));
    }
    index = _mm512_load_si512(idx);
    shift = _mm512_load_si512(sh);
    mask = _mm512_set1_epi32((1 << Bits) - 1);
    levels = _mm512_load_ps(l);
  }
  struct Params {
    __m512 a, b;  // 3 bits: a is the table; else a = s, b = b
  };
  QMM_AVX512 Params params(float s, float b) const {
    if constexpr (Bits == 3) return {_mm512_fmadd_ps(levels, _mm512_set1_ps(s), _mm512_set1_ps(b)), _mm512_setzero_ps()};
    return {_mm512_set1_ps(s), _mm512_set1_ps(b)};
  }
  QMM_AVX512 __m512 decode(const std::uint32_t* row, std::int64_t element, const Params& g) const {
    // Exactly the 2*Bits bytes of these 16 elements (a masked load never touches the rest).
    const auto* bytes = reinterpret_cast<const std::uint8_t*>(row) + element / 8 * Bits;
    const __m128i raw = _mm_maskz_loadu_epi8(static_cast<__mmask16>((1u << (2 * Bits)) - 1u), bytes);
    const __m512i pairs = _mm512_maskz_permutexvar_epi8(0x3333333333333333ull, index, _mm512_zextsi128_si512(raw));
    const __m512i q = _mm512_srlv_epi32(pairs, shift);
    if constexpr (Bits == 3) return _mm512_permutexvar_ps(q, g.a);
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(q, mask)), g.a, g.b);
  }
};

/// 8 bits: widen 16 bytes to 16 lanes, convert, one FMA.
struct WideDecoder {
  struct Params {
    __m512 s, b;
  };
  QMM_AVX512 Params params(float s, float b) const { return {_mm512_set1_ps(s), _mm512_set1_ps(b)}; }
  QMM_AVX512 __m512 decode(const std::uint32_t* row, std::int64_t element, const Params& g) const {
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + element / 4));
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(raw)), g.s, g.b);
  }
};

template <int Bits>
struct DecoderFor {
  using type = ByteDecoder<Bits>;
};
template <>
struct DecoderFor<2> {
  using type = TableDecoder<2>;
};
template <>
struct DecoderFor<4> {
  using type = TableDecoder<4>;
};
template <>
struct DecoderFor<8> {
  using type = WideDecoder;
};
/// Decodes 16 consecutive elements (transpose=false: 16 output columns of a row of W; 3, 5, 6
/// and 8 bits with transpose=true).
template <int Bits>
using ConsecutiveDecoder = typename DecoderFor<Bits>::type;

/// transpose=true, 2 and 4 bits: a group at a time, in a permuted order of k.
///
/// A group of G elements is D = G * Bits / 32 words, E = 32 / Bits elements each. The words are
/// loaded once and replicated R = 16 / D times across the 16 lanes; lane l = r * D + j holds
/// word j pre-shifted right by Bits * r. The group's vector v is then, in lane l, element
/// E * j + v * R + r in its low bits, and one shift by Bits * R moves every lane to vector v + 1.
/// vpermps reads a lane's low 4 bits as an index into the group's 16-entry table of s * q + b,
/// so decoding costs one shift (which runs beside the FMAs) and one vpermps per 16 weights. x
/// is permuted the same way once per call (element_at), so every product pairs up. The group
/// size is a template parameter so that the group's loop unrolls and its load is one broadcast.
template <int Bits, int G>
struct GroupTableDecoder {
  static_assert(Bits == 2 || Bits == 4, "16-entry tables need at most 4 bits");
  static constexpr int kGroup = G;
  static constexpr int kWords = G * Bits / 32;  // D
  static constexpr int kReplicas = 16 / kWords;  // R
  __m512i base;   // lane l: Bits * r
  __m512i step;   // Bits * R in every lane (a per-lane shift: a shift by an xmm count would compete with FMAs)
  __m512 levels;  // table entry v: q = v mod 2^Bits (the index's upper bits belong to other elements)
  QMM_AVX512 explicit GroupTableDecoder(int) {
    alignas(64) std::int32_t sh[16];
    alignas(64) float l[16];
    for (int i = 0; i < 16; ++i) {
      sh[i] = Bits * (i / kWords);
      l[i] = static_cast<float>(i & ((1 << Bits) - 1));
    }
    base = _mm512_load_si512(sh);
    step = _mm512_set1_epi32(Bits * kReplicas);
    levels = _mm512_load_ps(l);
  }
  /// Position p = v * 16 + l of a permuted group holds element element_at(p) of the group.
  static int element_at(int p) {
    const int v = p / 16, l = p % 16;
    return (32 / Bits) * (l % kWords) + v * kReplicas + l / kWords;
  }
  struct State {
    __m512i data;
    __m512 table;
  };
  /// `w`: the group's first word; `s`, `b`: its scale and bias.
  QMM_AVX512 State start(const std::uint32_t* w, std::int64_t, const float* s, const float* b) const {
    __m512i v;
    if constexpr (kWords == 2) {
      long long q;
      std::memcpy(&q, w, 8);
      v = _mm512_set1_epi64(q);
    } else if constexpr (kWords == 4) {
      v = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w)));
    } else if constexpr (kWords == 8) {
      v = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)));
    } else {
      v = _mm512_loadu_si512(w);
    }
    // Broadcasts straight from memory: a broadcast from a register would take a shuffle slot.
    const __m512 table = _mm512_fmadd_ps(levels, _mm512_broadcastss_ps(_mm_load_ss(s)),
                                         _mm512_broadcastss_ps(_mm_load_ss(b)));
    return {_mm512_srlv_epi32(v, base), table};
  }
  QMM_AVX512 __m512 next(State& st) const {
    const __m512 w = _mm512_permutexvar_ps(st.data, st.table);
    st.data = _mm512_srlv_epi32(st.data, step);
    return w;
  }
};

/// transpose=true, 3, 5, 6 and 8 bits: 16 consecutive elements at a time, k in order, any group
/// size (kGroup = 0: the kernel takes it at run time).
template <int Bits>
struct StreamDecoder {
  static constexpr int kGroup = 0;
  ConsecutiveDecoder<Bits> dec;
  QMM_AVX512 explicit StreamDecoder(int) {}
  static int element_at(int p) { return p; }
  struct State {
    const std::uint32_t* row;
    std::int64_t element;
    typename ConsecutiveDecoder<Bits>::Params params;
  };
  /// `w`: the group's first word; `first`: the group's first element; `s`, `b`: scale, bias.
  QMM_AVX512 State start(const std::uint32_t* w, std::int64_t first, const float* s, const float* b) const {
    // decode() addresses elements from the start of the row: rebase the pointer.
    return {w - first * Bits / 32, first, dec.params(*s, *b)};
  }
  QMM_AVX512 __m512 next(State& st) const {
    const __m512 w = dec.decode(st.row, st.element, st.params);
    st.element += 16;
    return w;
  }
};

/// Prefetches weight bytes kPrefetchBytes ahead of a row being decoded, into L2. A tile streams
/// NT rows at once and the hardware prefetchers stop at every 4 KiB page, so without help each
/// core stalls on DRAM. Measured on Zen 4, one core, cold gate_up: no prefetch 5.2 ms at M=1,
/// 12 KiB ahead into L1 3.0-3.5 ms, 24-48 KiB ahead into L2 2.7-2.9 ms (32 KiB kept); M=4 and
/// M=8 gain 10-15 % as well. (The distance is in bytes of a row; rows are contiguous, so far
/// ahead means the next tiles' rows.)
constexpr std::int64_t kPrefetchBytes = 32 * 1024;
QMM_AVX512 inline void prefetch_weights(const void* p) {
  _mm_prefetch(static_cast<const char*>(p) + kPrefetchBytes, _MM_HINT_T1);
}
/// The first kPrefetchBytes of a chunk of rows, which the running prefetch of the previous rows
/// did not cover: for a small layer (k_v: chunks of 64 rows, 160 KiB) that is a fifth of a chunk.
QMM_AVX512 inline void prefetch_chunk_start(const void* p, std::int64_t bytes) {
  const auto* c = static_cast<const char*>(p);
  for (std::int64_t i = 0; i < std::min(bytes, kPrefetchBytes); i += 64) _mm_prefetch(c + i, _MM_HINT_T1);
}

/// transpose=true micro-kernel: NT weight rows x MT rows of x over all of K.
///   w_rows[r]: packed row r of the tile; s, b: its float32 scales and biases (row stride
///   `groups`); x: MT rows of stride ldx (permuted within groups as the decoder wants);
///   result[m * NT + r] = sum_k x[m, k] * w[r, k].
/// x comes from L1/L2 (K x MT floats, 64-byte aligned rows); each decoded vector of 16 weights
/// meets the MT rows in registers.
template <class Dec, int MT, int NT>
QMM_AVX512 void transposed_tile(const Dec& dec, const std::uint32_t* const* w_rows, const float* s, const float* b,
                                std::int64_t groups, int group_size, int bits, const float* x, std::int64_t ldx,
                                float* result) {
  const int g = Dec::kGroup > 0 ? Dec::kGroup : group_size;
  const std::int64_t group_words = g * bits / 32, group_bytes = 4 * group_words;
  __m512 acc[NT][MT];
#pragma GCC unroll 8
  for (int r = 0; r < NT; ++r) {
#pragma GCC unroll 8
    for (int m = 0; m < MT; ++m) acc[r][m] = _mm512_setzero_ps();
  }
  for (std::int64_t gi = 0; gi < groups; ++gi) {
    const std::int64_t k0 = gi * g;
    typename Dec::State state[NT];
#pragma GCC unroll 8
    for (int r = 0; r < NT; ++r) {
      state[r] = dec.start(w_rows[r] + gi * group_words, k0, s + r * groups + gi, b + r * groups + gi);
      prefetch_weights(reinterpret_cast<const char*>(w_rows[r]) + gi * group_bytes);
    }
    const float* xg = x + k0;
#pragma GCC unroll 8
    for (int k = 0; k < g; k += 16) {
      __m512 wv[NT];
#pragma GCC unroll 8
      for (int r = 0; r < NT; ++r) wv[r] = dec.next(state[r]);
#pragma GCC unroll 8
      for (int m = 0; m < MT; ++m) {
        const __m512 xv = _mm512_load_ps(xg + m * ldx + k);
#pragma GCC unroll 8
        for (int r = 0; r < NT; ++r) acc[r][m] = _mm512_fmadd_ps(wv[r], xv, acc[r][m]);
      }
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MT; ++m) {
#pragma GCC unroll 8
    for (int r = 0; r < NT; ++r) result[m * NT + r] = hsum(acc[r][m]);
  }
}

template <class Dec>
using TransposedTileFn = void (*)(const Dec&, const std::uint32_t* const*, const float*, const float*, std::int64_t,
                                  int, int, const float*, std::int64_t, float*);

/// A tile shape: NT weight rows, and the numbers of rows of x (chunks of M) it serves.
template <int NT_, int kMinRows_, int kMaxRows_>
struct TileShape {
  static constexpr int NT = NT_, kMinRows = kMinRows_, kMaxRows = kMaxRows_;
};

/// The micro-kernel for `mt` rows of x; only kMinRows..kMaxRows are instantiated.
template <class Dec, class Shape>
TransposedTileFn<Dec> transposed_tile_for(int mt) {
  static_assert(Shape::kMinRows >= 1 && Shape::kMaxRows <= 8, "");
#define QMM_TILE_CASE(R) \
  case R:                \
    if constexpr (Shape::kMinRows <= R && R <= Shape::kMaxRows) return &transposed_tile<Dec, R, Shape::NT>; \
    break;
  switch (mt) {
    QMM_TILE_CASE(1)
    QMM_TILE_CASE(2)
    QMM_TILE_CASE(3)
    QMM_TILE_CASE(4)
    QMM_TILE_CASE(5)
    QMM_TILE_CASE(6)
    QMM_TILE_CASE(7)
    QMM_TILE_CASE(8)
  }
#undef QMM_TILE_CASE
  return nullptr;
}

/// transpose=true for one decoder and tile shape, weight-row tiles [t0, t1) (one thread's
/// share). M is cut into equal chunks of at most kMaxRows rows of x (at least kMinRows each,
/// which the shape choice guarantees); a tile runs every chunk back to back, so after the first
/// chunk its weights (NT x K * Bits / 8 bytes) come from L1/L2 and DRAM sees them once.
template <class Dec, class Shape>
QMM_AVX512 void avx512_transposed_tiles(const MatmulProblem& p, const float* x, std::int64_t ldx, std::int64_t t0,
                                        std::int64_t t1) {
  constexpr int NT = Shape::NT;
  const auto& w = p.w;
  const std::int64_t M = p.M, N = p.N, K = p.K;
  const std::int64_t words = format::packed_words(K, w.bits), groups = K / w.group_size;
  const Chunks m_chunks{M, (M + Shape::kMaxRows - 1) / Shape::kMaxRows};
  const Dec dec(w.group_size);
  float out[Shape::kMaxRows * NT];
  // Per thread, kept across calls: a chunk of tiles is short for small layers, and allocating
  // the scale buffers per chunk showed up there.
  thread_local std::vector<float> sbuf, bbuf, spad, bpad;
  prefetch_chunk_start(w.w_q + t0 * NT * words, (std::min(N, t1 * NT) - t0 * NT) * words * 4);
  for (std::int64_t t = t0; t < t1; ++t) {
    const std::int64_t n0 = t * NT, rows = std::min<std::int64_t>(NT, N - n0);
    const float* s = scales_as_float(w.scales, w.dtype, n0 * groups, rows * groups, sbuf);
    const float* b = scales_as_float(w.biases, w.dtype, n0 * groups, rows * groups, bbuf);
    if (rows < NT) {
      // The partial last tile repeats its last row; those results are dropped.
      spad.assign(s, s + rows * groups);
      bpad.assign(b, b + rows * groups);
      for (std::int64_t r = rows; r < NT; ++r) {
        spad.insert(spad.end(), s + (rows - 1) * groups, s + rows * groups);
        bpad.insert(bpad.end(), b + (rows - 1) * groups, b + rows * groups);
      }
      s = spad.data();
      b = bpad.data();
    }
    const std::uint32_t* w_rows[NT];
    for (int r = 0; r < NT; ++r) w_rows[r] = w.w_q + (n0 + std::min<std::int64_t>(r, rows - 1)) * words;
    for (std::int64_t c = 0; c < m_chunks.parts; ++c) {
      const std::int64_t m0 = m_chunks.begin(c), mt = m_chunks.end(c) - m0;
      transposed_tile_for<Dec, Shape>(static_cast<int>(mt))(dec, w_rows, s, b, groups, w.group_size, w.bits,
                                                            x + m0 * ldx, ldx, out);
      for (std::int64_t m = 0; m < mt; ++m) store_floats(p.out, p.out_dtype, (m0 + m) * N + n0, out + m * NT, rows);
    }
  }
}

template <class Dec, class Shape>
void avx512_transposed_shape(const MatmulProblem& p, const float* x, std::int64_t ldx) {
  const std::int64_t tiles = (p.N + Shape::NT - 1) / Shape::NT;
  cpu::parallel_for(tiles, 4, [&](std::int64_t t0, std::int64_t t1) {
    avx512_transposed_tiles<Dec, Shape>(p, x, ldx, t0, t1);
  });
}

/// Picks the tile shape for M: few rows of x leave registers for more weight rows in flight
/// (NT * MT accumulators, NT decoder states and NT decoded vectors share the 32 zmm registers).
/// 4 bits (the format that matters most) has three shapes: M <= 4 takes 4 weight rows; M = 5, 6
/// three; M >= 7 two, with M cut into equal chunks of 4..8 rows. Other widths take two weight
/// rows and chunks of at most 4 rows.
template <class Dec, bool kWideShapes>
void avx512_transposed_for_m(const MatmulProblem& p, const float* x, std::int64_t ldx) {
  if constexpr (!kWideShapes) {
    return avx512_transposed_shape<Dec, TileShape<2, 1, 4>>(p, x, ldx);
  } else {
    if (p.M <= 4) return avx512_transposed_shape<Dec, TileShape<4, 1, 4>>(p, x, ldx);
    if (p.M <= 6) return avx512_transposed_shape<Dec, TileShape<3, 5, 6>>(p, x, ldx);
    return avx512_transposed_shape<Dec, TileShape<2, 4, 8>>(p, x, ldx);
  }
}

template <int Bits>
void avx512_transposed(const MatmulProblem& p, const float* x, std::int64_t ldx) {
  if constexpr (Bits == 2 || Bits == 4) {
    constexpr bool wide = Bits == 4;
    switch (p.w.group_size) {
      case 32: return avx512_transposed_for_m<GroupTableDecoder<Bits, 32>, wide>(p, x, ldx);
      case 64: return avx512_transposed_for_m<GroupTableDecoder<Bits, 64>, wide>(p, x, ldx);
      default: return avx512_transposed_for_m<GroupTableDecoder<Bits, 128>, wide>(p, x, ldx);
    }
  } else {
    return avx512_transposed_for_m<StreamDecoder<Bits>, false>(p, x, ldx);
  }
}

/// transpose=false micro-kernel: adds x[m, k] * W[k, 0:128] for a block of `rows` k to the
/// accumulators acc[m][0:128] of MT rows of x (acc in memory between blocks, in registers
/// within one).
template <int MT>
QMM_AVX512 void plain_block(const float* wbuf, std::int64_t rows, const float* x, std::int64_t ldx, float* acc) {
  constexpr int kVectors = 8;
  __m512 a[MT][kVectors];
#pragma GCC unroll 8
  for (int m = 0; m < MT; ++m) {
#pragma GCC unroll 8
    for (int j = 0; j < kVectors; ++j) a[m][j] = _mm512_loadu_ps(acc + m * 16 * kVectors + 16 * j);
  }
  for (std::int64_t r = 0; r < rows; ++r) {
    __m512 xb[MT];
#pragma GCC unroll 8
    for (int m = 0; m < MT; ++m) xb[m] = _mm512_set1_ps(x[m * ldx + r]);
#pragma GCC unroll 8
    for (int j = 0; j < kVectors; ++j) {
      const __m512 wv = _mm512_loadu_ps(wbuf + r * 16 * kVectors + 16 * j);
#pragma GCC unroll 8
      for (int m = 0; m < MT; ++m) a[m][j] = _mm512_fmadd_ps(wv, xb[m], a[m][j]);
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MT; ++m) {
#pragma GCC unroll 8
    for (int j = 0; j < kVectors; ++j) _mm512_storeu_ps(acc + m * 16 * kVectors + 16 * j, a[m][j]);
  }
}

/// transpose=false for output-column tiles [t0, t1) of 128 columns.
template <int Bits>
QMM_AVX512 void avx512_plain_tiles(const MatmulProblem& p, const float* x, std::int64_t ldx, std::int64_t t0,
                                   std::int64_t t1) {
  const auto& w = p.w;
  const std::int64_t M = p.M, N = p.N, K = p.K;
  const std::int64_t words = format::packed_words(N, Bits), groups = N / w.group_size;
  constexpr std::int64_t kWidth = 128, kBlock = 32, kMaxRows = 3;
  const ConsecutiveDecoder<Bits> dec;
  std::vector<float> wbuf(static_cast<std::size_t>(kBlock * kWidth)), acc(static_cast<std::size_t>(M * kWidth));
  for (std::int64_t t = t0; t < t1; ++t) {
    const std::int64_t c0 = t * kWidth, width = std::min(kWidth, N - c0);
    std::fill(acc.begin(), acc.end(), 0.0f);
    std::fill(wbuf.begin(), wbuf.end(), 0.0f);  // columns past N stay zero
    for (std::int64_t k0 = 0; k0 < K; k0 += kBlock) {
      const std::int64_t rows = std::min(kBlock, K - k0);
      for (std::int64_t r = 0; r < rows; ++r) {
        const std::int64_t k = k0 + r;
        const std::uint32_t* row = w.w_q + k * words;
        const std::int64_t g0 = k * groups + c0 / w.group_size;  // c0 is a multiple of every group size
        float* out = &wbuf[static_cast<std::size_t>(r * kWidth)];
        for (std::int64_t j0 = 0, gi = g0; j0 < width; j0 += w.group_size, ++gi) {
          const auto g = dec.params(load_one(w.scales, w.dtype, gi), load_one(w.biases, w.dtype, gi));
          for (std::int64_t j = j0; j < j0 + w.group_size; j += 16) _mm512_storeu_ps(out + j, dec.decode(row, c0 + j, g));
        }
      }
      for (std::int64_t m0 = 0; m0 < M; m0 += kMaxRows) {
        const std::int64_t mt = std::min(kMaxRows, M - m0);
        const float* xm = x + m0 * ldx + k0;
        float* am = &acc[static_cast<std::size_t>(m0 * kWidth)];
        if (mt == 3) {
          plain_block<3>(wbuf.data(), rows, xm, ldx, am);
        } else if (mt == 2) {
          plain_block<2>(wbuf.data(), rows, xm, ldx, am);
        } else {
          plain_block<1>(wbuf.data(), rows, xm, ldx, am);
        }
      }
    }
    for (std::int64_t m = 0; m < M; ++m) {
      store_floats(p.out, p.out_dtype, m * N + c0, &acc[static_cast<std::size_t>(m * kWidth)], width);
    }
  }
}

template <int Bits>
void avx512_plain(const MatmulProblem& p, const float* x, std::int64_t ldx) {
  const std::int64_t tiles = (p.N + 127) / 128;
  cpu::parallel_for(tiles, 1, [&](std::int64_t t0, std::int64_t t1) { avx512_plain_tiles<Bits>(p, x, ldx, t0, t1); });
}

template <int Bits>
void avx512_matmul(const MatmulProblem& p, const float* x, std::int64_t ldx) {
  if (p.transpose) {
    avx512_transposed<Bits>(p, x, ldx);
  } else {
    avx512_plain<Bits>(p, x, ldx);
  }
}

/// Where the AVX-512 path wants x permuted within each group (see GroupTableDecoder): position
/// p of a permuted group holds the group's element perm[p]. Empty: x in order.
/// dst[k0 + i] = src[k0 + perm[i]] for every group k0 (16 gathered lanes at a time).
QMM_AVX512 void permute_groups_avx512(const float* src, std::int64_t K, int group_size, const int* perm, float* dst) {
  for (std::int64_t k0 = 0; k0 < K; k0 += group_size) {
    for (int i = 0; i < group_size; i += 16) {
      const __m512i idx = _mm512_loadu_si512(perm + i);
      _mm512_storeu_ps(dst + k0 + i, _mm512_i32gather_ps(idx, src + k0, 4));
    }
  }
}

std::vector<int> avx512_x_permutation(const MatmulProblem& p) {
  std::vector<int> perm;
  if (!p.transpose || (p.w.bits != 2 && p.w.bits != 4)) return perm;
  perm.resize(static_cast<std::size_t>(p.w.group_size));
  for (int i = 0; i < p.w.group_size; ++i) {
    int e = 0;
    switch (p.w.bits * 1000 + p.w.group_size) {
      case 2032: e = GroupTableDecoder<2, 32>::element_at(i); break;
      case 2064: e = GroupTableDecoder<2, 64>::element_at(i); break;
      case 2128: e = GroupTableDecoder<2, 128>::element_at(i); break;
      case 4032: e = GroupTableDecoder<4, 32>::element_at(i); break;
      case 4064: e = GroupTableDecoder<4, 64>::element_at(i); break;
      default: e = GroupTableDecoder<4, 128>::element_at(i); break;
    }
    perm[static_cast<std::size_t>(i)] = e;
  }
  return perm;
}

void avx512_dispatch(const MatmulProblem& p, const float* x, std::int64_t ldx) {
  switch (p.w.bits) {
    case 2: return avx512_matmul<2>(p, x, ldx);
    case 3: return avx512_matmul<3>(p, x, ldx);
    case 4: return avx512_matmul<4>(p, x, ldx);
    case 5: return avx512_matmul<5>(p, x, ldx);
    case 6: return avx512_matmul<6>(p, x, ldx);
    default: return avx512_matmul<8>(p, x, ldx);
  }
}
// ---- AVX-512 BF16 path: 4-bit weights, M <= 2 ------------------------------------------------
//
// vdpbf16ps multiplies 32 bf16 pairs per instruction and accumulates in float32. The levels q
// (0..15) are exact in bf16, and x splits exactly into bf16 pieces: one for bfloat16, two for
// float16 (11 significant bits in 8 + 8), three for float32 (24 bits). Decoding then fills 32
// lanes per vpermw instead of 16 per vpermps, which is what limits small M. The scale and bias
// move out of the table: per group and row of x,
//     sum_k x (s q + b)  =  s * (sum_k x q)  +  b * (sum_k x),
// with sum x q accumulated in float32 by vdpbf16ps (every product exact), scaled by s once per
// group, and the b * sum x terms added per output from per-group sums of x computed once per
// call. This is the arithmetic DESIGN.md section 4 describes for the GPU; the error bound is the
// float32 one. Measured (one core, weights in L2): float16 M=1 6.2 -> 8.3 weights/cycle, M=2
// 4.3 -> 5.2; at M=3 and beyond the per-group scaling costs more than the decoding saves (3.6 ->
// 3.1 at M=3), and float32 gains only at M=1 (k_v: 126 -> 98 us hot), so the rest stays on the
// FMA kernels.
#define QMM_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx512bf16,fma,f16c")))

/// GroupTableDecoder for 16-bit lanes: a group of G 4-bit elements is D = G / 4 halfwords,
/// replicated R = 32 / D times over the 32 lanes; lane L = r * D + j is pre-shifted by 4 r, so
/// vector v holds element 4 j + v R + r in the low bits of lane L, and vpermw looks it up in a
/// constant 32-entry table of bf16(q) (the index's bit 4 belongs to the next element, so the
/// table repeats).
template <int G>
struct Bf16GroupDecoder {
  static constexpr int kHalfwords = G / 4, kReplicas = 32 / kHalfwords, kVectors = G / 32;
  __m512i base, table;
  QMM_AVX512_BF16 Bf16GroupDecoder() {
    alignas(64) std::uint16_t sh[32], t[32];
    for (int l = 0; l < 32; ++l) {
      sh[l] = static_cast<std::uint16_t>(4 * (l / kHalfwords));
      t[l] = float_to_bfloat16_bits(static_cast<float>(l & 15));
    }
    base = _mm512_load_si512(sh);
    table = _mm512_load_si512(t);
  }
  static int element_at(int p) {
    const int v = p / 32, l = p % 32;
    return 4 * (l % kHalfwords) + v * kReplicas + l / kHalfwords;
  }
  /// The group's G / 8 words, replicated and pre-shifted.
  QMM_AVX512_BF16 __m512i load(const std::uint32_t* w) const {
    __m512i v;
    if constexpr (G == 32) {
      v = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w)));
    } else if constexpr (G == 64) {
      v = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)));
    } else {
      v = _mm512_loadu_si512(w);
    }
    return _mm512_srlv_epi16(v, base);
  }
  QMM_AVX512_BF16 __m512bh levels(__m512i data) const {
    return reinterpret_cast<__m512bh>(_mm512_permutexvar_epi16(data, table));
  }
  QMM_AVX512_BF16 static __m512i advance(__m512i data) { return _mm512_srli_epi16(data, 4 * kReplicas); }
};

/// result[m * NT + r] = sum_g s[r, g] * sum_{k in g} x[m, k] q[r, k] for NT weight rows and MT
/// rows of x. xp: bf16 pieces of x, piece p of row m at xp + (m * kPieces + p) * ldp, permuted
/// within groups as the decoder wants.
template <int G, int MT, int NT, int kPieces>
QMM_AVX512_BF16 void bf16_tile(const Bf16GroupDecoder<G>& dec, const std::uint32_t* const* w_rows, const float* s,
                               std::int64_t groups, const std::uint16_t* xp, std::int64_t ldp, float* result) {
  constexpr std::int64_t kGroupWords = G / 8;
  __m512 acc[NT][MT];
#pragma GCC unroll 8
  for (int r = 0; r < NT; ++r) {
#pragma GCC unroll 8
    for (int m = 0; m < MT; ++m) acc[r][m] = _mm512_setzero_ps();
  }
  for (std::int64_t gi = 0; gi < groups; ++gi) {
    __m512i data[NT];
    __m512 group_acc[NT][MT];
#pragma GCC unroll 8
    for (int r = 0; r < NT; ++r) {
      data[r] = dec.load(w_rows[r] + gi * kGroupWords);
      prefetch_weights(w_rows[r] + gi * kGroupWords);
#pragma GCC unroll 8
      for (int m = 0; m < MT; ++m) group_acc[r][m] = _mm512_setzero_ps();
    }
#pragma GCC unroll 4
    for (int v = 0; v < Bf16GroupDecoder<G>::kVectors; ++v) {
      __m512bh q[NT];
#pragma GCC unroll 8
      for (int r = 0; r < NT; ++r) {
        q[r] = dec.levels(data[r]);
        data[r] = dec.advance(data[r]);
      }
#pragma GCC unroll 8
      for (int m = 0; m < MT; ++m) {
#pragma GCC unroll 3
        for (int piece = 0; piece < kPieces; ++piece) {
          const __m512bh xv = reinterpret_cast<__m512bh>(
              _mm512_load_si512(xp + (m * kPieces + piece) * ldp + gi * G + 32 * v));
#pragma GCC unroll 8
          for (int r = 0; r < NT; ++r) group_acc[r][m] = _mm512_dpbf16_ps(group_acc[r][m], q[r], xv);
        }
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < NT; ++r) {
      const __m512 sv = _mm512_broadcastss_ps(_mm_load_ss(s + r * groups + gi));
#pragma GCC unroll 8
      for (int m = 0; m < MT; ++m) acc[r][m] = _mm512_fmadd_ps(group_acc[r][m], sv, acc[r][m]);
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MT; ++m) {
#pragma GCC unroll 8
    for (int r = 0; r < NT; ++r) result[m * NT + r] = hsum(acc[r][m]);
  }
}

/// sum_i a[i] * b[i], 16 lanes at a time.
QMM_AVX512_BF16 float dot_avx512(const float* a, const float* b, std::int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  std::int64_t i = 0;
  for (; i + 16 <= n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
  if (i < n) {
    const __mmask16 tail = static_cast<__mmask16>((1u << (n - i)) - 1u);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, a + i), _mm512_maskz_loadu_ps(tail, b + i), acc);
  }
  return hsum(acc);
}

/// Weight-row tiles [t0, t1): the tile kernel for the sum x q s part, then the b * sum x part.
template <int G, int MT, int NT, int kPieces>
QMM_AVX512_BF16 void bf16_tiles(const MatmulProblem& p, const std::uint16_t* xp, std::int64_t ldp, const float* xsum,
                                std::int64_t t0, std::int64_t t1) {
  const auto& w = p.w;
  const std::int64_t N = p.N, K = p.K, words = format::packed_words(K, 4), groups = K / G;
  const Bf16GroupDecoder<G> dec;
  float out[MT * NT];
  thread_local std::vector<float> sbuf, bbuf, spad;  // per thread, kept across calls
  prefetch_chunk_start(w.w_q + t0 * NT * words, (std::min(N, t1 * NT) - t0 * NT) * words * 4);
  for (std::int64_t t = t0; t < t1; ++t) {
    const std::int64_t n0 = t * NT, rows = std::min<std::int64_t>(NT, N - n0);
    const float* s = scales_as_float(w.scales, w.dtype, n0 * groups, rows * groups, sbuf);
    const float* b = scales_as_float(w.biases, w.dtype, n0 * groups, rows * groups, bbuf);
    if (rows < NT) {  // the partial last tile repeats its last row; those results are dropped
      spad.assign(s, s + rows * groups);
      for (std::int64_t r = rows; r < NT; ++r) spad.insert(spad.end(), s + (rows - 1) * groups, s + rows * groups);
      s = spad.data();
    }
    const std::uint32_t* w_rows[NT];
    for (int r = 0; r < NT; ++r) w_rows[r] = w.w_q + (n0 + std::min<std::int64_t>(r, rows - 1)) * words;
    bf16_tile<G, MT, NT, kPieces>(dec, w_rows, s, groups, xp, ldp, out);
    for (int m = 0; m < MT; ++m) {
      for (std::int64_t r = 0; r < rows; ++r) out[m * NT + r] += dot_avx512(b + r * groups, xsum + m * groups, groups);
      store_floats(p.out, p.out_dtype, m * N + n0, out + m * NT, rows);
    }
  }
}

/// Rounds float32 to bfloat16 bits like float_to_bfloat16_bits for every non-NaN value (x is
/// finite here or the output is NaN anyway).
QMM_AVX512_BF16 __m256i bf16_round(__m512 v) {
  const __m512i x = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(x, _mm512_set1_epi32(0x7fff)), lsb), 16));
}

/// x as bf16 pieces, permuted within groups, and its per-group sums in float32. Piece 0 is x
/// rounded to bf16 and each further piece the rest rounded again: with kPieces = 1 for bfloat16,
/// 2 for float16 (11 significant bits) and 3 for float32 (24), the pieces add up to x exactly.
/// Returns false, having written nothing useful, if x holds a nonzero |x| < 2^-100: vdpbf16ps
/// treats bf16 subnormals as zero and flushes subnormal sums, and with every nonzero piece at
/// least 2^-100 * 2^-17 (and a multiple of 2^-123) neither can happen.
template <int G, int kPieces>
QMM_AVX512_BF16 bool bf16_prepare_x(const MatmulProblem& p, std::uint16_t* xp, std::int64_t ldp, float* xsum) {
  const std::int64_t K = p.K, groups = K / G;
  std::vector<float> row(static_cast<std::size_t>(K)), permuted(static_cast<std::size_t>(K));
  alignas(64) std::int32_t perm[G];
  for (int i = 0; i < G; ++i) perm[i] = Bf16GroupDecoder<G>::element_at(i);
  const __m512 tiny = _mm512_set1_ps(0x1p-100f);
  for (std::int64_t m = 0; m < p.M; ++m) {
    convert_to_float(static_cast<const char*>(p.x) + static_cast<std::size_t>(m * K) * itemsize(p.x_dtype), p.x_dtype, K,
                     row.data());
    __mmask16 too_small = 0;
    for (std::int64_t g = 0; g < groups; ++g) {
      const float* xg = row.data() + g * G;
      __m512 sum = _mm512_setzero_ps();
      for (int i = 0; i < G; i += 16) {
        const __m512 v = _mm512_loadu_ps(xg + i);
        sum = _mm512_add_ps(sum, v);
        const __m512 a = _mm512_abs_ps(v);
        too_small |= _mm512_cmp_ps_mask(a, tiny, _CMP_LT_OQ) & _mm512_cmp_ps_mask(a, _mm512_setzero_ps(), _CMP_NEQ_OQ);
        _mm512_storeu_ps(permuted.data() + g * G + i, _mm512_i32gather_ps(_mm512_load_si512(perm + i), xg, 4));
      }
      xsum[m * groups + g] = hsum(sum);
    }
    if (too_small != 0) return false;
    for (std::int64_t k = 0; k < K; k += 16) {
      __m512 rest = _mm512_loadu_ps(permuted.data() + k);
#pragma GCC unroll 3
      for (int pc = 0; pc < kPieces; ++pc) {
        const __m256i piece = bf16_round(rest);
        _mm256_store_si256(reinterpret_cast<__m256i*>(xp + (m * kPieces + pc) * ldp + k), piece);
        rest = _mm512_sub_ps(rest, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(piece), 16)));
      }
    }
  }
  return true;
}

template <int G, int MT, int NT, int kPieces>
bool bf16_matmul_shape(const MatmulProblem& p) {
  const std::int64_t groups = p.K / G, ldp = p.K + 32;  // rows 64-byte aligned
  std::unique_ptr<std::uint16_t[], AlignedDelete16> xp(aligned_halves(p.M * kPieces * ldp));
  std::vector<float> xsum(static_cast<std::size_t>(p.M * groups));
  if (!bf16_prepare_x<G, kPieces>(p, xp.get(), ldp, xsum.data())) return false;
  const std::int64_t tiles = (p.N + NT - 1) / NT;
  cpu::parallel_for(tiles, 4, [&](std::int64_t t0, std::int64_t t1) {
    bf16_tiles<G, MT, NT, kPieces>(p, xp.get(), ldp, xsum.data(), t0, t1);
  });
  return true;
}

template <int G, int kPieces>
bool bf16_matmul_group(const MatmulProblem& p) {
  if (p.M == 1) return bf16_matmul_shape<G, 1, 4, kPieces>(p);
  return bf16_matmul_shape<G, 2, 4, kPieces>(p);
}

template <int kPieces>
bool bf16_matmul_pieces(const MatmulProblem& p) {
  switch (p.w.group_size) {
    case 32: return bf16_matmul_group<32, kPieces>(p);
    case 64: return bf16_matmul_group<64, kPieces>(p);
    default: return bf16_matmul_group<128, kPieces>(p);
  }
}

/// Runs the BF16 path when it applies (returns false otherwise): 4-bit weights, transpose=true,
/// bfloat16 or float16 x at M <= 2, float32 x at M = 1 (three pieces per element: past one row
/// the extra products cost more than the cheaper decoding saves).
bool avx512_bf16_matmul(const MatmulProblem& p) {
  if (!p.transpose || p.w.bits != 4) return false;
  switch (p.x_dtype) {
    case Dtype::bfloat16: return p.M <= 2 && bf16_matmul_pieces<1>(p);
    case Dtype::float16: return p.M <= 2 && bf16_matmul_pieces<2>(p);
    case Dtype::float32: return p.M == 1 && bf16_matmul_pieces<3>(p);
    default: return false;
  }
}

#pragma GCC diagnostic pop
#endif  // QMM_CPU_X86

}  // namespace

bool cpu_has_avx512() { return selected_isa() >= Isa::avx512; }

void convert_to_float(const void* src, Dtype dtype, std::int64_t count, float* dst) {
  if (dtype == Dtype::float32) {
    std::memcpy(dst, src, static_cast<std::size_t>(count) * sizeof(float));
    return;
  }
#if defined(QMM_CPU_X86)
  if (machine_isa() >= Isa::avx512) return convert_to_float_avx512(src, dtype, count, dst);
#endif
  for (std::int64_t i = 0; i < count; ++i) dst[i] = cpu::load(src, dtype, i);
}

void quantized_matmul(const MatmulProblem& p) {
  if (p.M == 0 || p.N == 0) return;
  if (p.K == 0) {
    const std::vector<float> zeros(static_cast<std::size_t>(p.N), 0.0f);
    for (std::int64_t m = 0; m < p.M; ++m) store_floats(p.out, p.out_dtype, m * p.N, zeros.data(), p.N);
    return;
  }
  const Isa isa = selected_isa();
  (void)isa;  // only the x86 build has a choice
#if defined(QMM_CPU_X86)
  if (isa == Isa::avx512_bf16 && avx512_bf16_matmul(p)) return;
#endif
  std::vector<int> perm;
#if defined(QMM_CPU_X86)
  if (isa >= Isa::avx512) perm = avx512_x_permutation(p);
#endif
  // x as float32, converted (or copied) once, 64-byte aligned, with rows 64 bytes longer than K:
  // rows whose stride is a multiple of 4 KiB (K = 5120 floats is 20 KiB) all fall into the same
  // L1 sets, and eight of them evict each other.
  const std::int64_t ldx = p.K + 16;
  const std::unique_ptr<float[], AlignedDelete> x_buf(aligned_floats(p.M * ldx));
  std::vector<float> row(perm.empty() ? 0 : static_cast<std::size_t>(p.K));
  const std::size_t x_item = itemsize(p.x_dtype);
  for (std::int64_t m = 0; m < p.M; ++m) {
    const void* src = static_cast<const char*>(p.x) + static_cast<std::size_t>(m * p.K) * x_item;
    float* dst = x_buf.get() + m * ldx;
    if (perm.empty()) {
      convert_to_float(src, p.x_dtype, p.K, dst);
      continue;
    }
    convert_to_float(src, p.x_dtype, p.K, row.data());
#if defined(QMM_CPU_X86)
    permute_groups_avx512(row.data(), p.K, p.w.group_size, perm.data(), dst);
#endif
  }
  const float* x = x_buf.get();
#if defined(QMM_CPU_X86)
  if (isa >= Isa::avx512) return avx512_dispatch(p, x, ldx);
  if (isa == Isa::avx2) {
    return p.transpose ? generic_avx2::matmul_transposed(p, x, ldx) : generic_avx2::matmul_plain(p, x, ldx);
  }
#endif
  return p.transpose ? generic_baseline::matmul_transposed(p, x, ldx) : generic_baseline::matmul_plain(p, x, ldx);
}

}  // namespace qmm::detail::cpu_production
