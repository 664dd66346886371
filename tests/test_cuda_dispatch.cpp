// CUDA kernel selection (src/cuda/dispatch.cpp) as the pure function it is: problem shape and
// device shape in, configuration out. Runs on the CPU (label cpu) in every CUDA build.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "qmm/qmm.h"
#include "src/cuda/dispatch.h"

namespace qmm::detail::cuda_dispatch {
namespace {

ProblemShape shape(std::int64_t M, std::int64_t N, std::int64_t K, int bits = 4, Dtype dt = Dtype::float16) {
  ProblemShape p;
  p.M = M;
  p.N = N;
  p.K = K;
  p.bits = bits;
  p.group_size = 64;
  p.x_dtype = dt;
  p.w_dtype = dt;
  return p;
}

const DeviceShape kH100{132, 90};

TEST(CudaDispatch, SixteenBitActivationsTakeTheTensorCoreFamily) {
  for (int bits : {2, 3, 4, 5, 6, 8}) {
    for (Dtype dt : {Dtype::float16, Dtype::bfloat16}) {
      for (std::int64_t M = 1; M <= 64; ++M) {
        const KernelConfig c = choose(shape(M, 13824, 5120, bits, dt), kH100);
        EXPECT_EQ(c.family, Family::qmv_mma) << M;
        const int tiles = M <= 8 ? 1 : M <= 16 ? 2 : M <= 32 ? 4 : 8;
        EXPECT_EQ(c.token_tiles, tiles) << M;
        EXPECT_EQ(c.name(), "qmv_mma_m" + std::to_string(8 * tiles) + (tiles >= 4 ? "_wg" : ""));
      }
    }
  }
}

TEST(CudaDispatch, CudaCoreKernelsForWhatTensorCoresCannotTake) {
  ProblemShape fp32 = shape(3, 512, 512, 4, Dtype::float32);
  EXPECT_EQ(choose(fp32, kH100).family, Family::qmv_warp_rows);
  ProblemShape mixed = shape(3, 512, 512);
  mixed.w_dtype = Dtype::bfloat16;
  EXPECT_EQ(choose(mixed, kH100).family, Family::qmv_warp_rows);
  ProblemShape vm = shape(3, 512, 512);
  vm.transpose = false;
  EXPECT_EQ(choose(vm, kH100).family, Family::qvm_columns);
}

/// M = 1..16 share one split (so every output bit is the same, batch invariance); a stream-K
/// grid fills every SM's resident slots and never exceeds the number of items.
TEST(CudaDispatch, BlockCountIndependentOfMUpTo16) {
  const DeviceShape a100{108, 80}, sm80_132{132, 80};
  for (auto [N, K] : {std::pair<std::int64_t, std::int64_t>{13824, 5120}, {1024, 5120}, {300, 4096}, {8, 32}}) {
    for (const DeviceShape& d : {kH100, a100, sm80_132}) {
      const KernelConfig first = choose(shape(1, N, K), d);
      for (std::int64_t M = 2; M <= 16; ++M) {
        const KernelConfig c = choose(shape(M, N, K), d);
        EXPECT_EQ(c.blocks, first.blocks) << M;
        EXPECT_EQ(c.cluster, first.cluster) << M;
        EXPECT_EQ(c.block_k_split, first.block_k_split) << M;
      }
    }
    // Stream-K (no clusters before sm_90).
    const int blocks = choose(shape(1, N, K), sm80_132).blocks;
    const std::int64_t items = ((N + kMmaRowsPerBlock - 1) / kMmaRowsPerBlock) * ((K + kMmaSegment - 1) / kMmaSegment);
    EXPECT_EQ(blocks, std::max<std::int64_t>(1, std::min<std::int64_t>(items / kMinItemsPerBlock,
                                                                        132 * mma_blocks_per_sm(1))))
        << N << "x" << K;
  }
  EXPECT_EQ(choose(shape(1, 8, 32), sm80_132).blocks, 1);
  // Fewer SMs, fewer blocks.
  EXPECT_EQ(choose(shape(1, 13824, 5120), a100).blocks, 108 * mma_blocks_per_sm(1));
}

/// On sm_90 dispatch splits K over clusters where the stream-K fixup costs more than the longer
/// runs (cluster_size), never past one wave of resident blocks, largest size first.
TEST(CudaDispatch, ClusterSplitWhereTheFixupCostsMore) {
  for (std::int64_t M = 1; M <= 16; ++M) {
    const KernelConfig qo = choose(shape(M, 5120, 5120), kH100);
    EXPECT_EQ(qo.cluster, 8) << M;
    EXPECT_EQ(qo.blocks, 40 * 8);
    EXPECT_EQ(qo.name(), std::string(M <= 8 ? "qmv_mma_m8_c8" : "qmv_mma_m16_c8"));
    EXPECT_EQ(choose(shape(M, 1024, 5120), kH100).blocks, 8 * 8);
    // 64 blocks fit one 256-thread block per SM (<= 85 % of 132), 5 segments a rank: each block
    // splits its run in two. q|o's 320 blocks would not fit.
    EXPECT_EQ(choose(shape(M, 1024, 5120), kH100).name(), std::string(M <= 8 ? "qmv_mma_m8_c8_k2" : "qmv_mma_m16_c8_k2"));
    EXPECT_EQ(qo.block_k_split, 1);
    EXPECT_EQ(choose(shape(M, 7168, 5120), kH100).block_k_split, 1);
    // 8 segments over 8 ranks: one a rank, nothing to split.
    EXPECT_EQ(choose(shape(M, 1024, 1024), kH100).block_k_split, 1);
    EXPECT_EQ(choose(shape(M, 1024, 2048), kH100).block_k_split, 2);
    // Fewer SMs: 64 blocks are more than 85 % of 72.
    EXPECT_EQ(choose(shape(M, 1024, 5120), DeviceShape{72, 90}).block_k_split, 1);
    // Fused q|k|v, 56 row blocks: 448 blocks in clusters of 8 exceed 85 % of the 396 slots, 336
    // in clusters of 6 do not.
    EXPECT_EQ(choose(shape(M, 7168, 5120), kH100).cluster, 6) << M;
    // 108 row blocks: even clusters of 4 would need 432 resident blocks.
    EXPECT_EQ(choose(shape(M, 13824, 5120), kH100).cluster, 0);
    // 108 segments: 14 a block in clusters of 8 against 11 under stream-K.
    EXPECT_EQ(choose(shape(M, 5120, 13824), kH100).cluster, 0);
    EXPECT_EQ(choose(shape(M, 5120, 5120), DeviceShape{132, 80}).cluster, 0);
  }
  // 17..64 tokens have fewer resident slots (two blocks per SM): 40 clusters of 8 or 6 no longer
  // fit in one wave and clusters of 4 would stream 10 segments a block against 7; clusters of 5
  // (200 blocks, 8 segments) are taken where the MMAs are wgmma (32 and 64 tokens); 8 clusters of
  // 8 still fit; the fused q|k|v fits clusters of 4 (224 of 264 slots).
  for (std::int64_t M : {17, 32, 33, 64, 100}) {
    EXPECT_EQ(choose(shape(M, 5120, 5120), kH100).cluster, 5) << M;
    EXPECT_EQ(choose(shape(M, 5120, 5120), DeviceShape{132, 100}).cluster, 0) << M;  // no wgmma there
    EXPECT_EQ(choose(shape(M, 5120, 13824), kH100).cluster, 0) << M;
    EXPECT_EQ(choose(shape(M, 1024, 5120), kH100).cluster, 8) << M;
    EXPECT_EQ(choose(shape(M, 1024, 5120), kH100).block_k_split, 1) << M;  // wgmma stages x for the whole block
    EXPECT_EQ(choose(shape(M, 7168, 5120), kH100).cluster, 4) << M;
  }
  EXPECT_EQ(choose(shape(3, 5120, 5120, 4, Dtype::float32), kH100).family, Family::qmv_warp_rows);
}

/// wgmma MMAs for 32- and 64-token passes on compute capability 9.0 only, with either split; never
/// for fewer tokens, never on sm_80 or on later cards (no wgmma there).
TEST(CudaDispatch, WgmmaForThirtyTwoAndSixtyFourTokensOnComputeCapabilityNine) {
  for (auto [N, K] : {std::pair<std::int64_t, std::int64_t>{13824, 5120}, {5120, 5120}, {1024, 5120}, {300, 4096}}) {
    for (std::int64_t M : {1, 8, 9, 16, 17, 32, 33, 64, 65, 200}) {
      EXPECT_EQ(choose(shape(M, N, K), kH100).wgmma, M > 16) << N << " " << M;
      for (const DeviceShape& d : {DeviceShape{108, 80}, DeviceShape{148, 100}, DeviceShape{170, 120}}) {
        EXPECT_FALSE(choose(shape(M, N, K), d).wgmma) << d.compute_capability;
      }
    }
  }
  EXPECT_EQ(choose(shape(64, 1024, 5120), kH100).name(), "qmv_mma_m64_c8_wg");
  EXPECT_EQ(choose(shape(33, 13824, 5120), kH100).name(), "qmv_mma_m64_wg");
  EXPECT_EQ(choose(shape(48, 5120, 5120), kH100).name(), "qmv_mma_m64_c5_wg");
  EXPECT_EQ(choose(shape(17, 5120, 5120), kH100).name(), "qmv_mma_m32_c5_wg");
  EXPECT_EQ(choose(shape(32, 1024, 5120), kH100).name(), "qmv_mma_m32_c8_wg");
  EXPECT_EQ(choose(shape(24, 5120, 13824), kH100).name(), "qmv_mma_m32_wg");
  EXPECT_TRUE(forced("qmv_mma_m8_wg", shape(3, 1024, 5120), kH100).wgmma);
  EXPECT_EQ(forced("qmv_mma_m32_c3_wg", shape(3, 1024, 5120), kH100).name(), "qmv_mma_m32_c3_wg");
  EXPECT_EQ(forced("qmv_mma_m64_b7_wg", shape(3, 1024, 5120), kH100).blocks, 7);
  // "_wg" names are listed only for a build with sm_90a code.
  const auto listed = kernel_names(true), unlisted = kernel_names(false);
  EXPECT_NE(std::find(listed.begin(), listed.end(), "qmv_mma_m64_wg"), listed.end());
  EXPECT_EQ(std::count_if(unlisted.begin(), unlisted.end(),
                          [](const std::string& n) { return n.find("_wg") != std::string::npos; }),
            0);
  EXPECT_EQ(forced("qmv_mma_wg", shape(20, 1024, 5120), kH100).name(), "qmv_mma_m32_wg");
  EXPECT_FALSE(forced("qmv_mma_m64", shape(40, 1024, 5120), kH100).wgmma);
  for (const DeviceShape& d : {DeviceShape{108, 80}, DeviceShape{148, 100}, DeviceShape{132, 90, false}}) {
    EXPECT_THROW(forced("qmv_mma_m64_wg", shape(40, 1024, 5120), d), Error);
  }
  // A build without sm_90a code on an H100: mma.sync, and clusters of 5 are not taken.
  EXPECT_FALSE(choose(shape(64, 13824, 5120), DeviceShape{132, 90, false}).wgmma);
  EXPECT_EQ(choose(shape(48, 5120, 5120), DeviceShape{132, 90, false}).name(), "qmv_mma_m64");
  EXPECT_THROW(forced("qmv_mma_m64_wg", shape(40, 1024, 5120, 4, Dtype::float32), kH100), Error);
  for (const char* bad : {"qmv_tma_m8_wg", "qmv_staged_m8_wg", "qmv_mma_m8_wgx", "qmv_mma_m8_wg_b3", "qmv_warp_rows_wg"}) {
    EXPECT_THROW(forced(bad, shape(3, 1024, 5120), kH100), Error) << bad;
  }
}

TEST(CudaDispatch, ForcedClusterSizes) {
  const ProblemShape p = shape(12, 1024, 5120);
  KernelConfig c = forced("qmv_mma_m8_c4", p, kH100);
  EXPECT_EQ(c.family, Family::qmv_mma);
  EXPECT_EQ(c.token_tiles, 1);
  EXPECT_EQ(c.cluster, 4);
  EXPECT_EQ(c.blocks, 8 * 4);
  EXPECT_EQ(c.name(), "qmv_mma_m8_c4");
  // The family name with a cluster takes the token tiles dispatch would.
  EXPECT_EQ(forced("qmv_mma_c16", p, kH100).name(), "qmv_mma_m16_c16");
  EXPECT_EQ(forced("qmv_mma_m64_c1", p, kH100).blocks, 8);
  for (const char* bad : {"qmv_mma_m8_c0", "qmv_mma_m8_c17", "qmv_mma_c0"}) {
    EXPECT_THROW(forced(bad, p, kH100), Error) << bad;
  }
  for (const char* unknown : {"qmv_mma_m8_c", "qmv_mma_m8_cx", "qmv_staged_m8_c8", "qmv_tma_m8_c8", "qmv_mma_m8_c12345"}) {
    EXPECT_THROW(forced(unknown, p, kH100), Error) << unknown;
  }
  // "_k2": the cluster split with each block's K run in two halves, 8 or 16 tokens, mma.sync.
  c = forced("qmv_mma_m8_c4_k2", p, kH100);
  EXPECT_EQ(c.cluster, 4);
  EXPECT_EQ(c.blocks, 8 * 4);
  EXPECT_EQ(c.block_k_split, 2);
  EXPECT_EQ(mma_block_threads(c), 2 * kMmaThreads);
  EXPECT_EQ(c.name(), "qmv_mma_m8_c4_k2");
  EXPECT_EQ(forced("qmv_mma_c8_k2", p, kH100).name(), "qmv_mma_m16_c8_k2");
  EXPECT_EQ(mma_block_threads(forced("qmv_mma_c8", p, kH100)), kMmaThreads);
  for (const char* bad : {"qmv_mma_m32_c8_k2", "qmv_mma_m64_c8_k2", "qmv_mma_m8_k2", "qmv_mma_m8_b7_k2", "qmv_mma_k2",
                          "qmv_mma_m8_c8_k2_wg", "qmv_mma_m8_c8_k3", "qmv_staged_m8_c8_k2"}) {
    EXPECT_THROW(forced(bad, p, kH100), Error) << bad;
  }
  EXPECT_THROW(forced("qmv_mma_c8_k2", shape(17, 1024, 5120), kH100), Error);  // 32 tokens
  // Clusters need sm_90.
  EXPECT_THROW(forced("qmv_mma_m8_c8", p, DeviceShape{108, 80}), Error);
  EXPECT_THROW(forced("qmv_mma_m8_c8_k2", p, DeviceShape{108, 80}), Error);
  EXPECT_THROW(forced("qmv_mma_m8_c8", shape(3, 1024, 5120, 4, Dtype::float32), kH100), Error);
}

TEST(CudaDispatch, KernelNameSuffixes) {
  const Device gpu = Device::cuda(0);
  for (const char* ok : {"qmv_mma_c8", "qmv_mma_m8_c8", "qmv_mma_m64_c16", "qmv_mma_m16_b77", "qmv_staged_m8_b3",
                         "qmv_mma_c8_k2", "qmv_mma_m16_c3_k2"}) {
    EXPECT_TRUE(is_kernel_name(gpu, "quantized_matmul", ok)) << ok;
  }
  for (const char* bad : {"qmv_mma_c", "qmv_mma_cx", "qmv_staged_m8_c8", "qmv_tma_c8", "qmv_mma_b8", "qmv_warp_rows_c8",
                          "qmv_mma_k2", "qmv_mma_m8_k2", "qmv_mma_m8_b7_k2", "qmv_staged_m8_c8_k2", "qmv_mma_m8_c8_k3"}) {
    EXPECT_FALSE(is_kernel_name(gpu, "quantized_matmul", bad)) << bad;
  }
}

TEST(CudaDispatch, Pure) {
  const ProblemShape p = shape(5, 5120, 13824);
  const KernelConfig a = choose(p, kH100), b = choose(p, kH100);
  EXPECT_EQ(a.name(), b.name());
  EXPECT_EQ(a.blocks, b.blocks);
}

TEST(CudaDispatch, ForcedNamesParse) {
  const ProblemShape p = shape(3, 1024, 5120);
  KernelConfig c = forced("qmv_staged_m16", p, kH100);
  EXPECT_EQ(c.family, Family::qmv_staged);
  EXPECT_EQ(c.token_tiles, 2);
  EXPECT_EQ(c.blocks, std::min<int>(40 * 8 / kMinItemsPerBlock, 132 * staged_blocks_per_sm(4, 2)));
  // A tile name without a suffix is stream-K with dispatch's block count (dispatch itself splits
  // this shape over clusters on sm_90).
  EXPECT_EQ(forced("qmv_mma_m8", p, kH100).blocks, choose(p, DeviceShape{132, 80}).blocks);
  EXPECT_EQ(forced("qmv_mma_m8", p, kH100).cluster, 0);
  c = forced("qmv_staged_m64_b77", p, kH100);
  EXPECT_EQ(c.token_tiles, 8);
  EXPECT_EQ(c.blocks, 77);
  // A forced count above the item count (8 row blocks x 40 segments) is capped to it.
  EXPECT_EQ(forced("qmv_mma_m8_b1000", p, kH100).blocks, 8 * 40);
  EXPECT_EQ(forced("qmv_tma_m8_b1000", p, kH100).blocks, 8 * 20);
  c = forced("qmv_mma_m32_b5", p, kH100);
  EXPECT_EQ(c.family, Family::qmv_mma);
  EXPECT_EQ(c.token_tiles, 4);
  EXPECT_EQ(c.blocks, 5);
  EXPECT_EQ(forced("qmv_warp_rows", p, kH100).family, Family::qmv_warp_rows);
  // Every listed name is accepted for a problem it supports.
  ProblemShape vm = p;
  vm.transpose = false;
  for (const auto& name : kernel_names()) {
    const ProblemShape& q = name == "qvm_columns" ? vm : p;
    // Family names (qmv_tma, qmv_mma) resolve to a token-tile configuration of that family.
    EXPECT_EQ(forced(name, q, kH100).name().rfind(name, 0), 0u) << name;
  }
}

/// qmv_tma: 256-value items, kTmaBlocksPerSm blocks per SM for both token tiles, token tiles by
/// M for the family name; stages sized to the shared-memory budget.
TEST(CudaDispatch, TmaConfigurations) {
  const ProblemShape p = shape(3, 1024, 5120);
  KernelConfig c = forced("qmv_tma", p, kH100);
  EXPECT_EQ(c.family, Family::qmv_tma);
  EXPECT_EQ(c.token_tiles, 1);
  EXPECT_EQ(c.blocks, std::min(8 * 20 / kMinItemsPerBlock, 132 * kTmaBlocksPerSm));
  EXPECT_EQ(c.name(), "qmv_tma_m8");
  for (std::int64_t M = 9; M <= 40; ++M) {
    c = forced("qmv_tma", shape(M, 13824, 5120), kH100);
    EXPECT_EQ(c.token_tiles, 2) << M;
    EXPECT_EQ(c.blocks, 132 * kTmaBlocksPerSm) << M;
  }
  c = forced("qmv_tma_m16_b9", p, kH100);
  EXPECT_EQ(c.token_tiles, 2);
  EXPECT_EQ(c.blocks, 9);
  EXPECT_EQ(forced("qmv_mma", shape(20, 1024, 5120), kH100).name(), "qmv_mma_m32");
  // 4-bit g64: 16 KB of weights + 2 KB of scales and biases per stage, 4 stages in 74 KB.
  EXPECT_EQ(tma_stage_bytes(4, 64), 18 * 1024);
  EXPECT_EQ(tma_pipeline_stages(4, 64), 4);
  EXPECT_EQ(tma_pipeline_stages(4, 32), 3);
  EXPECT_EQ(tma_pipeline_stages(8, 64), 2);
  EXPECT_EQ(tma_pipeline_stages(2, 128), 4);
  for (int bits : {2, 3, 4, 5, 6, 8}) {
    for (int g : {32, 64, 128}) {
      EXPECT_LE(tma_pipeline_stages(bits, g) * tma_stage_bytes(bits, g), kTmaStageBudgetBytes) << bits << " " << g;
    }
  }
  EXPECT_TRUE(tma_supported(shape(1, 5, 256), kH100));
  EXPECT_FALSE(tma_supported(shape(1, 1024, 5120 + 128), kH100));  // K tail inside a slice
  EXPECT_FALSE(tma_supported(shape(1, 1024, 5120), DeviceShape{108, 80}));  // no TMA before sm_90
  EXPECT_FALSE(tma_supported(shape(1, 1024, 5120, 4, Dtype::float32), kH100));
}

TEST(CudaDispatch, ForcedNamesThatCannotRunThrow) {
  const ProblemShape p = shape(3, 1024, 5120);
  for (const char* bad : {"qmv_staged", "qmv_staged_m12", "qmv_staged_m8_b", "qmv_staged_m8_b0", "qmv_staged_m8_bx",
                          "qmv_mma_m8_b123456789", "qmv_tma_m32", "qmv_tma_m64", "dense", ""}) {
    EXPECT_THROW(forced(bad, p, kH100), Error) << bad;
  }
  EXPECT_THROW(forced("qmv_staged_m8", shape(3, 1024, 5120, 3), kH100), Error);
  EXPECT_THROW(forced("qmv_staged_m8", shape(3, 1024, 5120, 4, Dtype::float32), kH100), Error);
  EXPECT_THROW(forced("qmv_mma_m8", shape(3, 1024, 5120, 4, Dtype::float32), kH100), Error);
  EXPECT_THROW(forced("qmv_tma_m8", shape(3, 1024, 5120 + 64), kH100), Error);
  EXPECT_THROW(forced("qmv_tma", shape(3, 1024, 5120), DeviceShape{108, 80}), Error);
  EXPECT_THROW(forced("qmv_mma", shape(3, 1024, 5120, 4, Dtype::float32), kH100), Error);
  ProblemShape vm = p;
  vm.transpose = false;
  EXPECT_THROW(forced("qmv_staged_m8", vm, kH100), Error);
  EXPECT_THROW(forced("qmv_warp_rows", vm, kH100), Error);
  EXPECT_THROW(forced("qvm_columns", p, kH100), Error);
}

}  // namespace
}  // namespace qmm::detail::cuda_dispatch
