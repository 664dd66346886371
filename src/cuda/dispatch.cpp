#include "src/cuda/dispatch.h"

#include <algorithm>

#include "qmm/ops.h"

namespace qmm::detail::cuda_dispatch {

namespace {
constexpr const char* kWarpRows = "qmv_warp_rows";
constexpr const char* kColumns = "qvm_columns";
constexpr int kTokenTileChoices[] = {1, 2, 4, 8};

std::string mma_name(int token_tiles) { return "qmv_mma_m" + std::to_string(8 * token_tiles); }
}  // namespace

std::string KernelConfig::name() const {
  switch (family) {
    case Family::qmv_mma:
      return mma_name(token_tiles);
    case Family::qmv_warp_rows:
      return kWarpRows;
    case Family::qvm_columns:
      return kColumns;
  }
  return "?";
}

std::vector<std::string> kernel_names() {
  std::vector<std::string> names;
  for (int t : kTokenTileChoices) names.push_back(mma_name(t));  // "_b<blocks>" may follow
  names.push_back(kWarpRows);
  names.push_back(kColumns);
  return names;
}

bool mma_supported(const ProblemShape& p) {
  return p.transpose && (p.x_dtype == Dtype::float16 || p.x_dtype == Dtype::bfloat16) && p.x_dtype == p.w_dtype;
}

int mma_blocks(const ProblemShape& p, const DeviceShape& d, int token_tiles) {
  const std::int64_t row_blocks = (p.N + kMmaRowsPerBlock - 1) / kMmaRowsPerBlock;
  const std::int64_t segments = (p.K + kMmaSegment - 1) / kMmaSegment;
  // One block per resident slot; never more blocks than (row block, segment) items so every
  // block has work. token_tiles 1 and 2 share the count, so M = 1..16 reduce identically.
  const std::int64_t target = static_cast<std::int64_t>(d.multiprocessors) * mma_blocks_per_sm(token_tiles);
  return static_cast<int>(std::max<std::int64_t>(1, std::min(target, row_blocks * segments)));
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
  c.token_tiles = p.M <= 8 ? 1 : p.M <= 16 ? 2 : p.M <= 32 ? 4 : 8;
  c.blocks = mma_blocks(p, d, c.token_tiles);
  return c;
}

KernelConfig forced(const std::string& name, const ProblemShape& p, const DeviceShape& d) {
  if (name == kColumns) {
    if (p.transpose) throw Error("[quantized_matmul] kernel qvm_columns needs transpose=false");
    return KernelConfig{Family::qvm_columns, 1, 0};
  }
  if (name == kWarpRows) {
    if (!p.transpose) throw Error("[quantized_matmul] kernel qmv_warp_rows needs transpose=true");
    return KernelConfig{Family::qmv_warp_rows, 1, 0};
  }
  // qmv_mma_m<rows>[_b<blocks>]: the token tile and, optionally, the stream-K block count.
  for (int t : kTokenTileChoices) {
    const std::string base = mma_name(t);
    if (name.compare(0, base.size(), base) != 0) continue;
    int blocks = mma_blocks(p, d, t);
    const std::string rest = name.substr(base.size());
    if (!rest.empty()) {
      if (rest.size() < 3 || rest.compare(0, 2, "_b") != 0 ||
          rest.find_first_not_of("0123456789", 2) != std::string::npos || rest.size() > 8) {
        continue;
      }
      blocks = std::stoi(rest.substr(2));
      if (blocks < 1) throw Error("[quantized_matmul] kernel " + name + ": the block count must be positive");
    }
    if (!mma_supported(p)) {
      throw Error("[quantized_matmul] kernel " + name +
                  " needs transpose=true and float16 or bfloat16 x with scales of the same dtype");
    }
    return KernelConfig{Family::qmv_mma, t, blocks};
  }
  throw Error("[quantized_matmul] unknown CUDA kernel '" + name + "'");
}

}  // namespace qmm::detail::cuda_dispatch
