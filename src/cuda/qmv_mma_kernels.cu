// qmv_mma: the small-M kernel family. transpose=true (W is N x K), fp16/bf16 activations.
//
// Each weight byte is read from memory once and dequantized once per pass of up to
// 8*TokenTiles rows of x (M is a template parameter through TokenTiles, never a grid
// dimension). Weights are the 16-row A operand of mma.m16n8k16, tokens the 8-wide B operand,
// fp32 accumulation.
//
// Work split, two kinds over (128-row block, 128-value K segment) items:
// - stream-K (qmv_mma_kernel, stream_k.cuh): persistent blocks take equal runs of items and a
//   row block's partials are added by its last contributor through global memory;
// - cluster split (qmv_mma_cluster_kernel, sm_90): a thread-block cluster per row block, its
//   ranks taking equal shares of K, the partials added in rank order through distributed
//   shared memory. Dispatch picks it where the stream-K fixup would cost more
//   (cuda_dispatch::cluster_size). Where the clusters leave most SMs idle, a block of 8 or 16
//   tokens may split its run in two as well (KSplit, "_k2": 256 threads, the halves added in
//   shared memory; cuda_dispatch::block_k_split).
// A block's run of segments streams through registers: the next segment's loads are in flight
// while the current one computes (run_pairs_x_ahead / run_two_buffers / run_one_buffer below,
// chosen by run_loop).
// The MMAs are mma.sync per warp, or, for 32- and 64-token passes on compute capability 9.0 with
// sm_90a code, warpgroup wgmma with x staged in shared memory (run_wgmma, wgmma.cuh;
// cuda_dispatch::wgmma_pays).
//
// The dequantized weight s*q + b is formed with one fused 16-bit multiply-add from the exact
// integer q (qmv_mma_segment.cuh, mma_fragments.cuh). Folding scale and bias after the MMA in
// fp32 (DESIGN.md 4.3) was built and measured 3-6 % slower at M <= 9 on the H100 (an all-ones MMA
// per group for sum(x), bench/NOTES.md v8), so it is not used.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <type_traits>

#include "src/cuda/check.h"
#include "src/cuda/cp_async.cuh"
#include "src/cuda/kernels.h"
#include "src/cuda/mma_fragments.cuh"
#include "src/cuda/qmv_mma_segment.cuh"
#include "src/cuda/static_dispatch.cuh"
#include "src/cuda/stream_k.cuh"
#include "src/cuda/wgmma.cuh"
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

/// Loads a whole segment (no K tail): chunks `offset` words past the row pointers w, scales and
/// biases of group g; the chunk loads issued as Load says (mma_fragments.cuh WeightLoad).
template <typename T, int Bits, mma::WeightLoad Load = mma::WeightLoad::l2_256>
__device__ __forceinline__ void load_whole_segment(SegmentLoad<T, Bits>& L, const std::uint32_t* const (&w)[4],
                                                   std::int64_t offset, const T* const (&srow)[4],
                                                   const T* const (&brow)[4], int g) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    L.chunk[i] = mma::load_chunk<Bits, Load>(w[i] + offset);
    L.s[i] = srow[i][g];
    L.b[i] = brow[i][g];
  }
}

