// Building blocks of the tensor-core kernel family (qmv_mma_kernels.cu): loading a packed
// 32-value chunk of a weight row, turning its values into exact 16-bit integers, and the
// m16n8k16 MMA.
//
// The k mapping. In mma.m16n8k16 a thread (lane) holds A elements of rows lane/4 and lane/4+8
// at k slots {2c, 2c+1, 2c+8, 2c+9} (c = lane%4), and B elements of column lane/4 at the same
// k slots. Because a dot product does not care in which order k is summed, qmm assigns logical k
// to slots so that each thread reads contiguous memory: in a 128-value K segment, thread c owns
// the 32-value chunk [32c, 32c+32) of its rows, and in step pair p (two MMAs) it feeds values
// 8p..8p+7 of that chunk:
//     even step: slots (2c, 2c+1) <- values (0, 4),  slots (2c+8, 2c+9) <- values (1, 5)
//     odd step:  slots (2c, 2c+1) <- values (2, 6),  slots (2c+8, 2c+9) <- values (3, 7)
// The pairing (v, v+4) is what the mask-and-magic-exponent trick yields for 4-bit words, and
// the same permutation is applied to x with byte permutes, so A and B always agree.
// A 32-value chunk never crosses a quantization group (groups are 32, 64 or 128 values, chunks
// are aligned), so one scale and bias per (row, chunk).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace qmm::cuda::mma {

/// One 32-value chunk of a packed row: `Bits` words.
template <int Bits>
struct Chunk {
  std::uint32_t w[Bits];
};

/// How a weight load is issued. All go through the non-coherent path.
/// - plain: nothing more (qmv_mma_kernels.cu: a run's first segment in the cluster kernel and on
///   wgmma; its first weights arrive sooner than with the hint).
/// - l2_256: the L2::256B hint, so the L2 fetches the 256-byte block around the request, i.e. the
///   row's next segments, with the first one (measured on H100: -7 % on the large shapes,
///   bench/NOTES.md v8).
/// - l2_256_no_l1: the hint, and L1::no_allocate: the weights, read once, are not kept in L1.
///   H100 (bench/NOTES.md v17), all weight loads after a run's first: the cluster kernel
///   1.4-3.4 % faster on 5120 -> 5120 and 0.7-2.1 % on 5120 -> 1024 at every M; the stream-K
///   kernel 10-22 % slower at M <= 16 and mixed (-2..+3 %) at M = 17..64 on the large shapes, so
///   only the cluster kernel takes it, and there only its pairs loop and wgmma passes, for chunks
///   not in narrow loads (chunk_in_narrow_loads; qmv_mma_kernels.cu run_segments).
enum class WeightLoad { plain, l2_256, l2_256_no_l1 };

