// qmv_mma's 4-bit arithmetic: the MMA multiplies x by exact integers and the scale and bias are
// applied afterwards, once per quantization group, in fp32.
//
// Why: with the scale applied before the MMA (qmv_mma_segment.cuh) every pair of weights costs
// shift + LOP3 + HSUB2 + HFMA2; here it costs shift + LOP3 (the first pair of a word not even the
// shift). The kernel is issue bound (bench/NOTES.md, v8), so instructions per weight are time.
//
// The k mapping. A 128-value segment holds 128 / G groups (G = group size). Each thread of a
// quad (c = lane % 4) owns G/4 contiguous values of every group of its rows, as 8-value units
// u = 0..3: unit u lies in piece (group) u / P, P = G / 32 units per group, at
//     k(u) = 128 seg + G (u / P) + (G / 4) c + 8 (u % P).
// In the MMAs of unit u, every thread of the quad feeds values of the same group, so each MMA
// stays inside one group and its fp32 result can be scaled by that group's s. Within a unit the
// value pairing is qmv_mma's (mma_fragments.cuh): slots (2c, 2c+1) take values (j, j+4).
//
// The fold. The A operand is 1024 + q (fp16) or 128 + q (bf16): mask plus magic exponent, no
// subtraction. Per group and token, acc = sum (magic + q) x and X = sum x (an MMA with an all-ones
// A operand, in the same fragment layout), and the output gains
//     s * acc + (b - magic * s) * X = sum (s q + b) x
// in fp32: more accurate than rounding s q + b to 16 bits first.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "src/cuda/dispatch.h"
#include "src/cuda/mma_fragments.cuh"
#include "src/cuda/stream_k.cuh"

namespace qmm::cuda::mma {

/// Compile-time geometry of the folded k mapping for a group size 2^GroupShift (32, 64, 128).
template <int GroupShift>
struct FoldGeometry {
  static constexpr int kGroup = 1 << GroupShift;
  static constexpr int kGroupsPerSegment = qmm::detail::cuda_dispatch::kMmaSegment / kGroup;
  static constexpr int kUnitsPerGroup = kGroup / 32;  // 8-value units of one thread in one group
  static constexpr int kWordsPerPiece = kGroup / 32;  // 4-bit words of one thread in one group
  /// 32-bit words holding a row's scales (or biases) of one segment: pairs of groups, or one.
  static constexpr int kScaleWords = kGroupsPerSegment > 1 ? kGroupsPerSegment / 2 : 1;
  /// Offset of unit u from the segment start, for quad position c.
  __device__ static constexpr int unit_offset(int u, int c) {
    return kGroup * (u / kUnitsPerGroup) + (kGroup / 4) * c + 8 * (u % kUnitsPerGroup);
  }
};

/// A thread's share of one segment: 4 words (32 values) of rows r, r+8, r+16, r+24 of its warp
/// in unit order, and each row's scales and biases of the segment's groups as 32-bit words
/// (group 2j in the low half, 2j+1 in the high half; a lone group of 128 in the low half).
/// Whole words halve the registers the double buffer needs; fold_supported() says when the
/// scale pairs are word-aligned.
template <typename T, int GroupShift>
struct FoldLoad {
  using G = FoldGeometry<GroupShift>;
  std::uint32_t w[4][4];  // [row][unit]
  std::uint32_t s[4][G::kScaleWords];
  std::uint32_t b[4][G::kScaleWords];
};

/// Scale or bias of group `piece` of the segment from a FoldLoad word, as fp32.
template <typename T>
__device__ __forceinline__ float scale_half(std::uint32_t word, int piece) {
  const std::uint32_t h = (piece & 1) ? word >> 16 : word & 0xFFFFu;
  if constexpr (Types<T>::kMagicCoversByte) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(h)));
  } else {
    return __uint_as_float(h << 16);  // bf16 is the top half of an fp32
  }
}

/// Where a thread's weight, scale and bias loads of a segment start; advanced one segment at a
/// time, so every load is a base register plus a compile-time offset (computing each address
/// afresh was ~170 of ~530 instructions per warp and segment, bench/NOTES.md v8).
template <typename T, int GroupShift>
struct WeightCursor {
  using G = FoldGeometry<GroupShift>;
  const std::uint32_t* w[4];  // first word of this thread's quad share, rows r, r+8, r+16, r+24
  const T* s[4];              // the rows' scale of the segment's first group
  const T* b[4];
  int k;                      // first value of the segment