/// Loads segment `seg` (this thread's chunk c of it), zeros for a chunk past K; Load as in
/// load_whole_segment.
template <typename T, int Bits, mma::WeightLoad Load = mma::WeightLoad::l2_256>
__device__ __forceinline__ void load_segment(SegmentLoad<T, Bits>& L, const MmaParams& p,
                                             const std::uint32_t* const (&wrow)[4], const T* const (&srow)[4],
                                             const T* const (&brow)[4], int seg, int c) {
  const int k_chunk = seg * kMmaSegment + 32 * c;
  if (k_chunk < p.K) {
    load_whole_segment<T, Bits, Load>(L, wrow, static_cast<std::int64_t>(seg * 4 + c) * Bits, srow, brow,
                                      k_chunk >> p.group_shift);
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

/// Where this thread's run of whole segments starts: w[i] = row i's words at chunk c of segment s0;
/// returns the chunk's group in that segment (the two-buffer loops advance both from here).
template <int Bits>
__device__ __forceinline__ int whole_segments_start(const std::uint32_t* (&w)[4], const MmaParams& p,
                                                    const std::uint32_t* const (&wrow)[4], int s0, int c) {
#pragma unroll
  for (int i = 0; i < 4; ++i) w[i] = wrow[i] + static_cast<std::int64_t>(s0 * 4 + c) * Bits;
  return (s0 * kMmaSegment + 32 * c) >> p.group_shift;
}

/// The mma.sync run loops (the wgmma path has its own, run_wgmma).
enum class RunLoop { pairs_x_ahead, two_buffers, one_buffer };

/// Which run loop a kernel takes: two register buffers where their registers fit (1 token tile up
/// to 6 bits, 2 and 4 token tiles up to 4 bits; ptxas reports at most 16 bytes of spill), the
/// one-buffer loop otherwise (8-bit weights and 8 token tiles spill in it). With two buffers, 8-
/// and 16-token passes also hold each segment's x (pairs_x_ahead); at 32 tokens those registers
/// do not fit (two_buffers).
/// Measured on the H100: two buffers against one (bench/NOTES.md v9) 4-9 % faster at M <= 8 and
/// 2-7 % at M = 9..16 on 5120 -> 5120 / 13824 and 13824 -> 5120, 1-1.5 % at M = 32 on the two
/// large ones, 1-3 % slower at M = 9..16 on 5120 -> 1024; pairs_x_ahead against two_buffers (v14)
/// 1-10 % faster at M <= 8 and 5-14 % at M = 9..16 on all four shapes.
constexpr RunLoop run_loop(int token_tiles, int bits) {
  if ((token_tiles == 1 && bits <= 6) || (token_tiles == 2 && bits <= 4)) return RunLoop::pairs_x_ahead;
  if (token_tiles == 4 && bits <= 4) return RunLoop::two_buffers;
  return RunLoop::one_buffer;
}

/// Segments [s0, s1) of a row block, two per iteration with two register buffers that trade
/// places (A computes while B loads, then the reverse), so no buffer is ever copied. Whole
/// segments only: the row block's partial last segment (K % 128 != 0), if the run holds it, is
/// computed after the loop by the K-tail path. Same MMAs in the same order as run_one_buffer, so
/// every output bit is the same whichever loop ran (batch invariance across 8 and 16 tokens).
template <typename T, int Bits, int TokenTiles>
__device__ __forceinline__ void run_two_buffers(float (&acc)[2][TokenTiles][4], const MmaParams& p,
                                                const std::uint32_t* const (&wrow)[4], const T* const (&srow)[4],
                                                const T* const (&brow)[4], int s0, int s1, int c, int row_in_8) {
  const int whole_end = min(s1, p.K / kMmaSegment);
  const int group_step = kMmaSegment >> p.group_shift;
  constexpr int kSegmentWords = kMmaSegment * Bits / 32;
  const std::uint32_t* w[4];
  int g = whole_segments_start<Bits>(w, p, wrow, s0, c);
  const mma::TokenCursor<T, TokenTiles> xs(p, s0, c, row_in_8);
  int seg = s0;
  if (seg < whole_end) {
    SegmentLoad<T, Bits> A, B;
    load_whole_segment<T, Bits>(A, w, 0, srow, brow, g);
    int x_offset = 0;
    for (;;) {
      if (seg + 1 < whole_end) load_whole_segment<T, Bits>(B, w, kSegmentWords, srow, brow, g + group_step);
      mma::compute_whole_segment<T, Bits, TokenTiles>(acc, A, xs, x_offset);
      if (seg + 1 >= whole_end) {
        seg += 1;
        break;
      }
      if (seg + 2 < whole_end) load_whole_segment<T, Bits>(A, w, 2 * kSegmentWords, srow, brow, g + 2 * group_step);
      mma::compute_whole_segment<T, Bits, TokenTiles>(acc, B, xs, x_offset + kMmaSegment);
      seg += 2;
      g += 2 * group_step;
      x_offset += 2 * kMmaSegment;
#pragma unroll
      for (int i = 0; i < 4; ++i) w[i] += 2 * kSegmentWords;
      if (seg >= whole_end) break;
    }
  }
  if (seg < s1) {
    SegmentLoad<T, Bits> L;
    load_segment<T, Bits>(L, p, wrow, srow, brow, seg, c);
    compute_segment<T, Bits, TokenTiles>(acc, L, p, seg, c, row_in_8);
  }
}

/// Segments [s0, s1) of an 8- or 16-token pass (M <= 16): run_two_buffers' two buffers, each
/// segment's x loaded with its weights, a whole pair of segments per iteration (no branch between
/// a buffer's loads and its use), and each buffer's loads issued only after the other buffer's
/// data has arrived (arrival_dependency). Why: ptxas tracks the loads on one scoreboard, and a
/// wait covers every load on it; in run_two_buffers at one token tile segment A's x and segment
/// B's weights shared one, so A's MMAs waited for B's weights (bench/NOTES.md v13 item 7). H100:
/// 1-10 % faster at M <= 8, 5-14 % at M = 9..16 (v14). Same MMAs in the same order, so the same
/// bits as run_two_buffers and run_one_buffer.
/// First: how the run's first segment's weights are loaded, Rest: the others'. Without the
/// L2::256B hint the first weights arrive sooner (a 64-byte request per row instead of 256), the
/// rest of the block comes with the second segment. H100 (bench/NOTES.md v15), first segment
/// plain: the cluster split 1-7 % faster on 5120 -> 5120 and 0.5-3.4 % slower on 5120 -> 1024
/// (kept plain there, the net is a gain); stream-K 2-5 % slower on the two large shapes (kept
/// hinted). Rest is l2_256_no_l1 in the cluster kernel only (see WeightLoad, run_segments).
template <typename T, int Bits, int TokenTiles, mma::WeightLoad First, mma::WeightLoad Rest>
__device__ __forceinline__ void run_pairs_x_ahead(float (&acc)[2][TokenTiles][4], const MmaParams& p,
                                                  const std::uint32_t* const (&wrow)[4], const T* const (&srow)[4],
                                                  const T* const (&brow)[4], int s0, int s1, int c, int row_in_8) {
  const int whole_end = min(s1, p.K / kMmaSegment);
  const int group_step = kMmaSegment >> p.group_shift;
  constexpr int kSegmentWords = kMmaSegment * Bits / 32;
  const std::uint32_t* w[4];
  int g = whole_segments_start<Bits>(w, p, wrow, s0, c);
  const mma::TokenCursor<T, TokenTiles> xs(p, s0, c, row_in_8);
  int seg = s0;
  if (seg < whole_end) {
    SegmentLoad<T, Bits> A, B;
    mma::SegmentX<TokenTiles> XA, XB;
    load_whole_segment<T, Bits, First>(A, w, 0, srow, brow, g);
    mma::load_segment_x<T, TokenTiles>(XA, xs, 0);
    int x_offset = 0;
    for (int pairs = (whole_end - seg) / 2; pairs > 0; --pairs) {
      int d = mma::arrival_dependency<T, Bits, TokenTiles>(A, XA, p.zero);
      load_whole_segment<T, Bits, Rest>(B, w, kSegmentWords + d, srow, brow, g + group_step + d);
      mma::load_segment_x<T, TokenTiles>(XB, xs, x_offset + kMmaSegment + d);
      mma::compute_whole_segment<T, Bits, TokenTiles>(acc, A, XA);
      // The next pair's first segment, or, after the last pair of an even count, B's again (from
      // L1; unused), so that the loads need no branch.
      const int ahead = min(seg + 2, whole_end - 1) - seg;
      d = mma::arrival_dependency<T, Bits, TokenTiles>(B, XB, p.zero);
      load_whole_segment<T, Bits, Rest>(A, w, ahead * kSegmentWords + d, srow, brow, g + ahead * group_step + d);
      mma::load_segment_x<T, TokenTiles>(XA, xs, x_offset + ahead * kMmaSegment + d);
      mma::compute_whole_segment<T, Bits, TokenTiles>(acc, B, XB);
      seg += 2;
      g += 2 * group_step;
      x_offset += 2 * kMmaSegment;
#pragma unroll
      for (int i = 0; i < 4; ++i) w[i] += 2 * kSegmentWords;
    }
    if (seg < whole_end) {
      mma::compute_whole_segment<T, Bits, TokenTiles>(acc, A, XA);
      seg += 1;
    }
  }
  if (seg < s1) {
    SegmentLoad<T, Bits> L;
    load_segment<T, Bits>(L, p, wrow, srow, brow, seg, c);
    compute_segment<T, Bits, TokenTiles>(acc, L, p, seg, c, row_in_8);
  }
}

/// Segments [s0, s1) with one register buffer for the next segment, whose loads are in flight
/// while this one computes (then it is copied into the current one).
template <typename T, int Bits, int TokenTiles>
__device__ __forceinline__ void run_one_buffer(float (&acc)[2][TokenTiles][4], const MmaParams& p,
                                               const std::uint32_t* const (&wrow)[4], const T* const (&srow)[4],
                                               const T* const (&brow)[4], int s0, int s1, int c, int row_in_8) {
  SegmentLoad<T, Bits> current;
  load_segment<T, Bits>(current, p, wrow, srow, brow, s0, c);
  for (int seg = s0; seg < s1; ++seg) {
    SegmentLoad<T, Bits> next;
    if (seg + 1 < s1) load_segment<T, Bits>(next, p, wrow, srow, brow, seg + 1, c);
    compute_segment<T, Bits, TokenTiles>(acc, current, p, seg, c, row_in_8);
    if (seg + 1 < s1) current = next;
  }
}

/// Bytes of shared memory the wgmma path stages x in: two segments (one being multiplied while
/// the next is written).
template <int TokenTiles>
constexpr int wgmma_stage_bytes() {
  return 2 * qmm::cuda::wgmma::XStage<8 * TokenTiles>::kBytes;
}

/// Segments [s0, s1) with the MMAs on wgmma (sm_90a): per segment, the block stores the segment's
/// x (loaded into registers an iteration earlier) into one of two shared-memory stages, issues
/// the next segment's x and weight loads, dequantizes the A fragments of all eight steps, and
/// sixteen asynchronous wgmmas (the block's two 64-row halves x eight steps) multiply them by the
/// stage. The next segment's loads are in flight during the dequantization and the wgmmas.
/// The run's first segment is loaded without the L2::256B hint (see run_pairs_x_ahead's First),
/// the others as Rest says. H100 (bench/NOTES.md v15): 5120 -> 5120 (cluster) 5-8 % faster at
/// M = 17..64, 5120 -> 13824 and 13824 -> 5120 (stream-K) 1-2 % at M = 32..64; 5120 -> 1024
/// within +-2 %.
template <typename T, int Bits, int TokenTiles, mma::WeightLoad Rest>
__device__ __forceinline__ void run_wgmma(float (&acc)[2][TokenTiles][4], const MmaParams& p,
                                          const std::uint32_t* const (&wrow)[4], const T* const (&srow)[4],
                                          const T* const (&brow)[4], int s0, int s1, int c, unsigned char* stages) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  namespace wg = qmm::cuda::wgmma;
  constexpr int kTokens = 8 * TokenTiles;
  constexpr int kStageBytes = wg::XStage<kTokens>::kBytes;
  const std::uint64_t descriptor = wg::x_descriptor<kTokens>(qmm::cuda::shared_address(stages));
  wg::XStager<T, kTokens> stager(p);
  // One segment: its x and weights were loaded an iteration ago (or before the loop). The store
  // waits for them; only then are the next segment's loads issued, so no wait in this iteration
  // is on a load issued in it: ptxas tracks all of these loads on one scoreboard, and a wait
  // covers every load on it (bench/NOTES.md v13). H100 (v14): 32-token passes 4-6 % faster, k/v's
  // 64-token pass 6-8 %; q/o's 64-token pass 7 % slower at M = 64 (the older order's x store
  // overlapped the wgmmas), the large shapes' within 1 %.
  const auto segment = [&](auto stage_index, SegmentLoad<T, Bits>& current, SegmentLoad<T, Bits>& next, int seg) {
    constexpr int kStage = decltype(stage_index)::value;
    stager.store(stages + kStage * kStageBytes);
    if (seg + 1 < s1) {
      stager.load_segment(seg + 1, p.K);
      load_segment<T, Bits, Rest>(next, p, wrow, srow, brow, seg + 1, c);
    }
    std::uint32_t a[2][8][4];
    mma::segment_fragments<T, Bits>(a, current);
    // Every warp's part of this stage is visible to the wgmmas; the other stage, which the next
    // segment writes, was last read by wgmmas every warp has waited for.
    wg::fence_async_shared();
    __syncthreads();
    wg::fence();
    const auto issue = [&](auto live) {
      constexpr int kLive = decltype(live)::value;
#pragma unroll
      for (int step = 0; step < 8; ++step) {
        const std::uint64_t desc =
            wg::advance(descriptor, kStage * kStageBytes + step * wg::XStage<kTokens>::kStepBytes);
#pragma unroll
        for (int tile = 0; tile < 2; ++tile) {
          if constexpr (kLive == TokenTiles) {
            wg::mma_async<T, TokenTiles>(acc[tile], a[tile][step], desc);
          } else {
            wg::mma_async_live<T, kLive>(acc[tile], a[tile][step], desc);
          }
        }
      }
    };
    // A 64-token pass with at most 40 or 48 tokens multiplies only the live token tiles (the
    // partials of the others stay zero and their outputs are never stored): measured 2-4 % faster
    // at M = 33..48 on the three large Qwen2.5-14B shapes on the H100 (bench/NOTES.md v13 item 6).
    if constexpr (TokenTiles == 8) {
      if (p.M <= 40) {
        issue(std::integral_constant<int, 5>{});
      } else if (p.M <= 48) {
        issue(std::integral_constant<int, 6>{});
      } else {
        issue(std::integral_constant<int, 8>{});
      }
    } else {
      issue(std::integral_constant<int, TokenTiles>{});
    }
    wg::commit();
    wg::wait_all();
    wg::pin(acc[0]);
    wg::pin(acc[1]);
  };
  // Two register buffers that trade places, so the next segment's registers are never copied
  // (a conditional copy was scheduled into the dequantization and waited for the loads there).
  SegmentLoad<T, Bits> A, B;
  stager.load_segment(s0, p.K);
  load_segment<T, Bits, mma::WeightLoad::plain>(A, p, wrow, srow, brow, s0, c);
  for (int seg = s0;;) {
    segment(std::integral_constant<int, 0>{}, A, B, seg);
    if (++seg >= s1) break;
    segment(std::integral_constant<int, 1>{}, B, A, seg);
    if (++seg >= s1) break;
  }
  // The cluster kernel writes its partials over the stages next.
  __syncthreads();
#else
  __trap();  // wgmma is sm_90a code: dispatch and forced() send only compute capability 9.0 here
#endif
}

/// Adds segments [s0, s1) of row block rb into acc: this thread's rows and chunk, with the
/// two-buffer loop where its registers fit, or on wgmma (x staged in `stages`). Cluster: called by
/// the cluster kernel (its weight loads differ: kFirst, kRest).
template <typename T, int Bits, int TokenTiles, bool Wgmma, bool Cluster, int KSplit = 1>
__device__ __forceinline__ void run_segments(float (&acc)[2][TokenTiles][4], const MmaParams& p, int rb, int s0,
                                             int s1, unsigned char* stages) {
  const int lane = threadIdx.x & 31;
  // The block's rows: 4 warps of 32. A cluster block whose K run is split in two
  // (qmv_mma_cluster_kernel's KSplit) has a second 128-thread group with the same rows.
  const int warp = KSplit == 1 ? static_cast<int>(threadIdx.x >> 5) : static_cast<int>(threadIdx.x >> 5) & 3;
  const int row_in_8 = lane >> 2;  // A row within an 8-row half / B column (token)
  const int c = lane & 3;          // which 32-value chunk of a segment this thread feeds
  const T* scales = static_cast<const T*>(p.scales);
  const T* biases = static_cast<const T*>(p.biases);
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
  // After a run's first segment the cluster kernel's pairs loop and wgmma passes load their
  // weights without L1 allocation (mma_fragments.cuh WeightLoad), unless a chunk comes in narrow
  // loads (3-, 5-, 6-bit: mma::chunk_in_narrow_loads). The stream-K kernel, and the cluster
  // kernel's one- and two-buffer loops (6- and 8-bit), keep the plain hint: with no_allocate those
  // loops measured 0..+6.5 % slower on the H100 (bench/NOTES.md v17 item 3).
  using mma::WeightLoad;
  constexpr bool kNoL1 = Cluster && !mma::chunk_in_narrow_loads(Bits);
  constexpr WeightLoad kRest = kNoL1 ? WeightLoad::l2_256_no_l1 : WeightLoad::l2_256;
  if constexpr (Wgmma) {
    run_wgmma<T, Bits, TokenTiles, kRest>(acc, p, wrow, srow, brow, s0, s1, c, stages);
  } else if constexpr (run_loop(TokenTiles, Bits) == RunLoop::pairs_x_ahead) {
    constexpr WeightLoad kFirst = Cluster ? WeightLoad::plain : WeightLoad::l2_256;
    run_pairs_x_ahead<T, Bits, TokenTiles, kFirst, kRest>(acc, p, wrow, srow, brow, s0, s1, c, row_in_8);
  } else if constexpr (run_loop(TokenTiles, Bits) == RunLoop::two_buffers) {
    run_two_buffers<T, Bits, TokenTiles>(acc, p, wrow, srow, brow, s0, s1, c, row_in_8);
  } else {
    run_one_buffer<T, Bits, TokenTiles>(acc, p, wrow, srow, brow, s0, s1, c, row_in_8);
  }
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
/// This block's rank in its cluster, the cluster's size and its index.
struct ClusterPlace {
  std::uint32_t rank, ranks, id;
};
__device__ __forceinline__ ClusterPlace cluster_place() {
  ClusterPlace c;
  asm("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(c.rank));
  asm("mov.u32 %0, %%cluster_nctarank;\n" : "=r"(c.ranks));
  asm("mov.u32 %0, %%clusterid.x;\n" : "=r"(c.id));
  return c;
}

/// Bytes of shared memory cluster_sum_pulled takes.
template <int TokenTiles>
constexpr int pulled_partial_bytes() {
  return 2 * TokenTiles * kMmaThreads * static_cast<int>(sizeof(float4));
}

/// The cluster's partials added in rank order and stored, pulled: every rank writes its partial to
/// its own shared memory, and after a barrier fragment float4 w (entry w / kMmaThreads of thread
/// w % kMmaThreads) is finished by rank w / kMmaThreads % ranks, whose thread loads it from every
/// rank at once (one distributed-shared-memory round trip); a second barrier keeps every rank's
/// shared memory alive until the others have read it. The 64-token wgmma kernel uses this: its x
/// stages share the buffer, which every rank is done with once the first barrier is passed.
template <typename T, int TokenTiles>
__device__ __forceinline__ void cluster_sum_pulled(const float (&acc)[2][TokenTiles][4], const MmaParams& p,
                                                   const ClusterPlace& place, unsigned char* shared) {
  constexpr int kEntries = 2 * TokenTiles;
  auto& s_partial = *reinterpret_cast<qmm::cuda::stream_k::SharedFragments<TokenTiles>*>(shared);
  qmm::cuda::stream_k::store_fragment(acc, s_partial, static_cast<int>(threadIdx.x));
  // Release this block's partial to the cluster and acquire the others'.
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
  for (int w = static_cast<int>(place.rank * kMmaThreads + threadIdx.x); w < kEntries * kMmaThreads;
       w += static_cast<int>(place.ranks) * kMmaThreads) {
    const int thread = w % kMmaThreads;
    const int entry = w / kMmaThreads;
    const std::uint32_t local = qmm::cuda::shared_address(&s_partial[entry][thread]);
    float4 v[cuda_dispatch::kMmaMaxCluster];
#pragma unroll
    for (int r = 0; r < cuda_dispatch::kMmaMaxCluster; ++r) {
      if (r < static_cast<int>(place.ranks)) {
        std::uint32_t remote;
        asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(local), "r"(r));
        asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];\n"
                     : "=f"(v[r].x), "=f"(v[r].y), "=f"(v[r].z), "=f"(v[r].w)
                     : "r"(remote));
      }
    }
    float4 sum = v[0];
#pragma unroll
    for (int r = 1; r < cuda_dispatch::kMmaMaxCluster; ++r) {
      if (r < static_cast<int>(place.ranks)) qmm::cuda::stream_k::add_to(sum, v[r]);
    }
    qmm::cuda::stream_k::store_entry<T>(sum, p, static_cast<int>(place.id), thread, entry / TokenTiles,
                                        entry % TokenTiles);
  }
  // Every rank's shared memory must outlive the others' reads.
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}

