// qmv_mma: the small-M kernel family. transpose=true (W is N x K), fp16/bf16 activations.
//
// Each weight byte is read from memory once and dequantized once per pass of up to
// 8*TokenTiles rows of x (M is a template parameter through TokenTiles, never a grid
// dimension). Weights are the 16-row A operand of mma.m16n8k16, tokens the 8-wide B operand,
// fp32 accumulation. The dequantized weight s*q + b is formed with one fused 16-bit multiply-add
// from the exact integer q (see mma_fragments.cuh for the k mapping).
//
// Work split: stream-K over (128-row block, 128-value K segment) items, see stream_k.cuh.
//
// Memory pipeline: each thread copies its own share of an item (4 rows x 32 packed values and
// those rows' scale and bias words) with cp.async into a ring of its own in shared memory, up to
// mma_pipeline_stages(bits) - 1 items ahead of the one it computes, across row-block
// boundaries. A thread reads back only what it copied itself, so cp.async.wait_group is the
// only synchronisation (no block barrier, nothing for racecheck to see). The previous register
// double buffer kept only one segment (2 KB per warp) in flight: ncu showed warps waiting on
// global loads ~40 % of their cycles (bench/NOTES.md, v8).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <type_traits>

#include "src/cuda/check.h"
#include "src/cuda/dynamic_smem.h"
#include "src/cuda/kernels.h"
#include "src/cuda/mma_fragments.cuh"
#include "src/cuda/qmv_mma_segment.cuh"
#include "src/cuda/static_dispatch.cuh"
#include "src/cuda/stream_k.cuh"
#include "src/cuda/workspace.h"
#include "src/format/affine.h"

namespace qmm::detail {
namespace {

namespace mma = qmm::cuda::mma;
using cuda_dispatch::kMmaRowsPerBlock;
using cuda_dispatch::kMmaSegment;
using cuda_dispatch::kMmaThreads;

using MmaParams = qmm::cuda::stream_k::Params;
using qmm::cuda::stream_k::item_start;

using mma::SegmentLoad;
using mma::compute_segment;

template <typename T, int Bits, bool L2Prefetch = false>
__device__ __forceinline__ void load_segment(SegmentLoad<T, Bits>& L, const MmaParams& p,
                                             const std::uint32_t* const (&wrow)[4], const T* const (&srow)[4],
                                             const T* const (&brow)[4], int seg, int c) {
  const int k_chunk = seg * kMmaSegment + 32 * c;
  if (k_chunk < p.K) {
    const int g = k_chunk >> p.group_shift;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      L.chunk[i] = mma::load_chunk<Bits, L2Prefetch>(wrow[i] + static_cast<std::int64_t>(seg * 4 + c) * Bits);
      L.s[i] = srow[i][g];
      L.b[i] = brow[i][g];
    }
  } else {
    // K tail: zero weights (q = 0, s = 0, b = 0) so the MMA adds exact zeros.
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
      for (int w = 0; w < Bits; ++w) L.chunk[i].w[w] = 0;
      L.s[i] = T(0.0f);
      L.b[i] = T(0.0f);
    }
  }
}

