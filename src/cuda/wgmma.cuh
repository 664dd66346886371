// Warpgroup MMA (sm_90a wgmma.mma_async) for qmv_mma's 64-token passes: the dequantized weights
// stay in registers as the A operand (the fragments mma.m16n8k16 takes, so qmv_mma's weight side
// is unchanged), and x is the B operand, staged once per block and segment in shared memory in the
// k order the A fragments use (mma_fragments.cuh).
//
// Why: with mma.sync every warp multiplies its rows by each 8-token tile itself and loads and
// permutes its own copy of x: 8 MMAs, 8 x loads and 32 byte permutes per warp and step pair at 64
// tokens, on top of the dequantization. One wgmma multiplies a warpgroup's 64 rows by all the
// tokens, asynchronously, from one shared copy of x: -6..-18 % at M = 33..64 on the H100
// (bench/NOTES.md v11).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "src/cuda/dispatch.h"
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

/// The wgmma descriptor of step `step` of a segment staged at shared address `stage`: start
/// address, leading (K) byte offset between the two core matrices of a group, stride (token) byte
/// offset between groups, all in 16-byte units; no swizzle.
template <int Tokens>
__device__ __forceinline__ std::uint64_t x_descriptor(std::uint32_t stage, int step) {
  const std::uint32_t start = stage + static_cast<std::uint32_t>(step * XStage<Tokens>::kStepBytes);
  return static_cast<std::uint64_t>((start & 0x3FFFF) >> 4) |
         (static_cast<std::uint64_t>(XStage<Tokens>::kCoreBytes >> 4) << 16) |
         (static_cast<std::uint64_t>(XStage<Tokens>::kGroupBytes >> 4) << 32);
}

/// Writes segment `seg` of x (tokens past M and values past K as zeros) into `stage`. Every thread
/// of the block takes part; the caller makes the writes visible to the async proxy and the other
/// warps (fence_async_shared, then a barrier) before a wgmma reads them.
template <typename T, int Tokens>
__device__ __forceinline__ void stage_x(unsigned char* stage, const stream_k::Params& p, int seg) {
  const T* x = static_cast<const T*>(p.x);
  // Item i: chunk c = i % 4, token r = (i / 4) % 8 of its group, then step pair and group. A
  // warp's 32 lanes cover the 8 tokens x 4 chunks of one (pair, group), so its 4-byte stores land
  // in 32 different banks.
#pragma unroll
  for (int i = static_cast<int>(threadIdx.x); i < Tokens * 16; i += kMmaThreads) {
    const int c = i & 3;
    const int r = (i >> 2) & 7;
    const int pair = (i >> 5) & 3;
    const int group = i >> 7;
    const int n = group * 8 + r;
    const int k = seg * kMmaSegment + 32 * c + 8 * pair;
    uint4 X = make_uint4(0, 0, 0, 0);
    if (n < p.M && k < p.K) X = __ldg(reinterpret_cast<const uint4*>(x + static_cast<std::int64_t>(n) * p.K + k));
    unsigned char* even = stage + (2 * pair) * XStage<Tokens>::kStepBytes + group * XStage<Tokens>::kGroupBytes +
                          r * 16 + c * 4;
    unsigned char* odd = even + XStage<Tokens>::kStepBytes;
    constexpr int kHigh = XStage<Tokens>::kCoreBytes;  // slots 8-15
    *reinterpret_cast<std::uint32_t*>(even) = __byte_perm(X.x, X.z, 0x5410);         // (x0, x4)
    *reinterpret_cast<std::uint32_t*>(even + kHigh) = __byte_perm(X.x, X.z, 0x7632);  // (x1, x5)
    *reinterpret_cast<std::uint32_t*>(odd) = __byte_perm(X.y, X.w, 0x5410);           // (x2, x6)
    *reinterpret_cast<std::uint32_t*>(odd + kHigh) = __byte_perm(X.y, X.w, 0x7632);   // (x3, x7)
  }
}

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

#undef QMM_WGMMA_N64
#undef QMM_WGMMA_N32
#undef QMM_WGMMA_N16
#undef QMM_WGMMA_N8
#undef QMM_WGMMA_ACC4

}  // namespace qmm::cuda::wgmma