/// cluster_sum_pushed's unit: chunk q of a rank's partial is fragment float4s [32 q, 32 q + 32) (a
/// warp's float4s of one entry), and rank q % ranks adds it up.
constexpr int kPushedChunk = 32;
template <int TokenTiles>
constexpr int pushed_chunks() {
  return 2 * TokenTiles * kMmaThreads / kPushedChunk;
}
/// Bytes of shared memory cluster_sum_pushed takes: `ranks` senders x ceil(chunks / ranks) slots.
template <int TokenTiles>
constexpr int pushed_partial_bytes() {
  return (pushed_chunks<TokenTiles>() + cuda_dispatch::kMmaMaxCluster - 1) * kPushedChunk *
         static_cast<int>(sizeof(float4));
}

/// Says "this block runs" to the cluster: cluster_sum_pushed writes into other ranks' shared memory
/// only after every rank has (a block's shared memory may be written only once it runs). Called
/// at the start of the kernel, so the wait in cluster_sum_pushed finds it long done.
__device__ __forceinline__ void cluster_arrive_started() {
  asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
}

/// The cluster's partials added in rank order and stored, pushed: each rank writes chunk q of its
/// partial into the shared memory of rank q % ranks (remote stores), one barrier makes them
/// visible, and each rank adds the copies it received from its own shared memory; after that no
/// rank touches another's, so no second barrier. Against cluster_sum_pulled, which every kernel
/// used before: one remote round trip and one barrier fewer, 5120 -> 1024 -8..-10 % and
/// 5120 -> 5120 -4..-7 % at M <= 16 on the H100 (bench/NOTES.md v16). The same additions in the
/// same order, so the same bits. `shared` must not be used by this block after
/// cluster_arrive_started (other ranks may write it from then on).
/// Threads: the block's; above kMmaThreads (qmv_mma_cluster_kernel's KSplit) the first
/// kMmaThreads hold the block's partial and push it, and every thread takes part in the barriers
/// and the additions.
template <typename T, int TokenTiles, int Threads = kMmaThreads>
__device__ __forceinline__ void cluster_sum_pushed(const float (&acc)[2][TokenTiles][4], const MmaParams& p,
                                                   const ClusterPlace& place, unsigned char* shared) {
  constexpr int kChunks = pushed_chunks<TokenTiles>();
  const int ranks = static_cast<int>(place.ranks);
  const int rank = static_cast<int>(place.rank);
  auto* s_received = reinterpret_cast<float4*>(shared);
  asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory");  // every rank runs (cluster_arrive_started)
  // Chunk q of this rank goes to rank q % ranks, into slot rank * per_rank + q / ranks there.
  const int per_rank = (kChunks + ranks - 1) / ranks;
  const int lane = static_cast<int>(threadIdx.x) % kPushedChunk;
  const std::uint32_t base = qmm::cuda::shared_address(s_received);
  if (Threads == kMmaThreads || threadIdx.x < kMmaThreads) {  // the threads holding the partial (warp-uniform)
#pragma unroll
    for (int tile = 0; tile < 2; ++tile)
#pragma unroll
      for (int t = 0; t < TokenTiles; ++t) {
        const int q = ((tile * TokenTiles + t) * kMmaThreads + static_cast<int>(threadIdx.x)) / kPushedChunk;
        const int slot = rank * per_rank + q / ranks;
        const std::uint32_t local = base + static_cast<std::uint32_t>((slot * kPushedChunk + lane) * sizeof(float4));
        std::uint32_t remote;
        asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(local), "r"(q % ranks));
        const float4 v = qmm::cuda::stream_k::fragment_entry(acc, tile, t);
        asm volatile("st.shared::cluster.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"r"(remote), "f"(v.x), "f"(v.y), "f"(v.z),
                     "f"(v.w)
                     : "memory");
      }
  }
  // Every push is visible to its receiver.
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
  // Slot i (< per_rank chunks) of sender 0 is chunk (i / 32) * ranks + rank; sender r's copy is
  // r * per_rank chunks further.
  for (int i = static_cast<int>(threadIdx.x); i < per_rank * kPushedChunk; i += Threads) {
    const int q = (i / kPushedChunk) * ranks + rank;
    if (q >= kChunks) break;  // q grows with i
    float4 sum = s_received[i];
    for (int r = 1; r < ranks; ++r) qmm::cuda::stream_k::add_to(sum, s_received[r * per_rank * kPushedChunk + i]);
    const int w = q * kPushedChunk + i % kPushedChunk;
    const int entry = w / kMmaThreads;
    qmm::cuda::stream_k::store_entry<T>(sum, p, static_cast<int>(place.id), w % kMmaThreads, entry / TokenTiles,
                                        entry % TokenTiles);
  }
}
#endif