// TEMPORARY experiment variants: bit 0 = L2::256B on weight loads, bit 1 = two segments ahead,
// bit 2 = compiled for 3 blocks/SM (168 registers) with one segment ahead.
template <typename T, int Bits, int TokenTiles, int Variant>
__global__ void __launch_bounds__(kMmaThreads, (Variant & 6) ? 3 : cuda_dispatch::mma_min_blocks_per_sm(TokenTiles))
    qmv_mma_register_kernel(const MmaParams p) {
  constexpr bool kHint = (Variant & 1) != 0;
  constexpr bool kDeep = (Variant & 2) != 0;
  __shared__ int s_is_last;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int row_in_8 = lane >> 2;  // A row within an 8-row half / B column (token)
  const int c = lane & 3;          // which 32-value chunk of a segment this thread feeds
  const std::int64_t items = static_cast<std::int64_t>(p.row_blocks) * p.segments;
  const std::int64_t start = item_start(items, p.blocks, blockIdx.x);
  const std::int64_t end = item_start(items, p.blocks, blockIdx.x + 1);
  const T* scales = static_cast<const T*>(p.scales);
  const T* biases = static_cast<const T*>(p.biases);

  for (std::int64_t cur = start; cur < end;) {
    const int rb = static_cast<int>(cur / p.segments);
    const int s0 = static_cast<int>(cur % p.segments);
    const int s1 = static_cast<int>(std::min<std::int64_t>(p.segments, s0 + (end - cur)));

    const std::uint32_t* wrow[4];
    const T* srow[4];
    const T* brow[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      // Rows past N read row N-1 (valid memory); their outputs are never stored.
      const int n = min(rb * kMmaRowsPerBlock + warp * 32 + i * 8 + row_in_8, p.N - 1);
      wrow[i] = p.w_q + n * p.words_per_row;
      srow[i] = scales + static_cast<std::int64_t>(n) * p.groups_per_row;
      brow[i] = biases + static_cast<std::int64_t>(n) * p.groups_per_row;
    }

    float acc[2][TokenTiles][4];
    qmm::cuda::stream_k::zero(acc);

    // Register double buffer: the next segment's weight loads are in flight while this one
    // computes.
    if constexpr (kDeep) {
      SegmentLoad<T, Bits> L0, L1, L2;
      load_segment<T, Bits, kHint>(L0, p, wrow, srow, brow, s0, c);
      if (s0 + 1 < s1) load_segment<T, Bits, kHint>(L1, p, wrow, srow, brow, s0 + 1, c);
      int seg = s0;
      for (;;) {
        if (seg >= s1) break;
        if (seg + 2 < s1) load_segment<T, Bits, kHint>(L2, p, wrow, srow, brow, seg + 2, c);
        compute_segment<T, Bits, TokenTiles>(acc, L0, p, seg, c, row_in_8);
        if (++seg >= s1) break;
        if (seg + 2 < s1) load_segment<T, Bits, kHint>(L0, p, wrow, srow, brow, seg + 2, c);
        compute_segment<T, Bits, TokenTiles>(acc, L1, p, seg, c, row_in_8);
        if (++seg >= s1) break;
        if (seg + 2 < s1) load_segment<T, Bits, kHint>(L1, p, wrow, srow, brow, seg + 2, c);
        compute_segment<T, Bits, TokenTiles>(acc, L2, p, seg, c, row_in_8);
        ++seg;
      }
    } else {
    SegmentLoad<T, Bits> current;
    load_segment<T, Bits, kHint>(current, p, wrow, srow, brow, s0, c);
    for (int seg = s0; seg < s1; ++seg) {
      SegmentLoad<T, Bits> next;
      if (seg + 1 < s1) load_segment<T, Bits, kHint>(next, p, wrow, srow, brow, seg + 1, c);
      compute_segment<T, Bits, TokenTiles>(acc, current, p, seg, c, row_in_8);
      if (seg + 1 < s1) current = next;
    }
    }

    qmm::cuda::stream_k::finish_row_block<T, TokenTiles>(acc, p, rb, cur, cur + (s1 - s0) - 1, start, &s_is_last);
    cur += s1 - s0;
  }
}


// ---- the per-thread cp.async ring ----------------------------------------------------------

__device__ __forceinline__ std::uint32_t shared_address(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}
/// cp.async of Bytes (4, 8 or 16); src_bytes < Bytes zero-fills the rest (0: all zeros, src unread).
template <int Bytes>
__device__ __forceinline__ void cp_async(std::uint32_t dst, const void* src, int src_bytes) {
  static_assert(Bytes == 4 || Bytes == 8 || Bytes == 16, "cp.async copies 4, 8 or 16 bytes");
  if constexpr (Bytes == 16) {
    // .cg: weights are read once, keep them out of L1 (x lives there).
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(dst), "l"(src), "n"(Bytes), "r"(src_bytes)
                 : "memory");
  }
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int Pending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending) : "memory");
}

