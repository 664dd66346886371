// Warpgroup MMA (sm_90a wgmma.mma_async) for qmv_mma's 32- and 64-token passes: the dequantized
// weights stay in registers as the A operand (the fragments mma.m16n8k16 takes, so qmv_mma's
// weight side is unchanged), and x is the B operand, staged once per block and segment in shared
// memory in the k order the A fragments use (mma_fragments.cuh).
//
// Why: with mma.sync every warp multiplies its rows by each 8-token tile itself and loads and
// permutes its own copy of x: 8 MMAs, 8 x loads and 32 byte permutes per warp and step pair at 64
// tokens, on top of the dequantization. One wgmma multiplies a warpgroup's 64 rows by all the
// tokens, asynchronously, from one shared copy of x. On the H100, against mma.sync: -8..-20 % at
// M = 17..32 (same call), -20..-26 % at M = 33..64 (against the sixth session's table;
// bench/NOTES.md v11, v12).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "src/cuda/dispatch.h"
#include "src/cuda/mma_fragments.cuh"
#include "src/cuda/stream_k.cuh"

namespace qmm::cuda::wgmma {

using detail::cuda_dispatch::kMmaSegment;
using detail::cuda_dispatch::kMmaThreads;

/// Shared-memory image of x for one 128-value K segment and Tokens tokens, in wgmma's canonical
/// K-major layout without swizzle: per MMA step (16 k slots), the tokens in groups of 8, each group
/// two 8x8 core matrices (k slots 0-7, then 8-15) of 8 tokens x 16 bytes. The slot order is the A
/// fragments' (mma_fragments.cuh): in step 2p + q, slots (2c, 2c+1) hold values 8p + 2q and
/// 8p + 2q + 4 of chunk c, and slots (2c + 8, 2c + 9) values 8p + 2q + 1 and 8p + 2q + 5.
template <int Tokens>
struct XStage {
  static constexpr int kCoreBytes = 128;                         // 8 tokens x 8 k slots x 2 bytes
  static constexpr int kGroupBytes = 2 * kCoreBytes;             // one 8-token group, both k halves
  static constexpr int kStepBytes = (Tokens / 8) * kGroupBytes;  // one 16-slot MMA step
  static constexpr int kBytes = (kMmaSegment / 16) * kStepBytes;
};

/// The wgmma descriptor of x staged at shared address `stage` (its first step): start address,
/// leading (K) byte offset between the two core matrices of a group, stride (token) byte offset
/// between groups, all in 16-byte units; no swizzle.
template <int Tokens>
__device__ __forceinline__ std::uint64_t x_descriptor(std::uint32_t stage) {
  return static_cast<std::uint64_t>((stage & 0x3FFFF) >> 4) |
         (static_cast<std::uint64_t>(XStage<Tokens>::kCoreBytes >> 4) << 16) |
         (static_cast<std::uint64_t>(XStage<Tokens>::kGroupBytes >> 4) << 32);
}

/// The descriptor `bytes` further on in shared memory (another step or stage): the start address
/// is the low field, and shared memory (228 KB) is too small for the add to carry out of it.
__device__ __forceinline__ std::uint64_t advance(std::uint64_t descriptor, int bytes) {
  return descriptor + static_cast<std::uint64_t>(bytes >> 4);
}

/// Stages x for one run of segments, in two halves: load_segment brings a segment into registers
/// and store writes it into a stage, so run_wgmma loads the next segment's x together with its
/// weights, before the current segment is dequantized, and stores it at the start of the next
/// segment's iteration.
/// A thread's work per segment is whole items: item (token n, step pair p) is the 4 x 8 values
/// x[n][k0 + 32 c + 8 p ..] of chunks c = 0..3, which fill exactly the four 16-byte core-matrix
/// rows of token n in steps 2p and 2p + 1 (low and high k slots), so a thread loads 4 x 16 bytes
/// and stores 4 x 16 bytes per item. The per-item addresses are computed once per run, and tokens
/// past M read token M-1 (valid memory; their output columns are never stored), so a whole
/// segment loads without predicates.
///
/// Why (bench/NOTES.md v12, H100): the first version staged one 16-byte chunk per thread and
/// iteration, storing its four 4-byte value pairs to four places and recomputing addresses and
/// predicates, about 210 of the 767 instructions per warp and segment of the 64-token kernel.
/// Items alone took those away but left the x loads' latency exposed between the wgmmas and the
/// barrier (slower by up to 8 %); loaded a segment ahead, -4..-20 % at M = 33..64, and 32-token
/// passes became faster on wgmma than on mma.sync.
template <typename T, int Tokens>
struct XStager {
  static constexpr int kItems = Tokens * 4;
  static constexpr int kPerThread = (kItems + kMmaThreads - 1) / kMmaThreads;
  static_assert(kItems % kMmaThreads == 0 || kItems < kMmaThreads, "items split evenly over the block");