/// Split-K across a thread-block cluster (sm_90): cluster k takes row block k, and its rank r
/// the segments [r * S / C, (r + 1) * S / C) (possibly none when S < C). The partials are added in
/// rank order through distributed shared memory (cluster_sum_pushed, or cluster_sum_pulled for
/// 64-token passes): a fixed order (batch invariance), with no global memory, counter or fence. Where
/// dispatch takes it, it removes the stream-K fixup (3-4.5 us a call): 5120 -> 5120 at M=1 went
/// from 14.5 to 12.2 us on the H100 (bench/NOTES.md v10).
template <typename T, int Bits, int TokenTiles, bool Wgmma, int KSplit>
__global__ void __launch_bounds__(kMmaThreads * KSplit,
                                  KSplit == 1 ? cuda_dispatch::mma_min_blocks_per_sm(TokenTiles) : 1)
    qmv_mma_cluster_kernel(const MmaParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  static_assert(KSplit == 1 || (KSplit == 2 && !Wgmma), "the in-block K split is for mma.sync passes");
  // Pushed partials need a buffer of their own (other ranks write it while this one still runs);
  // with 64 tokens the wgmma x stages and that buffer would not fit in 48 KB of static shared
  // memory, so the 64-token kernel pulls, its partials over the stages it is done with.
  constexpr bool kPushed = !Wgmma || TokenTiles <= 4;
  constexpr int kStageBytes = Wgmma ? wgmma_stage_bytes<TokenTiles>() : 0;
  constexpr int kPartialBytes = kPushed ? pushed_partial_bytes<TokenTiles>() : pulled_partial_bytes<TokenTiles>();
  constexpr int kSharedBytes =
      kPushed ? kStageBytes + kPartialBytes : (kStageBytes > kPartialBytes ? kStageBytes : kPartialBytes);
  __shared__ alignas(128) unsigned char s_shared[kSharedBytes];
  unsigned char* const partials = kPushed ? s_shared + kStageBytes : s_shared;
  const ClusterPlace place = cluster_place();
  if constexpr (kPushed) cluster_arrive_started();
  const int s0 = static_cast<int>(static_cast<std::int64_t>(p.segments) * place.rank / place.ranks);
  const int s1 = static_cast<int>(static_cast<std::int64_t>(p.segments) * (place.rank + 1) / place.ranks);
  float acc[2][TokenTiles][4];
  qmm::cuda::stream_k::zero(acc);
  if constexpr (KSplit == 1) {
    if (s0 < s1) run_segments<T, Bits, TokenTiles, Wgmma, true>(acc, p, static_cast<int>(place.id), s0, s1, s_shared);
  } else {
    // The rank's run split in two: the second 128 threads take its last (s1 - s0) / 2 segments and
    // hand their partial to the first 128 through shared memory, which add it to theirs (a fixed
    // order: the same bits for every M of a token tile count).
    __shared__ qmm::cuda::stream_k::SharedFragments<TokenTiles> s_handoff;
    const int half = static_cast<int>(threadIdx.x) / kMmaThreads;  // warp-uniform
    const int mid = s1 - (s1 - s0) / 2;
    const int h0 = half == 0 ? s0 : mid;
    const int h1 = half == 0 ? mid : s1;
    if (h0 < h1) run_segments<T, Bits, TokenTiles, false, true, 2>(acc, p, static_cast<int>(place.id), h0, h1, nullptr);
    const int thread = static_cast<int>(threadIdx.x) % kMmaThreads;
    if (half == 1) qmm::cuda::stream_k::store_fragment(acc, s_handoff, thread);
    __syncthreads();
    if (half == 0) qmm::cuda::stream_k::add_fragment(acc, s_handoff, thread);
  }
  if constexpr (kPushed) {
    cluster_sum_pushed<T, TokenTiles, kMmaThreads * KSplit>(acc, p, place, partials);
  } else {
    cluster_sum_pulled<T, TokenTiles>(acc, p, place, partials);
  }
#else
  // Dispatch and forced() send only sm_90 devices here (cuda_dispatch::cluster_size).
  __trap();
#endif
}