/// Loads of 1, 2 or 4 consecutive words, issued as Load says.
template <WeightLoad Load = WeightLoad::l2_256>
__device__ __forceinline__ std::uint32_t load_word(const std::uint32_t* p) {
  std::uint32_t v;
  if constexpr (Load == WeightLoad::l2_256_no_l1) {
    asm volatile("ld.global.nc.L1::no_allocate.L2::256B.u32 %0, [%1];\n" : "=r"(v) : "l"(p));
  } else if constexpr (Load == WeightLoad::l2_256) {
    asm volatile("ld.global.nc.L2::256B.u32 %0, [%1];\n" : "=r"(v) : "l"(p));
  } else {
    asm volatile("ld.global.nc.u32 %0, [%1];\n" : "=r"(v) : "l"(p));
  }
  return v;
}
template <WeightLoad Load = WeightLoad::l2_256>
__device__ __forceinline__ uint2 load_pair(const std::uint32_t* p) {
  uint2 v;
  if constexpr (Load == WeightLoad::l2_256_no_l1) {
    asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v2.u32 {%0,%1}, [%2];\n" : "=r"(v.x), "=r"(v.y) : "l"(p));
  } else if constexpr (Load == WeightLoad::l2_256) {
    asm volatile("ld.global.nc.L2::256B.v2.u32 {%0,%1}, [%2];\n" : "=r"(v.x), "=r"(v.y) : "l"(p));
  } else {
    asm volatile("ld.global.nc.v2.u32 {%0,%1}, [%2];\n" : "=r"(v.x), "=r"(v.y) : "l"(p));
  }
  return v;
}
template <WeightLoad Load = WeightLoad::l2_256>
__device__ __forceinline__ uint4 load_quad(const std::uint32_t* p) {
  uint4 v;
  if constexpr (Load == WeightLoad::l2_256_no_l1) {
    asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
  } else if constexpr (Load == WeightLoad::l2_256) {
    asm volatile("ld.global.nc.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
  } else {
    asm volatile("ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
  }
  return v;
}

/// Loads 16 bytes of x through the non-coherent path. Written in PTX (volatile, like the weight
/// loads above) so the compiler keeps it where the caller placed it relative to them: the wgmma
/// path issues a segment's x before its weights (qmv_mma_kernels.cu run_wgmma).
__device__ __forceinline__ uint4 load_x_quad(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];\n" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}

/// Loads a chunk with the widest aligned vector loads its size allows (the row and chunk
/// offsets are multiples of 4*Bits bytes; see dispatch's alignment check for the base), issued
/// as Load says.
/// Whether load_chunk takes a chunk of `bits`-bit weights in several loads narrower than 16 bytes
/// (3 and 5 bits: words; 6 bits: word pairs). The four lanes of a row then ask for the same
/// sectors once per load: L1 merges those requests, and with L1::no_allocate each goes to L2
/// (3-, 5- and 6-bit cluster passes 6-24 % slower at M = 1 on the H100, bench/NOTES.md v20).
constexpr bool chunk_in_narrow_loads(int bits) { return bits == 3 || bits == 5 || bits == 6; }

template <int Bits, WeightLoad Load = WeightLoad::l2_256>
__device__ __forceinline__ Chunk<Bits> load_chunk(const std::uint32_t* p) {
  Chunk<Bits> c;
  if constexpr (Bits == 4) {
    const uint4 v = load_quad<Load>(p);
    c.w[0] = v.x, c.w[1] = v.y, c.w[2] = v.z, c.w[3] = v.w;
  } else if constexpr (Bits == 8) {
    const uint4 v0 = load_quad<Load>(p);
    const uint4 v1 = load_quad<Load>(p + 4);
    c.w[0] = v0.x, c.w[1] = v0.y, c.w[2] = v0.z, c.w[3] = v0.w;
    c.w[4] = v1.x, c.w[5] = v1.y, c.w[6] = v1.z, c.w[7] = v1.w;
  } else if constexpr (Bits == 2 || Bits == 6) {
#pragma unroll
    for (int i = 0; i < Bits / 2; ++i) {
      const uint2 v = load_pair<Load>(p + 2 * i);
      c.w[2 * i] = v.x, c.w[2 * i + 1] = v.y;
    }
  } else {
#pragma unroll
    for (int i = 0; i < Bits; ++i) c.w[i] = load_word<Load>(p + i);
  }
  return c;
}

/// (a & b) | c in one LOP3; written in PTX because with two immediates the compiler emits two.
__device__ __forceinline__ std::uint32_t and_or(std::uint32_t a, std::uint32_t b, std::uint32_t c) {
  std::uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}

/// (a & ~mask) | (b & mask) in one LOP3.
__device__ __forceinline__ std::uint32_t bit_select(std::uint32_t a, std::uint32_t b, std::uint32_t mask) {
  std::uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xD8;" : "=r"(d) : "r"(a), "r"(b), "r"(mask));
  return d;
}

/// A value pair as value_pair leaves it: two integers q < 2^Bits, each `shift` bits up in its
/// 16-bit half, with pair_magic OR-ed in. shift is a compile-time constant after unrolling.
struct ValuePair {
  std::uint32_t halves;
  int shift;
};

/// Masks the pair whose values lie `offset` bits up in each half of `spread` and ORs in `magic`.
/// Where the value still fits below the exponent bits of the 16-bit type (MantissaBits: 10 for
/// fp16, 7 for bf16) it stays in place and dequant_pair scales it down exactly; otherwise it is
/// shifted to bit 0 first. Leaving it in place saves the shift: one LOP3 instead of a shift and
/// a LOP3 for most pairs of 2-, 3- and 4-bit weights.
template <int Bits, int MantissaBits>
__device__ __forceinline__ ValuePair positioned_pair(std::uint32_t spread, int offset, std::uint32_t magic) {
  constexpr std::uint32_t kMask = ((1u << Bits) - 1u) * 0x00010001u;
  if (offset + Bits <= MantissaBits) return {and_or(spread, kMask << offset, magic), offset};
  return {and_or(spread >> offset, kMask, magic), 0};
}

/// The pair (value 8p+j, value 8p+j+4) of a chunk, low and high half. Values are packed LSB
/// first (value i at bit i*Bits of the chunk's 32*Bits bits, MLX's order); p and j are
/// compile-time constants after unrolling, so each width is a few shifts, byte permutes and
/// LOP3s per pair, with the work that depends on p only shared by its four j. MantissaBits is
/// that of the 16-bit type the pair becomes (positioned_pair).
template <int Bits, int MantissaBits>
__device__ __forceinline__ ValuePair value_pair(const Chunk<Bits>& c, int p, int j, std::uint32_t magic) {
  if constexpr (Bits == 4) {
    // Nibbles j and j+4 of word p are already in the two halves, 4j bits up; j = 2, 3 share
    // one shift of the word.
    return j < 2 ? positioned_pair<4, MantissaBits>(c.w[p], 4 * j, magic)
                 : positioned_pair<4, MantissaBits>(c.w[p] >> 8, 4 * (j - 2), magic);
  } else if constexpr (Bits == 2) {
    // Pair p is 16 bits of word p/2: one byte permute puts values 0-3 in byte 0 and values 4-7
    // in byte 2 (bytes 1 and 3 zero), after which value j and j+4 are 2j bits up in each half.
    // The permute depends on p only, so the four j of a pair share it.
    const std::uint32_t spread = __byte_perm(c.w[p >> 1], 0u, (p & 1) ? 0x4342u : 0x4140u);
    return positioned_pair<2, MantissaBits>(spread, 2 * j, magic);
  } else if constexpr (Bits == 3) {
    // Pair p is the 24 bits at bit 24p of the chunk's 96: one funnel shift brings them to bit 0,
    // one shift and one LOP3 move values 4-7 (bits 12-23) to bits 16-27, after which value j
    // and j+4 are 3j bits up in each half. The first three depend on p only (shared by the j).
    const std::uint32_t u = p == 0   ? c.w[0]
                            : p == 1 ? __funnelshift_r(c.w[0], c.w[1], 24)
                            : p == 2 ? __funnelshift_r(c.w[1], c.w[2], 16)
                                     : c.w[2] >> 8;
    const std::uint32_t spread = bit_select(u, u << 4, 0xFFFF0000u);
    return positioned_pair<3, MantissaBits>(spread, 3 * j, magic);
  } else if constexpr (Bits == 5) {
    // Pair p is 40 bits at bit 40p: values 0-3 in the low 20 (lo), values 4-7 in the next 20
    // (hi), value k of each at bit 5k. One LOP3 puts lo's low 16 bits and hi's in the two halves
    // (values j = 0..2), a second pair of shifts and LOP3 does the same from bit 15 (j = 3).
    const std::uint32_t lo = p == 0   ? c.w[0]
                             : p == 1 ? __funnelshift_r(c.w[1], c.w[2], 8)
                             : p == 2 ? __funnelshift_r(c.w[2], c.w[3], 16)
                                      : __funnelshift_r(c.w[3], c.w[4], 24);
    const std::uint32_t hi = p == 0   ? __funnelshift_r(c.w[0], c.w[1], 20)
                             : p == 1 ? __funnelshift_r(c.w[1], c.w[2], 28)
                             : p == 2 ? c.w[3] >> 4
                                      : c.w[4] >> 12;
    return j < 3 ? positioned_pair<5, MantissaBits>(bit_select(lo, hi << 16, 0xFFFF0000u), 5 * j, magic)
                 : positioned_pair<5, MantissaBits>(bit_select(lo >> 15, hi << 1, 0xFFFF0000u), 0, magic);
  } else if constexpr (Bits == 6) {
    // Pair p is 48 bits at bit 48p: values 0-3 in the low 24 (lo), values 4-7 in the next 24
    // (hi), value k of each at bit 6k. One LOP3 puts the low 16 bits of lo and hi in the two
    // halves (j = 0, 1), another the 16 bits from bit 12 (j = 2, 3).
    const int w0 = 3 * (p >> 1);
    const std::uint32_t lo = (p & 1) == 0 ? c.w[w0] : __funnelshift_r(c.w[w0 + 1], c.w[w0 + 2], 16);
    const std::uint32_t hi = (p & 1) == 0 ? __funnelshift_r(c.w[w0], c.w[w0 + 1], 24) : c.w[w0 + 2] >> 8;
    return j < 2 ? positioned_pair<6, MantissaBits>(bit_select(lo, hi << 16, 0xFFFF0000u), 6 * j, magic)
                 : positioned_pair<6, MantissaBits>(bit_select(lo >> 12, hi << 4, 0xFFFF0000u), 6 * (j - 2), magic);
  } else {
    static_assert(Bits == 8, "bits 2, 3, 4, 5, 6 and 8 are the MLX widths");
    // Value 8p+j is byte j of word 2p and value 8p+j+4 byte j of word 2p+1: one byte permute
    // puts them in bytes 0 and 2, one LOP3 clears bytes 1 and 3 and adds the magic.
    const std::uint32_t sel = static_cast<std::uint32_t>(j) * 0x0011u + static_cast<std::uint32_t>(4 + j) * 0x1100u;
    return {and_or(__byte_perm(c.w[2 * p], c.w[2 * p + 1], sel), 0x00FF00FFu, magic), 0};
  }
}

template <typename T>
struct Types;

template <>
struct Types<__half> {
  using T2 = __half2;
  /// Exponent of 1024: 1024 + v is exact in fp16 for v < 1024.
  static constexpr std::uint32_t kMagic = 0x64006400u;
  static constexpr bool kMagicCoversByte = true;
  static constexpr int kMantissaBits = 10;
  static constexpr int kExponentBias = 15;
};

template <>
struct Types<__nv_bfloat16> {
  using T2 = __nv_bfloat162;
  /// Exponent of 128: 128 + v is exact in bf16 for v < 128 (not for 8-bit values).
  static constexpr std::uint32_t kMagic = 0x43004300u;
  static constexpr bool kMagicCoversByte = false;
  static constexpr int kMantissaBits = 7;
  static constexpr int kExponentBias = 127;
};

template <typename T2>
__device__ __forceinline__ T2 as_t2(std::uint32_t u) {
  return *reinterpret_cast<T2*>(&u);
}
template <typename T2>
__device__ __forceinline__ std::uint32_t as_u32(T2 v) {
  return *reinterpret_cast<std::uint32_t*>(&v);
}

/// The magic OR-ed into value pairs for T and Bits (0 where dequant_pair converts otherwise).
template <typename T, int Bits>
constexpr std::uint32_t pair_magic() {
  return (Bits == 8 && !Types<T>::kMagicCoversByte) ? 0u : Types<T>::kMagic;
}

/// The bits of (2^e, 2^e) in T2.
template <typename T>
__host__ __device__ constexpr std::uint32_t power_of_two_pair(int e) {
  return (static_cast<std::uint32_t>(Types<T>::kExponentBias + e) << Types<T>::kMantissaBits) * 0x00010001u;
}
// The magic is E = 2^kMantissaBits, and the constants dequant_pair builds from it are right.
static_assert(power_of_two_pair<__half>(10) == Types<__half>::kMagic, "fp16 magic is 1024");
static_assert(power_of_two_pair<__nv_bfloat16>(7) == Types<__nv_bfloat16>::kMagic, "bf16 magic is 128");
static_assert(power_of_two_pair<__half>(-4) == 0x2C002C00u, "0.0625 in fp16");
static_assert((0x80008000u | power_of_two_pair<__half>(10 - 4)) == 0xD400D400u, "-64 in fp16");
static_assert(power_of_two_pair<__nv_bfloat16>(-2) == 0x3E803E80u, "0.25 in bf16");

/// A value pair from value_pair to two exact 16-bit floats q, then w = s*q + b with one
/// rounding. With the magic exponent E (1024 or 128) a half reads E + 2^shift q, so
/// q = (E + 2^shift q) 2^-shift - E 2^-shift exactly (one fused multiply-add; a subtraction
/// where shift = 0).
template <typename T, int Bits>
__device__ __forceinline__ std::uint32_t dequant_pair(ValuePair pair, typename Types<T>::T2 s2,
                                                      typename Types<T>::T2 b2) {
  using T2 = typename Types<T>::T2;
  T2 q;
  if constexpr (pair_magic<T, Bits>() == 0u) {
    q = __floats2bfloat162_rn(static_cast<float>(pair.halves & 0xFFFFu), static_cast<float>(pair.halves >> 16));
  } else {
    if (pair.shift == 0) {
      q = __hsub2(as_t2<T2>(pair.halves), as_t2<T2>(pair_magic<T, Bits>()));
    } else {
      // 2^-shift and -E 2^-shift (E = 2^kMantissaBits), both halves.
      const std::uint32_t down = power_of_two_pair<T>(-pair.shift);
      const std::uint32_t minus_offset = 0x80008000u | power_of_two_pair<T>(Types<T>::kMantissaBits - pair.shift);
      q = __hfma2(as_t2<T2>(pair.halves), as_t2<T2>(down), as_t2<T2>(minus_offset));
    }
  }
  return as_u32(__hfma2(q, s2, b2));
}

/// d += a * b, m16n8k16, fp32 accumulate.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0,
                                          std::uint32_t b1) {
  if constexpr (sizeof(T) == 2 && Types<T>::kMagicCoversByte) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

}  // namespace qmm::cuda::mma