/// Where a thread's share of one item lies in a stage. Pieces are the load widths of
/// load_chunk (16 bytes for 4/8-bit, 8 for 2/6-bit, 4 for 3/5-bit); stage offsets are
/// [row][piece][thread] for weights and [row][thread] for (scale word, bias word) pairs, so
/// consecutive threads touch consecutive addresses (no bank conflicts).
template <int Bits>
struct RingLayout {
  static constexpr int kPieceBytes = Bits % 4 == 0 ? 16 : Bits % 2 == 0 ? 8 : 4;
  static constexpr int kPieces = 4 * Bits / kPieceBytes;
  static constexpr int kScalesOffset = 4 * kPieces * kMmaThreads * kPieceBytes;
  static constexpr int kStageBytes = cuda_dispatch::mma_stage_bytes(Bits);
  static constexpr int kStages = cuda_dispatch::mma_pipeline_stages(Bits);
  static_assert(kScalesOffset + 4 * kMmaThreads * 8 == kStageBytes, "stage layout and mma_stage_bytes disagree");
  __device__ static constexpr int weight_offset(int row, int piece, int tid) {
    return ((row * kPieces + piece) * kMmaThreads + tid) * kPieceBytes;
  }
  __device__ static constexpr int scale_offset(int row, int tid) { return kScalesOffset + (row * kMmaThreads + tid) * 8; }
};

/// Copies the 4-byte word holding the 16-bit element at `elem` of an array [base, end). Where
/// that word reaches outside the array (its first or last element), the element is read by
/// hand and stored in both halves, so either half the reader picks is that element.
__device__ __forceinline__ void copy_scale_word(std::uint32_t dst, const char* elem, const char* base, const char* end,
                                                bool valid) {
  const char* word = reinterpret_cast<const char*>(reinterpret_cast<std::uintptr_t>(elem) & ~std::uintptr_t{3});
  if (!valid) {
    cp_async<4>(dst, word, 0);
  } else if (word >= base && word + 4 <= end) {
    cp_async<4>(dst, word, 4);
  } else {
    const std::uint32_t v = *reinterpret_cast<const unsigned short*>(elem);
    asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(dst), "r"(v | (v << 16)) : "memory");
  }
}

/// Issues this thread's copies of item (rb, seg) into `stage`. Values past K (the K tail's
/// chunks) are zero-filled: q = 0, s = 0, b = 0 adds exact zeros. Rows past N copy row N-1.
template <typename T, int Bits>
__device__ __forceinline__ void issue_item(const MmaParams& p, std::uint32_t stage, int rb, int seg) {
  using L = RingLayout<Bits>;
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int c = lane & 3;
  const int k_chunk = seg * kMmaSegment + 32 * c;
  const bool valid = k_chunk < p.K;
  const int g = k_chunk >> p.group_shift;
  const char* scales = static_cast<const char*>(p.scales);
  const char* biases = static_cast<const char*>(p.biases);
  const std::int64_t elements = static_cast<std::int64_t>(p.N) * p.groups_per_row;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int n = min(rb * kMmaRowsPerBlock + warp * 32 + i * 8 + (lane >> 2), p.N - 1);
    const char* w = reinterpret_cast<const char*>(p.w_q + n * p.words_per_row + static_cast<std::int64_t>(seg * 4 + c) * Bits);
#pragma unroll
    for (int u = 0; u < L::kPieces; ++u) {
      cp_async<L::kPieceBytes>(stage + L::weight_offset(i, u, tid), valid ? w + u * L::kPieceBytes : static_cast<const void*>(p.w_q),
                               valid ? L::kPieceBytes : 0);
    }
    const std::int64_t e = static_cast<std::int64_t>(n) * p.groups_per_row + (valid ? g : 0);
    const std::uint32_t dst = stage + L::scale_offset(i, tid);
    copy_scale_word(dst, scales + 2 * e, scales, scales + 2 * elements, valid);
    copy_scale_word(dst + 4, biases + 2 * e, biases, biases + 2 * elements, valid);
  }
}