template <typename T, int Bits, int TokenTiles, bool Wgmma>
__global__ void __launch_bounds__(kMmaThreads, cuda_dispatch::mma_min_blocks_per_sm(TokenTiles))
    qmv_mma_kernel(const MmaParams p) {
  __shared__ int s_is_last;
  __shared__ alignas(128) unsigned char s_stages[Wgmma ? wgmma_stage_bytes<TokenTiles>() : 16];
  const std::int64_t items = static_cast<std::int64_t>(p.row_blocks) * p.segments;
  const std::int64_t start = item_start(items, p.blocks, blockIdx.x);
  const std::int64_t end = item_start(items, p.blocks, blockIdx.x + 1);

  for (std::int64_t cur = start; cur < end;) {
    const int rb = static_cast<int>(cur / p.segments);
    const int s0 = static_cast<int>(cur % p.segments);
    const int s1 = static_cast<int>(std::min<std::int64_t>(p.segments, s0 + (end - cur)));

    float acc[2][TokenTiles][4];
    qmm::cuda::stream_k::zero(acc);
    run_segments<T, Bits, TokenTiles, Wgmma, false>(acc, p, rb, s0, s1, s_stages);

    qmm::cuda::stream_k::finish_row_block<T, TokenTiles>(acc, p, rb, cur, cur + (s1 - s0) - 1, start, &s_is_last);
    cur += s1 - s0;
  }
}

