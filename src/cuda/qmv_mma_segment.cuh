// One 128-value K segment of the qmv_mma k mapping: the registers a thread holds for it
// (SegmentLoad) and its MMAs (compute_segment). Shared by qmv_mma (loads from global memory,
// qmv_mma_kernels.cu) and qmv_tma (loads from shared-memory stages filled by the tensor memory
// accelerator, qmv_tma_kernels.cu), so the two compute bit-identical products from the same
// values.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "src/cuda/dispatch.h"
#include "src/cuda/mma_fragments.cuh"
#include "src/cuda/stream_k.cuh"

namespace qmm::cuda::mma {

/// A thread's share of one segment: chunk c (32 values) of rows r, r+8, r+16, r+24 of its warp,
/// with each row's scale and bias for that chunk (a chunk never crosses a group). Scale and
/// bias stay scalars here and become the (s, s) / (b, b) pairs only in compute_segment: built
/// where the segment is loaded, the pair made the warp wait for the scale load at once and
/// undid the double buffer (~30 % of qmv_mma's stall samples, bench/NOTES.md v8).
template <typename T, int Bits>
struct SegmentLoad {
  Chunk<Bits> chunk[4];  // rows r, r+8, r+16, r+24 of this warp
  T s[4];
  T b[4];
};

/// The A fragment of MMA tile `tile` (rows 16 tile .. 16 tile + 15 of the warp) in step `step` of
/// step pair `pair`: the dequantized values this thread feeds (see mma_fragments.cuh).
template <typename T, int Bits>
__device__ __forceinline__ void weight_fragment(std::uint32_t (&a)[4], const SegmentLoad<T, Bits>& L,
                                                const typename Types<T>::T2 (&s2)[4],
                                                const typename Types<T>::T2 (&b2)[4], std::uint32_t magic, int pair,
                                                int step, int tile) {
  const int r0 = 2 * tile, r8 = 2 * tile + 1;
  const auto dequant = [&](int row, int j) {
    return dequant_pair<T, Bits>(value_pair<Bits, Types<T>::kMantissaBits>(L.chunk[row], pair, j, magic), s2[row],
                                 b2[row]);
  };
  a[0] = dequant(r0, 2 * step);
  a[1] = dequant(r8, 2 * step);
  a[2] = dequant(r0, 2 * step + 1);
  a[3] = dequant(r8, 2 * step + 1);
}

/// The (s, s) and (b, b) pairs of a thread's four rows, which every weight_fragment of the
/// segment uses.
template <typename T, int Bits>
__device__ __forceinline__ void scale_pairs(const SegmentLoad<T, Bits>& L, typename Types<T>::T2 (&s2)[4],
                                            typename Types<T>::T2 (&b2)[4]) {
  using T2 = typename Types<T>::T2;
#pragma unroll
  for (int i = 0; i < 4; ++i) s2[i] = T2{L.s[i], L.s[i]}, b2[i] = T2{L.b[i], L.b[i]};
}

/// The A fragments of a whole segment, a[tile][2 pair + step], for the wgmma path, which
/// multiplies them after the segment's x is staged (qmv_mma_kernels.cu run_wgmma).
template <typename T, int Bits>
__device__ __forceinline__ void segment_fragments(std::uint32_t (&a)[2][8][4], const SegmentLoad<T, Bits>& L) {
  const std::uint32_t magic = pair_magic<T, Bits>();
  typename Types<T>::T2 s2[4], b2[4];
  scale_pairs<T, Bits>(L, s2, b2);
#pragma unroll
  for (int pair = 0; pair < 4; ++pair)
#pragma unroll
    for (int step = 0; step < 2; ++step)
#pragma unroll
      for (int tile = 0; tile < 2; ++tile) {
        weight_fragment<T, Bits>(a[tile][2 * pair + step], L, s2, b2, magic, pair, step, tile);
      }
}

/// MMAs of one 128-value segment. `load_x(t, pair)` returns the 8 values of x this thread feeds
/// in step pair `pair` of token tile t (zeros for chunks past K; for tokens past M, whatever
/// TokenCursor says); the callers below differ only in how they address x.
template <typename T, int Bits, int TokenTiles, typename LoadX>
__device__ __forceinline__ void mma_segment(float (&acc)[2][TokenTiles][4], const SegmentLoad<T, Bits>& L,
                                            LoadX&& load_x) {
  // In a register, so the 4-bit path merges mask and magic into one LOP3.
  const std::uint32_t magic = pair_magic<T, Bits>();
  typename Types<T>::T2 s2[4], b2[4];
  scale_pairs<T, Bits>(L, s2, b2);
#pragma unroll
  for (int pair = 0; pair < 4; ++pair) {
    // B fragments for the two steps of this pair, per token tile (see mma_fragments.cuh).
    std::uint32_t bx[TokenTiles][4];
#pragma unroll
    for (int t = 0; t < TokenTiles; ++t) {
      const uint4 X = load_x(t, pair);
      bx[t][0] = __byte_perm(X.x, X.z, 0x5410);  // (x0, x4)
      bx[t][1] = __byte_perm(X.x, X.z, 0x7632);  // (x1, x5)
      bx[t][2] = __byte_perm(X.y, X.w, 0x5410);  // (x2, x6)
      bx[t][3] = __byte_perm(X.y, X.w, 0x7632);  // (x3, x7)
    }
#pragma unroll
    for (int step = 0; step < 2; ++step) {
#pragma unroll
      for (int tile = 0; tile < 2; ++tile) {
        std::uint32_t a[4];
        weight_fragment<T, Bits>(a, L, s2, b2, magic, pair, step, tile);
#pragma unroll
        for (int t = 0; t < TokenTiles; ++t) {
          mma_16816<T>(acc[tile][t], a, bx[t][2 * step], bx[t][2 * step + 1]);
        }
      }
    }
  }
}

/// MMAs of segment `seg`, x read straight from global memory (it is small and hot in L1/L2):
/// staging it in shared memory per chunk of segments measured slower (bench/NOTES.md). Handles
/// the K tail (chunks past K feed zeros).
template <typename T, int Bits, int TokenTiles>
__device__ __forceinline__ void compute_segment(float (&acc)[2][TokenTiles][4], const SegmentLoad<T, Bits>& L,
                                                const stream_k::Params& p, int seg, int c, int token) {
  const int k_chunk = seg * qmm::detail::cuda_dispatch::kMmaSegment + 32 * c;
  const bool valid = k_chunk < p.K;
  const T* x = static_cast<const T*>(p.x);
  mma_segment<T, Bits, TokenTiles>(acc, L, [&](int t, int pair) {
    const int m = t * 8 + token;
    uint4 X = make_uint4(0, 0, 0, 0);
    if (valid && m < p.M) {
      X = __ldg(reinterpret_cast<const uint4*>(x + static_cast<std::int64_t>(m) * p.K + k_chunk + 8 * pair));
    }
    return X;
  });
}

/// x rows of a thread for a run of whole segments (no K tail): per token tile, the address of its
/// chunk in the run's first segment. A token past M reads token 0's row instead of zeros: an MMA's
/// output column depends only on its own B column, and columns past M are never stored
/// (stream_k::store_entry), so what they hold does not matter. Loading it unconditionally saves
/// the zeroing and the predicate (8 instructions a segment at one token tile, ~2.5 %).
template <typename T, int TokenTiles>
struct TokenCursor {
  const T* x[TokenTiles];

