#include "src/cuda/dispatch.h"

#include <algorithm>

#include "qmm/ops.h"

namespace qmm::detail::cuda_dispatch {

namespace {
constexpr const char* kWarpRows = "qmv_warp_rows";
constexpr const char* kColumns = "qvm_columns";
constexpr const char* kTmaFamily = "qmv_tma";
constexpr const char* kMmaFamily = "qmv_mma";
constexpr int kTokenTileChoices[] = {1, 2, 4, 8};
constexpr const char* kWgmmaSuffix = "_wg";
constexpr const char* kBlockKSplitSuffix = "_k2";

std::string mma_name(int token_tiles) { return "qmv_mma_m" + std::to_string(8 * token_tiles); }
std::string tma_name(int token_tiles) { return "qmv_tma_m" + std::to_string(8 * token_tiles); }
std::string staged_name(int token_tiles) { return "qmv_staged_m" + std::to_string(8 * token_tiles); }
int token_tiles_for(std::int64_t M) { return M <= 8 ? 1 : M <= 16 ? 2 : M <= 32 ? 4 : 8; }
/// Whether `name` is a qmv_mma name followed by `suffix` ("_wg", "_k2").
bool mma_name_with_suffix(const std::string& name, const std::string& suffix) {
  return name.size() > suffix.size() && name.rfind(kMmaFamily, 0) == 0 &&
         name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}
}  // namespace

std::string KernelConfig::name() const {
  switch (family) {
    case Family::qmv_tma:
      return tma_name(token_tiles);
    case Family::qmv_staged:
      return staged_name(token_tiles);
    case Family::qmv_mma:
      return mma_name(token_tiles) + (cluster > 0 ? "_c" + std::to_string(cluster) : "") +
             (block_k_split == 2 ? kBlockKSplitSuffix : "") + (wgmma ? kWgmmaSuffix : "");
    case Family::qmv_warp_rows:
      return kWarpRows;
    case Family::qvm_columns:
      return kColumns;
  }
  return "?";
}

std::vector<std::string> kernel_names(bool sm90a_code) {
  std::vector<std::string> names;
  names.push_back(kTmaFamily);  // token tiles by M, like dispatch
  for (int t : {1, 2}) names.push_back(tma_name(t));  // "_b<blocks>" may follow
  names.push_back(kMmaFamily);
  for (int t : kTokenTileChoices) names.push_back(staged_name(t));  // "_b<blocks>" may follow
  for (int t : kTokenTileChoices) names.push_back(mma_name(t));     // likewise, or "_c<cluster>"
  for (int t : kTokenTileChoices) {
    for (int size : kMmaClusterSizes) names.push_back(mma_name(t) + "_c" + std::to_string(size));
  }
  // After any "_c<C>" with 8 or 16 tokens (the family name "qmv_mma_c<C>" too).
  for (int t = 1; t <= kMmaMaxBlockKSplitTiles; t *= 2) names.push_back(mma_name(t) + "_c8" + kBlockKSplitSuffix);
  if (sm90a_code) {
    for (int t : kTokenTileChoices) names.push_back(mma_name(t) + kWgmmaSuffix);  // after "_b<n>" or "_c<C>" too
  }
  names.push_back(kWarpRows);
  names.push_back(kColumns);
  return names;
}

bool mma_supported(const ProblemShape& p) {
  return p.transpose && (p.x_dtype == Dtype::float16 || p.x_dtype == Dtype::bfloat16) && p.x_dtype == p.w_dtype;
}

bool tma_supported(const ProblemShape& p, const DeviceShape& d) {
  return mma_supported(p) && d.compute_capability >= 90 && p.K % kTmaItemValues == 0;
}

bool staged_supported(const ProblemShape& p) { return mma_supported(p) && (p.bits == 4 || p.bits == 8); }

namespace {
/// 128-row blocks of W (the unit both work splits hand out).
std::int64_t row_blocks(const ProblemShape& p) { return (p.N + kMmaRowsPerBlock - 1) / kMmaRowsPerBlock; }
/// (row block, K item) pairs of the stream-K split.
std::int64_t stream_k_items(const ProblemShape& p, int item_values) {
  return row_blocks(p) * ((p.K + item_values - 1) / item_values);
}
/// The number in `rest` when it is `tag` followed by 1..max_digits digits, else -1.
int numeric_suffix(const std::string& rest, const char* tag, std::size_t max_digits) {
  if (rest.size() < 3 || rest.size() > 2 + max_digits || rest.compare(0, 2, tag) != 0 ||
      rest.find_first_not_of("0123456789", 2) != std::string::npos) {
    return -1;
  }
  return std::stoi(rest.substr(2));
}
}  // namespace

int stream_k_blocks(const ProblemShape& p, const DeviceShape& d, int blocks_per_sm, int item_values) {
  // One block per resident slot, but at least kMinItemsPerBlock items per block: on small
  // layers (5120 -> 1024: 320 items) one item per block made every row block a 40-way fixup that
  // cost more than the SMs it filled (bench/NOTES.md). Depends on N, K and the device only:
  // token_tiles 1 and 2 share the count, so M = 1..16 reduce identically.
  const std::int64_t slots = static_cast<std::int64_t>(d.multiprocessors) * blocks_per_sm;
  const std::int64_t items = stream_k_items(p, item_values);
  return static_cast<int>(std::max<std::int64_t>(1, std::min(slots, items / kMinItemsPerBlock)));
}

bool wgmma_pays(int token_tiles, const DeviceShape& d) {
  return d.compute_capability == 90 && d.sm90a_code && token_tiles >= 4;
}

int cluster_size(const ProblemShape& p, const DeviceShape& d) {
  if (d.compute_capability < 90 || !mma_supported(p)) return 0;
  // M = 1..16 decide with the slots both of their token tiles have (mma_blocks_per_sm is the same
  // for 1 and 2), so they all get the same split.
  const int tiles = p.M <= 16 ? 2 : token_tiles_for(p.M);
  const std::int64_t slots = static_cast<std::int64_t>(d.multiprocessors) * mma_blocks_per_sm(tiles);
  const std::int64_t segments = (p.K + kMmaSegment - 1) / kMmaSegment;
  const int blocks = stream_k_blocks(p, d, mma_blocks_per_sm(tiles));
  const std::int64_t stream_k_run = (stream_k_items(p, kMmaSegment) + blocks - 1) / blocks;
  for (const int size : kMmaClusterSizes) {
    if (size == 5 && !wgmma_pays(tiles, d)) continue;
    if (row_blocks(p) * size * 100 > slots * 85) continue;  // one wave, with room for GPC packing
    if ((segments + size - 1) / size <= stream_k_run + 1) return size;
  }
  return 0;
}

int block_k_split(const ProblemShape& p, const DeviceShape& d, int cluster) {
  if (cluster <= 0 || p.M > 8 * kMmaMaxBlockKSplitTiles) return 1;
  const std::int64_t segments = (p.K + kMmaSegment - 1) / kMmaSegment;
  const bool one_wave = row_blocks(p) * cluster * 100 <= static_cast<std::int64_t>(d.multiprocessors) * 85;
  return one_wave && segments >= 2 * cluster ? 2 : 1;
}

KernelConfig choose(const ProblemShape& p, const DeviceShape& d) {
  KernelConfig c;
  if (!p.transpose) {
    c.family = Family::qvm_columns;
    return c;
  }
  if (!mma_supported(p)) {
    c.family = Family::qmv_warp_rows;
    return c;
  }
  c.family = Family::qmv_mma;
  c.token_tiles = token_tiles_for(p.M);
  c.wgmma = wgmma_pays(c.token_tiles, d);
  if (const int cluster = cluster_size(p, d); cluster > 0) {
    c.cluster = cluster;
    c.blocks = static_cast<int>(row_blocks(p)) * cluster;
    c.block_k_split = block_k_split(p, d, cluster);
    return c;
  }
  c.blocks = stream_k_blocks(p, d, mma_blocks_per_sm(c.token_tiles));
  return c;
}

KernelConfig forced(const std::string& requested, const ProblemShape& p, const DeviceShape& d) {
  // "_wg" after any qmv_mma name: that configuration with wgmma MMAs (compute capability 9.0).
  const std::string wg = kWgmmaSuffix;
  if (mma_name_with_suffix(requested, wg)) {
    if (!mma_supported(p) || d.compute_capability != 90 || !d.sm90a_code) {
      throw Error("[quantized_matmul] kernel " + requested +
                  " needs a compute capability 9.0 device and a build with sm_90a code (wgmma), transpose=true and "
                  "float16 or bfloat16 x with scales of the same dtype");
    }
    KernelConfig c = forced(requested.substr(0, requested.size() - wg.size()), p, d);
    if (c.block_k_split > 1) {
      throw Error("[quantized_matmul] kernel " + requested + ": the in-block K split (_k2) runs on mma.sync only");
    }
    c.wgmma = true;
    return c;
  }
  // "_k2" after a qmv_mma cluster name with 8 or 16 tokens: each block's K run split in two.
  const std::string k2 = kBlockKSplitSuffix;
  if (mma_name_with_suffix(requested, k2)) {
    KernelConfig c = forced(requested.substr(0, requested.size() - k2.size()), p, d);
    if (c.cluster == 0 || c.wgmma || c.token_tiles > kMmaMaxBlockKSplitTiles) {
      throw Error("[quantized_matmul] kernel " + requested +
                  ": the in-block K split (_k2) needs the cluster split (_c<C>) with 8 or 16 tokens (m8, m16)");
    }
    c.block_k_split = 2;
    return c;
  }
  // A family name stands for the token-tile configuration dispatch would pick for this M.
  // "qmv_mma_c<C>" likewise, with a cluster of C.
  const bool mma_cluster_family = requested.rfind(std::string(kMmaFamily) + "_c", 0) == 0;
  const std::string name = requested == kTmaFamily   ? tma_name(p.M <= 8 ? 1 : 2)
                           : requested == kMmaFamily ? mma_name(token_tiles_for(p.M))
                           : mma_cluster_family ? mma_name(token_tiles_for(p.M)) + requested.substr(7)
                                                : requested;
  if (name == kColumns) {
    if (p.transpose) throw Error("[quantized_matmul] kernel qvm_columns needs transpose=false");
    return KernelConfig{Family::qvm_columns, 1, 0};
  }
  if (name == kWarpRows) {
    if (!p.transpose) throw Error("[quantized_matmul] kernel qmv_warp_rows needs transpose=true");
    return KernelConfig{Family::qmv_warp_rows, 1, 0};
  }
  // qmv_{tma,staged,mma}_m<rows>[_b<blocks>]: the token tile and, optionally, the stream-K
  // block count; qmv_mma_m<rows>_c<cluster>: qmv_mma with the cluster split.
  for (const Family family : {Family::qmv_tma, Family::qmv_staged, Family::qmv_mma}) {
    for (int t : kTokenTileChoices) {
      if (family == Family::qmv_tma && t > 2) continue;
      const std::string base =
          family == Family::qmv_tma ? tma_name(t) : family == Family::qmv_staged ? staged_name(t) : mma_name(t);
      if (name.compare(0, base.size(), base) != 0) continue;
      const std::string rest = name.substr(base.size());
      const int cluster = family == Family::qmv_mma ? numeric_suffix(rest, "_c", 2) : -1;
      if (cluster >= 0) {
        if (cluster < 1 || cluster > kMmaMaxCluster) {
          throw Error("[quantized_matmul] kernel " + name + ": the cluster size must be 1.." +
                      std::to_string(kMmaMaxCluster));
        }
        if (!mma_supported(p) || d.compute_capability < 90) {
          throw Error("[quantized_matmul] kernel " + name +
                      " needs an sm_90 device, transpose=true and float16 or bfloat16 x with scales of the same dtype");
        }
        return KernelConfig{family, t, static_cast<int>(row_blocks(p) * cluster), cluster};
      }
      int blocks = 0;
      if (!rest.empty()) {
        blocks = numeric_suffix(rest, "_b", 6);
        if (blocks < 0) continue;
        if (blocks < 1) throw Error("[quantized_matmul] kernel " + name + ": the block count must be positive");
      }
      if (family == Family::qmv_tma) {
        if (!tma_supported(p, d)) {
          throw Error("[quantized_matmul] kernel " + name +
                      " needs an sm_90 device, transpose=true, K a multiple of 256 and float16 or bfloat16 x with "
                      "scales of the same dtype");
        }
        if (blocks == 0) blocks = stream_k_blocks(p, d, kTmaBlocksPerSm, kTmaItemValues);
      } else if (family == Family::qmv_staged) {
        if (!staged_supported(p)) {
          throw Error("[quantized_matmul] kernel " + name +
                      " needs transpose=true, 4- or 8-bit weights and float16 or bfloat16 x with scales of the same "
                      "dtype");
        }
        if (blocks == 0) blocks = stream_k_blocks(p, d, staged_blocks_per_sm(p.bits, t));
      } else {
        if (!mma_supported(p)) {
          throw Error("[quantized_matmul] kernel " + name +
                      " needs transpose=true and float16 or bfloat16 x with scales of the same dtype");
        }
        if (blocks == 0) blocks = stream_k_blocks(p, d, mma_blocks_per_sm(t));
      }
      // More blocks than items would leave blocks without work, which the last-arriver fixup
      // counts on: a forced count is capped at the item count.
      const std::int64_t items = stream_k_items(p, family == Family::qmv_tma ? kTmaItemValues : kMmaSegment);
      return KernelConfig{family, t, static_cast<int>(std::min<std::int64_t>(blocks, std::max<std::int64_t>(1, items)))};
    }
  }
  throw Error("[quantized_matmul] unknown CUDA kernel '" + name + "'");
}

}  // namespace qmm::detail::cuda_dispatch