using KernelFn = void (*)(MmaParams);

/// The instantiation for this problem's activation dtype and bits and the configuration's token
/// tiles, split and MMA instruction (launch and occupancy query share it).
KernelFn kernel_for(const MatmulProblem& p, const cuda_dispatch::KernelConfig& config) {
  return qmm::cuda::with_16bit_dtype(p.x_dtype, [&](auto dtype) {
    using T = typename decltype(dtype)::type;
    return qmm::cuda::with_token_tiles<1, 2, 4, 8>(config.token_tiles, [&](auto tiles) {
      return qmm::cuda::with_bits(p.w.bits, [&](auto bits) -> KernelFn {
        constexpr int B = decltype(bits)::value;
        constexpr int Tiles = decltype(tiles)::value;
        if (config.cluster > 0) {
          if (config.wgmma) return &qmv_mma_cluster_kernel<T, B, Tiles, true, 1>;
          if constexpr (Tiles <= cuda_dispatch::kMmaMaxBlockKSplitTiles) {
            if (config.block_k_split == 2) return &qmv_mma_cluster_kernel<T, B, Tiles, false, 2>;
          }
          return &qmv_mma_cluster_kernel<T, B, Tiles, false, 1>;
        }
        return config.wgmma ? &qmv_mma_kernel<T, B, Tiles, true> : &qmv_mma_kernel<T, B, Tiles, false>;
      });
    });
  });
}

}  // namespace