  const T* src[kPerThread];  // x at token n, value 8 p of segment 0
  int dst[kPerThread];       // byte offset of the item's first row in a stage
  uint4 X[kPerThread][4];    // the loaded segment, between load_segment and store

  __device__ __forceinline__ explicit XStager(const stream_k::Params& p) {
    const T* x = static_cast<const T*>(p.x);
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      // A warp's lanes take 8 tokens x 4 pairs of one group: each of its 16-byte stores is one
      // 128-byte core matrix per 8 lanes (no bank conflict), each load 8 tokens x 64 bytes.
      const int i = static_cast<int>(threadIdx.x) + j * kMmaThreads;
      const int r = i & 7;
      const int pair = (i >> 3) & 3;
      const int group = i >> 5;
      const int n = min(group * 8 + r, p.M - 1);
      src[j] = x + static_cast<std::int64_t>(n) * p.K + 8 * pair;
      dst[j] = 2 * pair * XStage<Tokens>::kStepBytes + group * XStage<Tokens>::kGroupBytes + r * 16;
    }
  }

  /// Whether this thread has an item j (at 8 and 16 tokens only the first threads do).
  __device__ __forceinline__ static bool holds(int j) {
    return kItems % kMmaThreads == 0 || static_cast<int>(threadIdx.x) + j * kMmaThreads < kItems;
  }

  /// Loads segment `seg` of x into registers; Whole: the segment lies inside K (else chunks past
  /// K are zeros).
  template <bool Whole>
  __device__ __forceinline__ void load(int seg, int K) {
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      if (holds(j)) {
        const int k0 = seg * kMmaSegment;
        const T* s = src[j] + k0;
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          X[j][c] = make_uint4(0, 0, 0, 0);
          if (Whole || k0 + 32 * c < K) X[j][c] = qmm::cuda::mma::load_x_quad(s + 32 * c);
        }
      }
    }
  }

  /// load<true> or load<false>, whichever segment `seg` needs.
  __device__ __forceinline__ void load_segment(int seg, int K) {
    if ((seg + 1) * kMmaSegment <= K) {
      load<true>(seg, K);
    } else {
      load<false>(seg, K);
    }
  }

  /// Writes the loaded segment into `stage`. Every thread of the block takes part; the caller
  /// makes the writes visible to the async proxy and the other warps (fence_async_shared, then a
  /// barrier) before a wgmma reads them.
  __device__ __forceinline__ void store(unsigned char* stage) const {
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      if (holds(j)) {
        // In step 2p slots (2c, 2c+1) hold values (8p + 0, 8p + 4) of chunk c and slots
        // (2c + 8, 2c + 9) values (8p + 1, 8p + 5); step 2p + 1 the same with 2, 6 and 3, 7.
        const uint4(&x)[4] = X[j];
        unsigned char* row = stage + dst[j];
        constexpr int kHigh = XStage<Tokens>::kCoreBytes;
        constexpr int kOdd = XStage<Tokens>::kStepBytes;
        *reinterpret_cast<uint4*>(row) =
            make_uint4(__byte_perm(x[0].x, x[0].z, 0x5410), __byte_perm(x[1].x, x[1].z, 0x5410),
                       __byte_perm(x[2].x, x[2].z, 0x5410), __byte_perm(x[3].x, x[3].z, 0x5410));
        *reinterpret_cast<uint4*>(row + kHigh) =
            make_uint4(__byte_perm(x[0].x, x[0].z, 0x7632), __byte_perm(x[1].x, x[1].z, 0x7632),
                       __byte_perm(x[2].x, x[2].z, 0x7632), __byte_perm(x[3].x, x[3].z, 0x7632));
        *reinterpret_cast<uint4*>(row + kOdd) =
            make_uint4(__byte_perm(x[0].y, x[0].w, 0x5410), __byte_perm(x[1].y, x[1].w, 0x5410),
                       __byte_perm(x[2].y, x[2].w, 0x5410), __byte_perm(x[3].y, x[3].w, 0x5410));
        *reinterpret_cast<uint4*>(row + kOdd + kHigh) =
            make_uint4(__byte_perm(x[0].y, x[0].w, 0x7632), __byte_perm(x[1].y, x[1].w, 0x7632),
                       __byte_perm(x[2].y, x[2].w, 0x7632), __byte_perm(x[3].y, x[3].w, 0x7632));
      }
    }
  }
};