  __device__ void start(const std::uint32_t* const (&wrow)[4], const T* const (&srow)[4], const T* const (&brow)[4],
                        int seg, int c) {
    k = seg * qmm::detail::cuda_dispatch::kMmaSegment;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      w[i] = wrow[i] + (k + G::unit_offset(0, c)) / 8;
      s[i] = srow[i] + seg * G::kGroupsPerSegment;
      b[i] = brow[i] + seg * G::kGroupsPerSegment;
    }
  }
  __device__ void advance() {
    constexpr int kSegment = qmm::detail::cuda_dispatch::kMmaSegment;
    k += kSegment;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      w[i] += kSegment / 8;
      s[i] += G::kGroupsPerSegment;
      b[i] += G::kGroupsPerSegment;
    }
  }
};

/// Where a thread's x loads of a segment start (its token in each token tile, its quad share).
/// Tokens past M read row M-1: their output columns are never stored, and MMA columns do not mix.
template <typename T, int GroupShift, int TokenTiles>
struct XCursor {
  using G = FoldGeometry<GroupShift>;
  const T* x[TokenTiles];
  int k;  // first value of the segment

  __device__ void start(const stream_k::Params& p, int seg, int c, int token) {
    k = seg * qmm::detail::cuda_dispatch::kMmaSegment;
    const T* x0 = static_cast<const T*>(p.x);
#pragma unroll
    for (int t = 0; t < TokenTiles; ++t) {
      x[t] = x0 + static_cast<std::int64_t>(min(t * 8 + token, p.M - 1)) * p.K + k + G::unit_offset(0, c);
    }
  }
  __device__ void advance() {
    constexpr int kSegment = qmm::detail::cuda_dispatch::kMmaSegment;
    k += kSegment;
#pragma unroll
    for (int t = 0; t < TokenTiles; ++t) x[t] += kSegment;
  }
};

/// Loads `Words` consecutive 4-bit words with one vector load (mma_fragments.cuh's L2::256B loads).
template <int Words>
__device__ __forceinline__ void load_words(std::uint32_t* dst, const std::uint32_t* src) {
  if constexpr (Words == 4) {
    const uint4 v = load_quad_l2_256(src);
    dst[0] = v.x, dst[1] = v.y, dst[2] = v.z, dst[3] = v.w;
  } else if constexpr (Words == 2) {
    const uint2 v = load_pair_l2_256(src);
    dst[0] = v.x, dst[1] = v.y;
  } else {
    static_assert(Words == 1, "a piece is 1, 2 or 4 words");
    dst[0] = load_word_l2_256(src);
  }
}

/// Whether group `piece` of the cursor's segment lies inside K (K is a multiple of the group
/// size, so a group is all in or all out). Only the K tail's segment (Tail) asks.
template <bool Tail, int GroupShift, typename Cursor>
__device__ __forceinline__ bool piece_valid(const Cursor& cur, const stream_k::Params& p, int piece) {
  return !Tail || cur.k + FoldGeometry<GroupShift>::kGroup * piece < p.K;
}

/// Issues the loads of the cursor's segment. Groups past K (Tail only) get q = 0, s = 0, b = 0.
template <bool Tail, typename T, int GroupShift>
__device__ __forceinline__ void load_fold_segment(FoldLoad<T, GroupShift>& L, const WeightCursor<T, GroupShift>& cur,
                                                  const stream_k::Params& p) {
  using G = FoldGeometry<GroupShift>;
#pragma unroll
  for (int piece = 0; piece < G::kGroupsPerSegment; ++piece) {
    if (piece_valid<Tail, GroupShift>(cur, p, piece)) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        load_words<G::kWordsPerPiece>(&L.w[i][piece * G::kUnitsPerGroup], cur.w[i] + G::kGroup * piece / 8);
        if constexpr (G::kGroupsPerSegment == 1) {
          L.s[i][0] = *reinterpret_cast<const unsigned short*>(cur.s[i]);
          L.b[i][0] = *reinterpret_cast<const unsigned short*>(cur.b[i]);
        } else if ((piece & 1) == 0) {
          L.s[i][piece / 2] = __ldg(reinterpret_cast<const unsigned int*>(cur.s[i] + piece));
          L.b[i][piece / 2] = __ldg(reinterpret_cast<const unsigned int*>(cur.b[i] + piece));
        }
      }
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int u = 0; u < G::kUnitsPerGroup; ++u) L.w[i][piece * G::kUnitsPerGroup + u] = 0;
        // groups_per_row is even (qmv_mma's fold_supported), so a pair of groups is all in or all
        // out of K.
        if ((piece & 1) == 0 || G::kGroupsPerSegment == 1) {
          L.s[i][piece / 2] = 0;
          L.b[i][piece / 2] = 0;
        }
      }
    }
  }
}