/// Reads this thread's share of an item back from `stage` (its own copies, already landed).
/// `s_select`/`b_select` are the byte_perm selectors of the scale's and bias's half of its word
/// (the same for the thread's 4 rows, which differ by multiples of 8).
template <typename T, int Bits>
__device__ __forceinline__ void read_item(SegmentLoad<T, Bits>& L, const unsigned char* stage, std::uint32_t s_select,
                                          std::uint32_t b_select) {
  using R = RingLayout<Bits>;
  using T2 = typename mma::Types<T>::T2;
  const int tid = threadIdx.x;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int u = 0; u < R::kPieces; ++u) {
      const unsigned char* src = stage + R::weight_offset(i, u, tid);
      constexpr int kWords = R::kPieceBytes / 4;
      if constexpr (kWords == 4) {
        const uint4 v = *reinterpret_cast<const uint4*>(src);
        L.chunk[i].w[4 * u] = v.x, L.chunk[i].w[4 * u + 1] = v.y, L.chunk[i].w[4 * u + 2] = v.z,
                     L.chunk[i].w[4 * u + 3] = v.w;
      } else if constexpr (kWords == 2) {
        const uint2 v = *reinterpret_cast<const uint2*>(src);
        L.chunk[i].w[2 * u] = v.x, L.chunk[i].w[2 * u + 1] = v.y;
      } else {
        L.chunk[i].w[u] = *reinterpret_cast<const std::uint32_t*>(src);
      }
    }
    const uint2 sb = *reinterpret_cast<const uint2*>(stage + R::scale_offset(i, tid));
    L.s[i] = mma::as_t2<T2>(__byte_perm(sb.x, 0, s_select)).x;
    L.b[i] = mma::as_t2<T2>(__byte_perm(sb.y, 0, b_select)).x;
  }
}

/// The byte_perm selector that copies the 16-bit half of a word holding the element at byte
/// address `base + 2 * e` into both halves, given e's parity.
__device__ __forceinline__ std::uint32_t half_selector(const void* base, int e_parity) {
  const int high = (static_cast<int>(reinterpret_cast<std::uintptr_t>(base) >> 1) + e_parity) & 1;
  return high ? 0x3232u : 0x1010u;
}

template <typename T, int Bits, int TokenTiles>
__global__ void __launch_bounds__(kMmaThreads, cuda_dispatch::mma_min_blocks_per_sm(TokenTiles))
    qmv_mma_kernel(const MmaParams p) {
  using L = RingLayout<Bits>;
  extern __shared__ __align__(16) unsigned char ring[];
  __shared__ int s_is_last;
  const int lane = threadIdx.x & 31;
  const int row_in_8 = lane >> 2;  // A row within an 8-row half / B column (token)
  const int c = lane & 3;          // which 32-value chunk of a segment this thread feeds
  const std::int64_t items = static_cast<std::int64_t>(p.row_blocks) * p.segments;
  const std::int64_t start = item_start(items, p.blocks, blockIdx.x);
  const std::int64_t end = item_start(items, p.blocks, blockIdx.x + 1);
  const std::uint32_t ring_address = shared_address(ring);

  // Issue cursor: the next item to copy, kStages - 1 ahead of the one computed.
  std::int64_t issue_t = start;
  int issue_rb = static_cast<int>(start / p.segments);
  int issue_seg = static_cast<int>(start % p.segments);
  int issue_stage = 0;
  auto issue_next = [&]() {
    if (issue_t < end) {
      issue_item<T, Bits>(p, ring_address + issue_stage * L::kStageBytes, issue_rb, issue_seg);
      ++issue_t;
      if (++issue_seg == p.segments) issue_seg = 0, ++issue_rb;
      issue_stage = issue_stage + 1 == L::kStages ? 0 : issue_stage + 1;
    }
    cp_async_commit();  // empty groups too, so wait_group counts items
  };
#pragma unroll
  for (int s = 0; s < L::kStages - 1; ++s) issue_next();

  // Parity of this thread's scale elements n * groups_per_row + g: its rows all have the
  // parity of row_in_8 (rows past N copy row N-1 and are never stored, so their pick is moot).
  const int row_parity = row_in_8 & p.groups_per_row & 1;
  int stage = 0;
  for (std::int64_t cur = start; cur < end;) {
    const int rb = static_cast<int>(cur / p.segments);
    const int s0 = static_cast<int>(cur % p.segments);
    const int s1 = static_cast<int>(min(static_cast<std::int64_t>(p.segments), s0 + (end - cur)));

    float acc[2][TokenTiles][4];
    qmm::cuda::stream_k::zero(acc);
    for (int seg = s0; seg < s1; ++seg) {
      issue_next();
      cp_async_wait<L::kStages - 1>();  // this thread's copies of item `seg` have landed
      const int parity = (((seg * kMmaSegment + 32 * c) >> p.group_shift) + row_parity) & 1;
      SegmentLoad<T, Bits> current;
      read_item<T, Bits>(current, ring + stage * L::kStageBytes, half_selector(p.scales, parity),
                         half_selector(p.biases, parity));
      compute_segment<T, Bits, TokenTiles>(acc, current, p, seg, c, row_in_8);
      stage = stage + 1 == L::kStages ? 0 : stage + 1;
    }

    qmm::cuda::stream_k::finish_row_block<T, TokenTiles>(acc, p, rb, cur, cur + (s1 - s0) - 1, start, &s_is_last);
    cur += s1 - s0;
  }
}