/// Makes this thread's shared-memory writes visible to the async proxy (wgmma operand reads).
__device__ __forceinline__ void fence_async_shared() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
/// Orders earlier register writes (A fragments, accumulators) before the next wgmma.
__device__ __forceinline__ void fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
/// Waits until every committed wgmma group has completed.
__device__ __forceinline__ void wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }

/// Keeps the compiler from moving accumulator registers across the asynchronous MMAs.
template <int TokenTiles>
__device__ __forceinline__ void pin(float (&acc)[TokenTiles][4]) {
#pragma unroll
  for (int t = 0; t < TokenTiles; ++t)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(acc[t][e])::"memory");
}

// acc += A * B for one m64 x n(8 TokenTiles) x k16 step: A is this warp's 16 rows of the
// warpgroup's 64, in registers (a, mma.m16n8k16's A fragment); B is x in shared memory (desc);
// acc[t][0..3] is token tile t in mma.m16n8k16's accumulator layout. The operand lists cannot be
// generated, so each width is written out (f16 and bf16 by the TYPE argument).
#define QMM_WGMMA_ACC4(t) "+f"(acc[t][0]), "+f"(acc[t][1]), "+f"(acc[t][2]), "+f"(acc[t][3])
#define QMM_WGMMA_N8(TYPE)                                                                                    \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %9, 0;\n"                                                    \
               "wgmma.mma_async.sync.aligned.m64n8k16.f32." TYPE "." TYPE                                     \
               " {%0, %1, %2, %3}, {%4, %5, %6, %7}, %8, p, 1, 1, 0;\n}\n"                                    \
               : QMM_WGMMA_ACC4(0)                                                                            \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1))
#define QMM_WGMMA_N16(TYPE)                                                                                   \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %13, 0;\n"                                                   \
               "wgmma.mma_async.sync.aligned.m64n16k16.f32." TYPE "." TYPE                                    \
               " {%0, %1, %2, %3, %4, %5, %6, %7}, {%8, %9, %10, %11}, %12, p, 1, 1, 0;\n}\n"                 \
               : QMM_WGMMA_ACC4(0), QMM_WGMMA_ACC4(1)                                                         \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1))
#define QMM_WGMMA_N32(TYPE)                                                                                   \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"                                                   \
               "wgmma.mma_async.sync.aligned.m64n32k16.f32." TYPE "." TYPE                                    \
               " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15},"                     \
               " {%16, %17, %18, %19}, %20, p, 1, 1, 0;\n}\n"                                                 \
               : QMM_WGMMA_ACC4(0), QMM_WGMMA_ACC4(1), QMM_WGMMA_ACC4(2), QMM_WGMMA_ACC4(3)                   \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1))