/// d = a * b (m16n8k16, fp32), no accumulator input.
template <typename T>
__device__ __forceinline__ void mma_16816_fresh(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0,
                                                std::uint32_t b1) {
  d[0] = d[1] = d[2] = d[3] = 0.0f;
  mma_16816<T>(d, a, b0, b1);
}

/// The folded MMAs of the cursor's segment, adding into out (the row block's fp32 accumulators).
template <bool Tail, typename T, int GroupShift, int TokenTiles>
__device__ __forceinline__ void compute_fold_segment(float (&out)[2][TokenTiles][4], const FoldLoad<T, GroupShift>& L,
                                                     const XCursor<T, GroupShift, TokenTiles>& cur,
                                                     const stream_k::Params& p) {
  using G = FoldGeometry<GroupShift>;
  const std::uint32_t magic = Types<T>::kMagic;
  // 1.0 in both halves: the A operand whose MMA sums x.
  const std::uint32_t ones = Types<T>::kMagicCoversByte ? 0x3C003C00u : 0x3F803F80u;
  const float magic_value = Types<T>::kMagicCoversByte ? 1024.0f : 128.0f;
  const std::uint32_t ones_a[4] = {ones, ones, ones, ones};
#pragma unroll
  for (int piece = 0; piece < G::kGroupsPerSegment; ++piece) {
    // In the K tail's segment, a group past K multiplies x = 0 (no load) by s = b = 0.
    const bool valid = piece_valid<Tail, GroupShift>(cur, p, piece);
    float acc[2][TokenTiles][4];
    float xsum[TokenTiles][4];
#pragma unroll
    for (int uu = 0; uu < G::kUnitsPerGroup; ++uu) {
      const int u = piece * G::kUnitsPerGroup + uu;
      std::uint32_t bx[TokenTiles][4];
#pragma unroll
      for (int t = 0; t < TokenTiles; ++t) {
        uint4 X = make_uint4(0, 0, 0, 0);
        if (valid) X = __ldg(reinterpret_cast<const uint4*>(cur.x[t] + G::unit_offset(u, 0)));
        bx[t][0] = __byte_perm(X.x, X.z, 0x5410);  // (x0, x4)
        bx[t][1] = __byte_perm(X.x, X.z, 0x7632);  // (x1, x5)
        bx[t][2] = __byte_perm(X.y, X.w, 0x5410);  // (x2, x6)
        bx[t][3] = __byte_perm(X.y, X.w, 0x7632);  // (x3, x7)
      }
#pragma unroll
      for (int step = 0; step < 2; ++step) {
#pragma unroll
        for (int tile = 0; tile < 2; ++tile) {
          const int r0 = 2 * tile, r8 = 2 * tile + 1;
          std::uint32_t a[4];
          a[0] = and_or(L.w[r0][u] >> (8 * step), 0x000F000Fu, magic);
          a[1] = and_or(L.w[r8][u] >> (8 * step), 0x000F000Fu, magic);
          a[2] = and_or(L.w[r0][u] >> (8 * step + 4), 0x000F000Fu, magic);
          a[3] = and_or(L.w[r8][u] >> (8 * step + 4), 0x000F000Fu, magic);
#pragma unroll
          for (int t = 0; t < TokenTiles; ++t) {
            if (uu == 0 && step == 0) {
              mma_16816_fresh<T>(acc[tile][t], a, bx[t][0], bx[t][1]);
            } else {
              mma_16816<T>(acc[tile][t], a, bx[t][2 * step], bx[t][2 * step + 1]);
            }
          }
        }
#pragma unroll
        for (int t = 0; t < TokenTiles; ++t) {
          if (uu == 0 && step == 0) {
            mma_16816_fresh<T>(xsum[t], ones_a, bx[t][0], bx[t][1]);
          } else {
            mma_16816<T>(xsum[t], ones_a, bx[t][2 * step], bx[t][2 * step + 1]);
          }
        }
      }
    }
    // Fold this group: rows r (fragment elements 0, 1) and r+8 (2, 3) of each tile; elements 0
    // and 2 are token 2c, 1 and 3 token 2c+1 (the ones-MMA gives X in the same places).
#pragma unroll
    for (int tile = 0; tile < 2; ++tile) {
      float s[2], bias[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        s[h] = scale_half<T>(L.s[2 * tile + h][piece / 2], piece);
        bias[h] = fmaf(-magic_value, s[h], scale_half<T>(L.b[2 * tile + h][piece / 2], piece));
      }
#pragma unroll
      for (int t = 0; t < TokenTiles; ++t) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          out[tile][t][e] = fmaf(s[e >> 1], acc[tile][t][e], out[tile][t][e]);
          out[tile][t][e] = fmaf(bias[e >> 1], xsum[t][e], out[tile][t][e]);
        }
      }
    }
  }
}

}  // namespace qmm::cuda::mma