using KernelFn = void (*)(MmaParams);

/// The instantiation for this problem's activation dtype and bits and the configuration's token
/// tiles (launch and occupancy query share it).
KernelFn kernel_for(const MatmulProblem& p, int token_tiles) {
  // TEMPORARY (v8 A/B on the H100): QMM_DEV_MMA_REGISTERS=<variant 0-3> runs the register pipeline (4-bit).
  static const char* env = std::getenv("QMM_DEV_MMA_REGISTERS");
  static const bool registers = env != nullptr;
  static const int variant = env != nullptr ? std::atoi(env) : 0;
  return qmm::cuda::with_16bit_dtype(p.x_dtype, [&](auto dtype) {
    using T = typename decltype(dtype)::type;
    return qmm::cuda::with_token_tiles<1, 2, 4, 8>(token_tiles, [&](auto tiles) {
      return qmm::cuda::with_bits(p.w.bits, [&](auto bits) -> KernelFn {
        if constexpr (decltype(bits)::value == 4) {
          constexpr int kTiles = std::decay_t<decltype(tiles)>::value;
          if (registers) {
            switch (variant) {
              case 1: return &qmv_mma_register_kernel<T, 4, kTiles, 1>;
              case 2: return &qmv_mma_register_kernel<T, 4, kTiles, 2>;
              case 3: return &qmv_mma_register_kernel<T, 4, kTiles, 3>;
              case 4: return &qmv_mma_register_kernel<T, 4, kTiles, 4>;
              case 5: return &qmv_mma_register_kernel<T, 4, kTiles, 5>;
              default: return &qmv_mma_register_kernel<T, 4, kTiles, 0>;
            }
          }
        }
        return &qmv_mma_kernel<T, decltype(bits)::value, decltype(tiles)::value>;
      });
    });
  });
}

/// Dynamic shared memory of the ring for this problem's bits.
int ring_bytes(const MatmulProblem& p) {
  if (std::getenv("QMM_DEV_MMA_REGISTERS") != nullptr && p.w.bits == 4) return 0;
  return cuda_dispatch::mma_pipeline_stages(p.w.bits) * cuda_dispatch::mma_stage_bytes(p.w.bits);
}

}  // namespace

int qmv_mma_blocks_per_sm(const MatmulProblem& p, const cuda_dispatch::KernelConfig& config) {
  const KernelFn kernel = kernel_for(p, config.token_tiles);
  const int smem = ring_bytes(p);
  allow_dynamic_smem(reinterpret_cast<const void*>(kernel), smem);
  int blocks = 0;
  QMM_CUDA_CHECK(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, reinterpret_cast<const void*>(kernel), kMmaThreads, smem));
  return blocks;
}

void launch_qmv_mma(const MatmulProblem& p, const cuda_dispatch::KernelConfig& config, cudaStream_t stream) {
  const KernelFn kernel = kernel_for(p, config.token_tiles);
  const int smem = ring_bytes(p);
  allow_dynamic_smem(reinterpret_cast<const void*>(kernel), smem);
  MmaParams q = qmm::cuda::stream_k::make_params(p, config.blocks);
  qmm::cuda::stream_k::bind_workspace(q, stream, p, config);
  qmm::cuda::stream_k::for_each_pass(q, p, 8 * config.token_tiles, [&](const MmaParams& pass) {
    kernel<<<config.blocks, kMmaThreads, smem, stream>>>(pass);
    QMM_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace qmm::detail
