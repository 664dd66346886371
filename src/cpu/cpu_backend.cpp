#include "src/cpu/cpu_backend.h"

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <thread>

#include "qmm/ops.h"
#include "src/cpu/production.h"
#include "src/cpu/reference.h"
#include "src/cpu/thread_pool.h"
#include "src/format/affine.h"

namespace qmm::detail {

namespace {
constexpr const char* kReference = "reference";
constexpr const char* kThreaded = "cpu_threaded";
constexpr const char* kWeightStationary = "cpu_weight_stationary";
}  // namespace

std::vector<std::string> cpu_kernel_names(const std::string& op) {
  if (op == "quantized_matmul") return {kWeightStationary, kReference};
  return {kThreaded, kReference};
}

LaunchInfo cpu_describe(const std::vector<MatmulProblem>& problems, const std::string& kernel) {
  LaunchInfo info;
  info.kernel = kernel.empty() ? kWeightStationary : kernel;
  info.device = Device::cpu();
  info.multiprocessors = cpu::num_threads();
  info.grid[0] = cpu::num_threads();
  info.blocks_per_sm = 1;
  for (const auto& p : problems) {
    const auto& w = p.w;
    const std::int64_t bytes = w.rows * format::packed_words(w.cols, w.bits) * 4 +
                               2 * w.rows * (w.cols / w.group_size) * static_cast<std::int64_t>(itemsize(w.dtype));
    info.min_weight_bytes += bytes;
    // The reference re-reads nothing either: it dequantizes once into a double matrix.
    info.weight_bytes += bytes;
  }
  return info;
}

namespace {
/// The largest cache the kernel reports in sysfs ("32768K"); glibc's sysconf figure can be far
/// off on virtual machines (335 MB reported where sysfs says 32 MB), so it is only a fallback.
std::int64_t last_level_cache_bytes() {
  std::int64_t best = 0;
  for (int index = 0; index < 8; ++index) {
    std::ifstream f("/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/size");
    std::string text;
    if (!(f >> text) || text.empty()) continue;
    std::int64_t value = 0;
    std::size_t i = 0;
    while (i < text.size() && text[i] >= '0' && text[i] <= '9') value = value * 10 + (text[i++] - '0');
    const char unit = i < text.size() ? text[i] : ' ';
    value *= unit == 'K' ? 1024 : unit == 'M' ? 1024 * 1024 : 1;
    best = std::max(best, value);
  }
  if (best > 0) return best;
  const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
  const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
  return l3 > 0 ? l3 : (l2 > 0 ? l2 : 0);
}
}  // namespace

DeviceInfo cpu_device_info() {
  DeviceInfo d;
  d.device = Device::cpu();
  d.multiprocessors = static_cast<int>(std::thread::hardware_concurrency());
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.rfind("model name", 0) == 0) {
      d.name = line.substr(line.find(':') + 2);
      break;
    }
  }
  if (d.name.empty()) d.name = "CPU";
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page = sysconf(_SC_PAGE_SIZE);
  if (pages > 0 && page > 0) d.memory_bytes = static_cast<std::int64_t>(pages) * page;
  d.l2_bytes = last_level_cache_bytes();
  return d;
}

void cpu_check_kernel(const std::string& op, const std::string& kernel) {
  if (kernel.empty()) return;
  const auto names = cpu_kernel_names(op);
  if (std::find(names.begin(), names.end(), kernel) == names.end()) {
    throw Error("[" + op + "] unknown CPU kernel '" + kernel + "'");
  }
}

void cpu_quantize(const QuantizeProblem& p, const std::string& kernel) {
  if (kernel == kReference) {
    reference::quantize(p);
  } else {
    cpu_production::quantize(p);
  }
}

void cpu_dequantize(const DequantizeProblem& p, const std::string& kernel) {
  if (kernel == kReference) {
    reference::dequantize(p);
  } else {
    cpu_production::dequantize(p);
  }
}

void cpu_quantized_matmul(const std::vector<MatmulProblem>& problems, const std::string& kernel) {
  for (const auto& p : problems) {
    if (kernel == kReference) {
      reference::quantized_matmul(p);
    } else {
      cpu_production::quantized_matmul(p);
    }
  }
}

}  // namespace qmm::detail