  __device__ __forceinline__ TokenCursor(const stream_k::Params& p, int first_segment, int c, int token) {
#pragma unroll
    for (int t = 0; t < TokenTiles; ++t) {
      const int m = t * 8 + token;
      x[t] = static_cast<const T*>(p.x) + static_cast<std::int64_t>(m < p.M ? m : 0) * p.K +
             first_segment * qmm::detail::cuda_dispatch::kMmaSegment + 32 * c;
    }
  }
};

/// A thread's x for one whole segment: per token tile, the 8 values of each step pair.
template <int TokenTiles>
struct SegmentX {
  uint4 v[TokenTiles][4];
};

/// Loads the x of a whole segment `offset` values past the cursor's first segment.
template <typename T, int TokenTiles>
__device__ __forceinline__ void load_segment_x(SegmentX<TokenTiles>& X, const TokenCursor<T, TokenTiles>& xs,
                                               int offset) {
#pragma unroll
  for (int t = 0; t < TokenTiles; ++t)
#pragma unroll
    for (int pair = 0; pair < 4; ++pair) {
      X.v[t][pair] = __ldg(reinterpret_cast<const uint4*>(xs.x[t] + offset + 8 * pair));
    }
}

/// MMAs of a whole segment `offset` values past the cursor's first segment, x loaded here.
template <typename T, int Bits, int TokenTiles>
__device__ __forceinline__ void compute_whole_segment(float (&acc)[2][TokenTiles][4], const SegmentLoad<T, Bits>& L,
                                                      const TokenCursor<T, TokenTiles>& xs, int offset) {
  mma_segment<T, Bits, TokenTiles>(acc, L, [&](int t, int pair) {
    return __ldg(reinterpret_cast<const uint4*>(xs.x[t] + offset + 8 * pair));
  });
}

/// MMAs of a whole segment whose x is loaded.
template <typename T, int Bits, int TokenTiles>
__device__ __forceinline__ void compute_whole_segment(float (&acc)[2][TokenTiles][4], const SegmentLoad<T, Bits>& L,
                                                      const SegmentX<TokenTiles>& X) {
  mma_segment<T, Bits, TokenTiles>(acc, L, [&](int t, int pair) { return X.v[t][pair]; });
}

/// `zero` (a run-time 0) made data-dependent on the last word of a segment's weight, bias and x
/// loads, so loads addressed with it issue only after that segment has arrived.
template <typename T, int Bits, int TokenTiles>
__device__ __forceinline__ int arrival_dependency(const SegmentLoad<T, Bits>& L, const SegmentX<TokenTiles>& X,
                                                  int zero) {
  std::uint16_t bias_bits;
  memcpy(&bias_bits, &L.b[3], sizeof bias_bits);
  const std::uint32_t bits = L.chunk[3].w[Bits - 1] ^ X.v[TokenTiles - 1][3].w ^ bias_bits;
  return static_cast<int>(bits) & zero;
}

}  // namespace qmm::cuda::mma