#define QMM_WGMMA_N64(TYPE)                                                                                   \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"                                                   \
               "wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE                                    \
               " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"                      \
               " %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31},"            \
               " {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"                                                 \
               : QMM_WGMMA_ACC4(0), QMM_WGMMA_ACC4(1), QMM_WGMMA_ACC4(2), QMM_WGMMA_ACC4(3),                  \
                 QMM_WGMMA_ACC4(4), QMM_WGMMA_ACC4(5), QMM_WGMMA_ACC4(6), QMM_WGMMA_ACC4(7)                   \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1))

#define QMM_WGMMA_N40(TYPE)                                                                                   \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %25, 0;\n"                                                   \
               "wgmma.mma_async.sync.aligned.m64n40k16.f32." TYPE "." TYPE                                    \
               " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19},"   \
               " {%20, %21, %22, %23}, %24, p, 1, 1, 0;\n}\n"                                                 \
               : QMM_WGMMA_ACC4(0), QMM_WGMMA_ACC4(1), QMM_WGMMA_ACC4(2), QMM_WGMMA_ACC4(3), QMM_WGMMA_ACC4(4) \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1))
#define QMM_WGMMA_N48(TYPE)                                                                                   \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %29, 0;\n"                                                   \
               "wgmma.mma_async.sync.aligned.m64n48k16.f32." TYPE "." TYPE                                    \
               " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19,"    \
               " %20, %21, %22, %23}, {%24, %25, %26, %27}, %28, p, 1, 1, 0;\n}\n"                            \
               : QMM_WGMMA_ACC4(0), QMM_WGMMA_ACC4(1), QMM_WGMMA_ACC4(2), QMM_WGMMA_ACC4(3),                  \
                 QMM_WGMMA_ACC4(4), QMM_WGMMA_ACC4(5)                                                         \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1))

/// The 64-token pass with only the first Live token tiles multiplied (Live = 5 or 6: n40, n48).
template <typename T, int Live>
__device__ __forceinline__ void mma_async_live(float (&acc)[8][4], const std::uint32_t (&a)[4], std::uint64_t desc) {
  constexpr bool kHalf = std::is_same_v<T, __half>;
  if constexpr (Live == 5) {
    if constexpr (kHalf) QMM_WGMMA_N40("f16"); else QMM_WGMMA_N40("bf16");
  } else {
    static_assert(Live == 6, "live token tiles 5 or 6");
    if constexpr (kHalf) QMM_WGMMA_N48("f16"); else QMM_WGMMA_N48("bf16");
  }
}

template <typename T, int TokenTiles>
__device__ __forceinline__ void mma_async(float (&acc)[TokenTiles][4], const std::uint32_t (&a)[4],
                                          std::uint64_t desc) {
  constexpr bool kHalf = std::is_same_v<T, __half>;
  if constexpr (TokenTiles == 1) {
    if constexpr (kHalf) QMM_WGMMA_N8("f16"); else QMM_WGMMA_N8("bf16");
  } else if constexpr (TokenTiles == 2) {
    if constexpr (kHalf) QMM_WGMMA_N16("f16"); else QMM_WGMMA_N16("bf16");
  } else if constexpr (TokenTiles == 4) {
    if constexpr (kHalf) QMM_WGMMA_N32("f16"); else QMM_WGMMA_N32("bf16");
  } else {
    static_assert(TokenTiles == 8, "wgmma token tiles are 1, 2, 4 or 8");
    if constexpr (kHalf) QMM_WGMMA_N64("f16"); else QMM_WGMMA_N64("bf16");
  }
}

#undef QMM_WGMMA_N48
#undef QMM_WGMMA_N40
#undef QMM_WGMMA_N64
#undef QMM_WGMMA_N32
#undef QMM_WGMMA_N16
#undef QMM_WGMMA_N8
#undef QMM_WGMMA_ACC4

}  // namespace qmm::cuda::wgmma
