// Kernel selection for CUDA quantized_matmul as a pure function of the problem and the device,
// so tests and `qmm bench` can see (and force) every configuration.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "qmm/dtype.h"

namespace qmm::detail::cuda_dispatch {

/// What dispatch needs to know about a problem (after batch flattening).
struct ProblemShape {
  std::int64_t M = 1, N = 0, K = 0;
  int bits = 4;
  int group_size = 64;
  bool transpose = true;
  Dtype x_dtype = Dtype::float16;
  Dtype w_dtype = Dtype::float16;  // scales/biases
};

struct DeviceShape {
  int multiprocessors = 132;
  int compute_capability = 90;
  /// Whether this build has sm_90a code (the wgmma instructions) for a compute capability 9.0
  /// device: QMM_CUDA_SM90A, set by CMake when CMAKE_CUDA_ARCHITECTURES holds 90a.
  bool sm90a_code = true;
};

enum class Family {
  qmv_tma,        // tensor cores, TMA + producer warp feeding shared-memory stages (sm_90, K % 256 == 0, M <= 16 per pass)
  qmv_staged,     // tensor cores, cp.async stages, scale after the MMA (4/8-bit; forced only, see choose())
  qmv_mma,        // tensor cores, weight-stationary, stream-K split (transpose=true, fp16/bf16)
  qmv_warp_rows,  // CUDA cores, one warp per weight row (transpose=true, any dtype mix)
  qvm_columns,    // CUDA cores, threads along N (transpose=false)
};

struct KernelConfig {
  Family family = Family::qmv_mma;
  /// qmv_tma / qmv_staged / qmv_mma: 8-token tiles per pass (1, 2, 4 or 8): up to 8*token_tiles rows of x per pass.
  int token_tiles = 1;
  /// qmv_tma / qmv_staged / qmv_mma: persistent blocks sharing the (row block, K segment) work evenly (stream-K).
  int blocks = 0;
  /// qmv_mma on sm_90: blocks per thread-block cluster splitting each row block's K, reduced
  /// through distributed shared memory (blocks = row blocks x cluster); 0: stream-K.
  int cluster = 0;
  /// qmv_mma on compute capability 9.0: the MMAs on warpgroup wgmma, x staged in shared memory
  /// (name suffix "_wg"), instead of mma.sync with x loaded from global memory by every warp.
  bool wgmma = false;
  /// qmv_mma's cluster split with mma.sync, 8 or 16 tokens: 128-thread groups per block, each
  /// taking an equal part of the block's K run (name suffix "_k2" for 2); see block_k_split.
  int block_k_split = 1;
  std::string name() const;
};

/// Rows of W per qmv_mma block (4 warps x 32 rows) and values of K per segment.
constexpr int kMmaRowsPerBlock = 128;
constexpr int kMmaSegment = 128;
constexpr int kMmaThreads = 128;

/// Stream-K: fewest items per block (see stream_k_blocks). Measured on H100 for 5120 -> 1024
/// (qmv_mma, M=1): 320 blocks of 1 item 13.7 us, 160 of 2 10.1 us, 80 of 4 9.7 us, 40 of 8 13.0 us.
constexpr int kMinItemsPerBlock = 4;

/// Minimum resident qmv_mma blocks per SM each kernel is compiled for (__launch_bounds__): three
/// 128-thread blocks (168 registers) for up to 16 tokens, as many as mma_blocks_per_sm launches
/// (a tighter cap would only spill), two for 32 and 64 tokens so their accumulators fit.
constexpr int mma_min_blocks_per_sm(int token_tiles) { return token_tiles <= 2 ? 3 : 2; }

/// Stream-K blocks per SM (the grid is this times the SM count, at most one block per item).
/// One and two token tiles share it, so the split, and with it every output bit, is the same
/// for M = 1..16; it never exceeds what both can keep resident.
constexpr int mma_blocks_per_sm(int token_tiles) { return token_tiles <= 2 ? 3 : 2; }

/// qmv_mma's cluster split (sm_90): the cluster sizes dispatch considers, largest first. 8 is the
/// portable maximum; larger, non-portable sizes (9, 12, 13, 16) measured slower on the H100
/// (bench/NOTES.md v10): they do not pack into GPCs. 5 is for wgmma passes only (cluster_size).
constexpr int kMmaClusterSizes[] = {8, 6, 5, 4};
/// The largest portable cluster, and the largest one sm_90 allows at all (non-portable sizes need
/// cudaFuncAttributeNonPortableClusterSizeAllowed); forced names take 1..kMmaMaxCluster.
constexpr int kMmaMaxPortableCluster = 8;
constexpr int kMmaMaxCluster = 16;

/// The cluster size dispatch splits each row block's K over instead of stream-K, or 0 for
/// stream-K; the same answer for every M in 1..16 (batch invariance). The largest size that
/// - fits in one wave: at most 85 % of the resident slots, since a cluster's blocks must share a
///   GPC (240 blocks in clusters of 6 on 264 slots ran as two waves on the H100, 336 on 396 ran
///   as one), and
/// - streams at most one segment more per block than stream-K would, so the stream-K fixup
///   (3-4.5 us a call) costs more than the longer runs.
/// Clusters of 5 only where the MMAs are wgmma (wgmma_pays): with mma.sync they were 5.5 % slower
/// than stream-K at M = 17 on 5120 -> 5120; with wgmma 2-5 % faster at M = 33..64 and 9-10 %
/// faster at M = 17..32 (bench/NOTES.md v11, v12).
/// On the H100: 5120 -> 5120 takes 8 up to M = 16 (14.5 -> 12.2 us at M = 1) and 5 at
/// M = 17..64; 5120 -> 1024 8 at every M (-10..-18 %); the fused q|k|v 5120 -> 7168 6 up to
/// M = 16 (15.9 -> 14.5 us), then 4; 5120 -> 13824 and 13824 -> 5120 keep stream-K (clusters were
/// 2-28 % slower).
int cluster_size(const ProblemShape& p, const DeviceShape& d);

/// The most token tiles a block whose K run is split in two takes (KernelConfig::block_k_split;
/// the 32- and 64-token passes are wgmma, whose x staging is the whole block's).
constexpr int kMmaMaxBlockKSplitTiles = 2;

/// Threads of a qmv_mma (or qmv_staged, always one part) block: 128 rows' worth (4 warps) per K part.
inline int mma_block_threads(const KernelConfig& c) { return kMmaThreads * c.block_k_split; }

/// KernelConfig::block_k_split for dispatch's cluster split (`cluster` ranks, from cluster_size):
/// 2 where one 256-thread block per SM still holds every block in one wave (row blocks x
/// cluster <= 85 % of the SMs; at 150-200 registers a thread such a block is alone on its SM) and
/// each half gets a segment, for 8 and 16 tokens; 1 otherwise. The same answer for every M in
/// 1..16 (batch invariance). On the H100 only 5120 -> 1024 qualifies (8 row blocks x 8 ranks):
/// 6-8 % faster at M = 1..8 and 4-6 % at M = 9..16 than one part (bench/NOTES.md v19). Fewer,
/// longer clusters to make it fit did not pay: 5120 -> 5120 in clusters of 2 or 3 (80 or 120
/// blocks, 20 or 13-14 segments a block) took 11.1 and 15.8 us at M=1 against 9.9 for dispatch's
/// 320 one-part blocks in clusters of 8.
int block_k_split(const ProblemShape& p, const DeviceShape& d, int cluster);

/// Whether qmv_mma takes its wgmma MMAs (KernelConfig::wgmma): on compute capability 9.0 with
/// sm_90a code in the build only (later cards run the compute_90 PTX, which has the mma.sync
/// path only), for 32- and 64-token passes (M = 17..64, and the 64-row passes of larger M).
/// Measured on the H100 against mma.sync in the same configuration (bench/NOTES.md v11, v12),
/// with x for the next segment loaded while the current one computes: -8..-20 % at M = 17..32
/// (same call) and -20..-26 % at M = 33..64 (against the sixth session's table) on the four
/// Qwen2.5-14B shapes; at 8 and 16 tokens slower (its one-buffer loop with x staging spills at
/// 168 registers).
bool wgmma_pays(int token_tiles, const DeviceShape& d);

/// qmv_staged: resident blocks per SM its kernels are compiled for and launched with (shared
/// memory decides: 4 pipeline stages of 14-24 KB for 4-bit, 22-26 KB for 8-bit; fewer, larger
/// stages for 32 and 64 tokens). 1 and 2 token tiles share the count (batch invariance).
constexpr int staged_blocks_per_sm(int bits, int token_tiles) { return bits == 4 && token_tiles <= 2 ? 3 : 2; }
/// qmv_staged: pipeline stages (items in shared memory at once).
constexpr int staged_pipeline_stages(int token_tiles) { return token_tiles <= 2 ? 4 : 3; }

/// qmv_tma: values of K per item (one pipeline stage: two 128-value segments), consumer threads
/// (4 warps of 32 rows, as qmv_mma) plus one producer warp, and the most stages in the ring.
constexpr int kTmaItemValues = 256;
constexpr int kTmaThreads = kMmaThreads + 32;
constexpr int kTmaMaxStages = 4;
/// qmv_tma: resident blocks per SM (compiled for and launched with; shared memory is split
/// evenly between them). One value for both token tiles, so M = 1..16 split K identically.
constexpr int kTmaBlocksPerSm = 3;
/// Shared memory one qmv_tma block may use for its stages (the SM's 227 KB over kTmaBlocksPerSm).
constexpr int kTmaStageBudgetBytes = 227 * 1024 / kTmaBlocksPerSm - 1024;
/// Bytes of one qmv_tma stage: 128 rows x 256 values of weights, and the rows' scales and biases
/// for the stage's 256 / group_size groups.
constexpr int tma_stage_bytes(int bits, int group_size) {
  return kMmaRowsPerBlock * kTmaItemValues * bits / 8 + 2 * kMmaRowsPerBlock * (kTmaItemValues / group_size) * 2;
}
/// qmv_tma: stages in the ring (as many as the budget holds, 2 to kTmaMaxStages).
constexpr int tma_pipeline_stages(int bits, int group_size) {
  const int fit = kTmaStageBudgetBytes / tma_stage_bytes(bits, group_size);
  return fit < 2 ? 2 : fit > kTmaMaxStages ? kTmaMaxStages : fit;
}

/// Names of every configuration `CallOptions::kernel` accepts on CUDA; the wgmma ones ("_wg")
/// only for a build with sm_90a code.
std::vector<std::string> kernel_names(bool sm90a_code = true);

/// Whether qmv_mma can run this problem (transpose, 16-bit activations matching the scales).
bool mma_supported(const ProblemShape& p);
/// Whether qmv_tma can: qmv_mma's conditions, an sm_90 device (TMA, mbarrier transactions) and
/// K a multiple of kTmaItemValues (no K tail inside a stage; row strides the TMA can step).
bool tma_supported(const ProblemShape& p, const DeviceShape& d);
/// Whether qmv_staged can: qmv_mma's conditions and 4- or 8-bit weights.
bool staged_supported(const ProblemShape& p);

/// The configuration dispatch chooses. Pure: same inputs, same answer. Tensor-core problems take
/// qmv_mma: qmv_staged measured slower on H100 at every M (bench/NOTES.md, v6) and is reached
/// only by name. The stream-K block count
/// depends on N, K and the device only, never on M, so every M in 1..64 reduces in the same
/// order (batch invariance).
KernelConfig choose(const ProblemShape& p, const DeviceShape& d);

/// The configuration named `name` for this problem; throws qmm::Error if it cannot run it.
KernelConfig forced(const std::string& name, const ProblemShape& p, const DeviceShape& d);

/// Stream-K block count (see choose()): one per resident slot, at most one per item.
/// item_values: K values per item (kMmaSegment for qmv_mma/qmv_staged, kTmaItemValues for qmv_tma).
int stream_k_blocks(const ProblemShape& p, const DeviceShape& d, int blocks_per_sm, int item_values = kMmaSegment);

}  // namespace qmm::detail::cuda_dispatch