int qmv_mma_blocks_per_sm(const MatmulProblem& p, const cuda_dispatch::KernelConfig& config) {
  int blocks = 0;
  QMM_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &blocks, reinterpret_cast<const void*>(kernel_for(p, config)), cuda_dispatch::mma_block_threads(config), 0));
  return blocks;
}

void launch_qmv_mma(const MatmulProblem& p, const cuda_dispatch::KernelConfig& config, cudaStream_t stream) {
  const KernelFn kernel = kernel_for(p, config);
  MmaParams q = qmm::cuda::stream_k::make_params(p, config.blocks);
  if (config.cluster > 0) {
    if (config.cluster > cuda_dispatch::kMmaMaxPortableCluster) {
      QMM_CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                          cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
    }
    qmm::cuda::stream_k::for_each_pass(q, p, 8 * config.token_tiles, [&](const MmaParams& pass) {
      cudaLaunchConfig_t launch{};
      launch.gridDim = dim3(static_cast<unsigned>(config.blocks));  // row blocks x cluster
      launch.blockDim = dim3(static_cast<unsigned>(cuda_dispatch::mma_block_threads(config)));
      launch.stream = stream;
      cudaLaunchAttribute attribute{};
      attribute.id = cudaLaunchAttributeClusterDimension;
      attribute.val.clusterDim.x = static_cast<unsigned>(config.cluster);
      attribute.val.clusterDim.y = 1;
      attribute.val.clusterDim.z = 1;
      launch.attrs = &attribute;
      launch.numAttrs = 1;
      QMM_CUDA_CHECK(cudaLaunchKernelEx(&launch, kernel, pass));
    });
    return;
  }
  qmm::cuda::stream_k::bind_workspace(q, stream, p, config);
  qmm::cuda::stream_k::for_each_pass(q, p, 8 * config.token_tiles, [&](const MmaParams& pass) {
    kernel<<<config.blocks, kMmaThreads, 0, stream>>>(pass);
    QMM_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace qmm::detail
