// Stream-K work split shared by the tensor-core kernel families (qmv_mma_kernels.cu,
// qmv_staged_kernels.cu).
//
// The problem is a grid of items (row block of kMmaRowsPerBlock rows, K segment of kMmaSegment
// values). `blocks` persistent blocks take equal contiguous runs of items in row-block-major
// order, so every block streams the same number of bytes whatever N and K are. A row block
// covered by several blocks is finished by the last of them to arrive, which adds the fp32
// partials in block order: a fixed order, independent of M and of timing, so every output row
// is bit-identical whether it ran alone or with up to 15 others.
//
// Accumulator fragments are float acc[2][TokenTiles][4]: a block has 4 warps of 32 rows, each
// warp two m16 tiles (index 0..1) of mma.m16n8k16 times TokenTiles 8-token tiles.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "src/core/problem.h"
#include "src/cuda/dispatch.h"
#include "src/cuda/workspace.h"
#include "src/format/affine.h"

namespace qmm::cuda::stream_k {

using detail::cuda_dispatch::kMmaRowsPerBlock;
using detail::cuda_dispatch::kMmaSegment;
using detail::cuda_dispatch::kMmaThreads;

struct Params {
  const void* x;
  void* out;
  const std::uint32_t* w_q;
  const void* scales;
  const void* biases;
  int M;  // rows of x in this pass (<= 8 * TokenTiles)
  int N;
  int K;
  int group_shift;  // log2(group_size)
  std::int64_t words_per_row;
  int groups_per_row;
  int row_blocks;
  int segments;
  int blocks;
  int* counters;    // one per row block, zero between calls
  float* partials;  // [blocks][2][fragment]: per (tile, t) one float4 acc[tile][t][0..3] per thread
  /// Always 0, but unknown to the compiler: qmv_mma's 8- and 16-token loop (run_pairs_x_ahead)
  /// adds (data & zero) to one buffer's load addresses so those loads issue only after the other
  /// buffer's data has arrived.
  int zero;
};

/// Sets an accumulator fragment (or any small fixed-size float array) to zero.
template <int A, int B, int C>
__device__ __forceinline__ void zero(float (&f)[A][B][C]) {
#pragma unroll
  for (int i = 0; i < A; ++i)
#pragma unroll
    for (int j = 0; j < B; ++j)
#pragma unroll
      for (int k = 0; k < C; ++k) f[i][j][k] = 0.0f;
}
template <int A, int B>
__device__ __forceinline__ void zero(float (&f)[A][B]) {
#pragma unroll
  for (int i = 0; i < A; ++i)
#pragma unroll
    for (int j = 0; j < B; ++j) f[i][j] = 0.0f;
}

/// Adds one to a row block's arrival counter with release and acquire semantics at GPU scope and
/// returns the previous count.
__device__ __forceinline__ int arrive_acq_rel(int* counter) {
  int previous;
  asm volatile("atom.acq_rel.gpu.global.add.s32 %0, [%1], 1;\n" : "=r"(previous) : "l"(counter) : "memory");
  return previous;
}

/// An L2 policy that keeps what it is attached to (evict_last) while the weights stream past.
__device__ __forceinline__ std::uint64_t evict_last_policy() {
  std::uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}

/// Stores a partial under `policy`. Partials published early in the kernel were being pushed out
/// to DRAM by the 20-40 MB of weights streaming through L2 before the last contributor read
/// them: evict_last took 0.4-0.9 us off 5120 -> 13824 and 13824 -> 5120 at M <= 16 on the H100
/// (bench/NOTES.md v10).
__device__ __forceinline__ void store_evict_last(float4* at, float4 v, std::uint64_t policy) {
  asm volatile("st.global.L2::cache_hint.v4.f32 [%0], {%1, %2, %3, %4}, %5;\n" ::"l"(at), "f"(v.x), "f"(v.y), "f"(v.z),
               "f"(v.w), "l"(policy)
               : "memory");
}

/// Item range [start, end) of block b.
__device__ __forceinline__ std::int64_t item_start(std::int64_t items, int blocks, int b) {
  return items * b / blocks;
}
/// The block whose range holds item t.
__device__ __forceinline__ int block_of_item(std::int64_t items, int blocks, std::int64_t t) {
  return static_cast<int>(((t + 1) * blocks + items - 1) / items - 1);
}

/// sum += v, lane by lane (partials are added a float4 at a time, in a fixed order); sum is a
/// float4 or one accumulator entry acc[tile][t].
__device__ __forceinline__ void add_to(float4& sum, const float4& v) {
  sum.x += v.x;
  sum.y += v.y;
  sum.z += v.z;
  sum.w += v.w;
}
__device__ __forceinline__ void add_to(float (&sum)[4], const float4& v) {
  sum[0] += v.x;
  sum[1] += v.y;
  sum[2] += v.z;
  sum[3] += v.w;
}

/// acc[tile][t][0..3] as one float4 (the unit partials are stored, loaded and written out in).
template <int TokenTiles>
__device__ __forceinline__ float4 fragment_entry(const float (&acc)[2][TokenTiles][4], int tile, int t) {
  return make_float4(acc[tile][t][0], acc[tile][t][1], acc[tile][t][2], acc[tile][t][3]);
}

/// A block's accumulator fragments in shared memory, entry-major: entry (tile, t) of thread i at
/// [tile * TokenTiles + t][i] (the cluster kernel's pulled sum and its in-block K split use it).
template <int TokenTiles>
using SharedFragments = float4[2 * TokenTiles][kMmaThreads];

/// Stores this thread's fragment (as thread `thread`) into `to`.
template <int TokenTiles>
__device__ __forceinline__ void store_fragment(const float (&acc)[2][TokenTiles][4], SharedFragments<TokenTiles>& to,
                                               int thread) {
#pragma unroll
  for (int tile = 0; tile < 2; ++tile)
#pragma unroll
    for (int t = 0; t < TokenTiles; ++t) to[tile * TokenTiles + t][thread] = fragment_entry(acc, tile, t);
}

/// acc += thread `thread`'s fragment in `from`, entry by entry.
template <int TokenTiles>
__device__ __forceinline__ void add_fragment(float (&acc)[2][TokenTiles][4], const SharedFragments<TokenTiles>& from,
                                             int thread) {
#pragma unroll
  for (int tile = 0; tile < 2; ++tile)
#pragma unroll
    for (int t = 0; t < TokenTiles; ++t) add_to(acc[tile][t], from[tile * TokenTiles + t][thread]);
}

/// Writes one float4 of an accumulator fragment, acc[tile][t][0..3] of thread `thread`, to out
/// (rows of W are columns of out).
template <typename T>
__device__ __forceinline__ void store_entry(const float4& v, const Params& p, int rb, int thread, int tile, int t) {
  T* out = static_cast<T*>(p.out);
  const int warp = thread >> 5;
  const int lane = thread & 31;
  const float e4[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const int n = rb * kMmaRowsPerBlock + warp * 32 + tile * 16 + (lane >> 2) + (e >= 2 ? 8 : 0);
    const int m = t * 8 + 2 * (lane & 3) + (e & 1);
    if (n < p.N && m < p.M) out[static_cast<std::int64_t>(m) * p.N + n] = T(e4[e]);
  }
}

/// Writes this thread's accumulator fragment to out.
template <typename T, int TokenTiles>
__device__ __forceinline__ void store_output(const float (&acc)[2][TokenTiles][4], const Params& p, int rb) {
#pragma unroll
  for (int tile = 0; tile < 2; ++tile)
#pragma unroll
    for (int t = 0; t < TokenTiles; ++t)
      store_entry<T>(fragment_entry(acc, tile, t), p, rb, static_cast<int>(threadIdx.x), tile, t);
}

/// Barrier over the threads that hold accumulators. Kernels whose every thread computes use the
/// whole block; qmv_tma's producer warp never reaches finish_row_block, so its 128 consumer
/// threads use named barrier 1 instead.
struct SyncBlock {
  __device__ __forceinline__ void operator()() const { __syncthreads(); }
};
struct SyncConsumers {
  __device__ __forceinline__ void operator()() const {
    asm volatile("bar.sync 1, %0;\n" ::"n"(kMmaThreads) : "memory");
  }
};

/// Called by every (consumer) thread of the block when its run of items [first, last] of row block rb
/// ends (first/last are absolute item indices; start is the block's first item). A whole row
/// block is stored; a partial one is published, and the last contributor reduces in block order
/// and stores. `s_is_last` is a shared-memory flag. acc is clobbered.
template <typename T, int TokenTiles, typename Sync = SyncBlock>
__device__ __forceinline__ void finish_row_block(float (&acc)[2][TokenTiles][4], const Params& p, int rb,
                                                 std::int64_t first, std::int64_t last, std::int64_t start,
                                                 int* s_is_last) {
  constexpr int kFragmentFloats = kMmaThreads * 2 * TokenTiles * 4;
  const std::int64_t items = static_cast<std::int64_t>(p.row_blocks) * p.segments;
  const std::int64_t rb_first_item = static_cast<std::int64_t>(rb) * p.segments;
  if (first == rb_first_item && last == rb_first_item + p.segments - 1) {
    store_output<T, TokenTiles>(acc, p, rb);
    return;
  }
  // Partial row block: publish, and let the last contributor reduce in block order. A block's
  // run can start inside one row block (slot 0) and end inside another (slot 1).
  const int slot = first == start ? 0 : 1;
  float4* mine =
      reinterpret_cast<float4*>(p.partials + (static_cast<std::int64_t>(blockIdx.x) * 2 + slot) * kFragmentFloats);
  const std::uint64_t policy = evict_last_policy();
#pragma unroll
  for (int tile = 0; tile < 2; ++tile)
#pragma unroll
    for (int t = 0; t < TokenTiles; ++t)
      store_evict_last(mine + (tile * TokenTiles + t) * kMmaThreads + threadIdx.x, fragment_entry(acc, tile, t),
                       policy);
  // Every thread's stores happen before thread 0's arrival (the barrier), and the arrival is a
  // release at GPU scope, so they are visible to whichever block sees the count complete. Its
  // acquire side orders this block's reads of the others' partials after their arrivals. No
  // __threadfence(): that is a sequentially consistent fence (fence.sc.gpu); dropping the two it
  // took saved 0.4-0.5 us per call on the H100 (bench/NOTES.md v9).
  Sync{}();
  const int first_block = block_of_item(items, p.blocks, rb_first_item);
  const int last_block = block_of_item(items, p.blocks, rb_first_item + p.segments - 1);
  if (threadIdx.x == 0) {
    const int arrived = arrive_acq_rel(&p.counters[rb]);
    *s_is_last = arrived == last_block - first_block;
  }
  Sync{}();
  if (*s_is_last) {
    zero(acc);
    // Loads of kBatch partials are issued together (one L2 round trip per batch); the sum
    // still runs in block order, so the result does not depend on the batching.
    constexpr int kBatch = TokenTiles <= 1 ? 4 : 4 / TokenTiles > 0 ? 4 / TokenTiles : 1;
    for (int b0 = first_block; b0 <= last_block; b0 += kBatch) {
      float4 v[kBatch][2][TokenTiles];
#pragma unroll
      for (int j = 0; j < kBatch; ++j) {
        const int b = b0 + j;
        if (b > last_block) break;
        const int b_slot = item_start(items, p.blocks, b) >= rb_first_item ? 0 : 1;
        const float4* theirs =
            reinterpret_cast<const float4*>(p.partials + (static_cast<std::int64_t>(b) * 2 + b_slot) * kFragmentFloats);
#pragma unroll
        for (int tile = 0; tile < 2; ++tile)
#pragma unroll
          for (int t = 0; t < TokenTiles; ++t)
            v[j][tile][t] = __ldcg(theirs + (tile * TokenTiles + t) * kMmaThreads + threadIdx.x);
      }
#pragma unroll
      for (int j = 0; j < kBatch; ++j) {
        if (b0 + j > last_block) break;
#pragma unroll
        for (int tile = 0; tile < 2; ++tile)
#pragma unroll
          for (int t = 0; t < TokenTiles; ++t) add_to(acc[tile][t], v[j][tile][t]);
      }
    }
    store_output<T, TokenTiles>(acc, p, rb);
    if (threadIdx.x == 0) p.counters[rb] = 0;  // ready for the next call on this stream
  }
  Sync{}();  // s_is_last is reused by the next row block
}

// ---- host side -------------------------------------------------------------------------------

inline std::size_t counters_bytes(int row_blocks) {
  return (static_cast<std::size_t>(row_blocks) * sizeof(int) + 255) & ~static_cast<std::size_t>(255);
}

/// Everything but the pass (x, out, M) and the workspace pointers.
inline Params make_params(const detail::MatmulProblem& p, int blocks) {
  Params q{};
  q.w_q = p.w.w_q;
  q.scales = p.w.scales;
  q.biases = p.w.biases;
  q.N = static_cast<int>(p.N);
  q.K = static_cast<int>(p.K);
  q.group_shift = p.w.group_size == 32 ? 5 : p.w.group_size == 64 ? 6 : 7;
  q.words_per_row = format::packed_words(p.K, p.w.bits);
  q.groups_per_row = static_cast<int>(p.K / p.w.group_size);
  q.row_blocks = static_cast<int>((p.N + kMmaRowsPerBlock - 1) / kMmaRowsPerBlock);
  q.segments = static_cast<int>((p.K + kMmaSegment - 1) / kMmaSegment);
  q.blocks = blocks;
  return q;
}

/// Counters (one per row block) then two partial fragments per block.
inline std::size_t workspace_bytes(const detail::MatmulProblem& p, const detail::cuda_dispatch::KernelConfig& config) {
  const Params q = make_params(p, config.blocks);
  const std::size_t fragment_bytes = static_cast<std::size_t>(kMmaThreads) * 2 * config.token_tiles * 4 * sizeof(float);
  return counters_bytes(q.row_blocks) + static_cast<std::size_t>(config.blocks) * 2 * fragment_bytes;
}

/// Calls launch(q) once per pass of up to rows_per_pass rows of x, with q.M, q.x and q.out set
/// for the pass (x and out share the activation dtype in the tensor-core families).
template <typename Launch>
void for_each_pass(Params& q, const detail::MatmulProblem& p, int rows_per_pass, Launch&& launch) {
  const auto item = static_cast<std::int64_t>(itemsize(p.x_dtype));
  for (std::int64_t m0 = 0; m0 < p.M; m0 += rows_per_pass) {
    q.M = static_cast<int>(p.M - m0 < rows_per_pass ? p.M - m0 : rows_per_pass);
    q.x = static_cast<const char*>(p.x) + m0 * p.K * item;
    q.out = static_cast<char*>(p.out) + m0 * p.N * item;
    launch(q);
  }
}

/// Points q at this stream's workspace (allocated once per stream, reused by every call).
inline void bind_workspace(Params& q, cudaStream_t stream, const detail::MatmulProblem& p,
                           const detail::cuda_dispatch::KernelConfig& config) {
  char* ws = static_cast<char*>(
      detail::stream_workspace(stream, detail::WorkspacePurpose::mma_stream_k, workspace_bytes(p, config)));
  q.counters = reinterpret_cast<int*>(ws);
  q.partials = reinterpret_cast<float*>(ws + counters_bytes(q.row_blocks));
}

}  // namespace qmm::cuda::stream_k
