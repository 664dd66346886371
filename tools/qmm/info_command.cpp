// `qmm info`: the devices qmm sees, their measured read bandwidth, the kernel configurations and
// the build's configuration.
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>

#include "qmm/qmm.h"
#include "tools/qmm/bench_cpu.h"
#include "tools/qmm/build_info.h"
#include "tools/qmm/commands.h"

#ifdef QMM_HAVE_CUDA
#include "tools/qmm/bench_cuda.h"
#endif

namespace qmm::cli {

namespace {

struct InfoOptions {
  bool no_probe = false;
  bool json = false;
};

std::string gb(double bytes) {
  char buf[64];
  if (bytes >= 1e9) {
    std::snprintf(buf, sizeof buf, "%.1f GB", bytes / 1e9);
  } else {
    std::snprintf(buf, sizeof buf, "%.1f MB", bytes / 1e6);
  }
  return buf;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s.empty() ? "(none)" : s;
}

void run(const InfoOptions& o) {
  nlohmann::json out;
  const nlohmann::json build = bench::build_info();
  out["build"] = build;
  nlohmann::json devices = nlohmann::json::array();

  {  // CPU
    const DeviceInfo d = device_info(Device::cpu());
    nlohmann::json j = {{"type", "cpu"}, {"name", d.name}, {"threads", d.multiprocessors},
                        {"llc_bytes", d.l2_bytes}, {"memory_bytes", d.memory_bytes},
                        {"kernels", kernel_names(Device::cpu(), "quantized_matmul")}};
    if (!o.no_probe) {
      bench::cpu::Pool pool;
      // 4x the last-level cache, 256 MB to 1 GB, so the passes come from memory (as qmm bench).
      const std::size_t bytes = std::min<std::size_t>(
          std::size_t{1} << 30, std::max<std::size_t>(std::size_t{256} << 20, 4 * static_cast<std::size_t>(d.l2_bytes)));
      j["read_gbs"] = bench::cpu::measure_read_bandwidth(pool, bytes, 10);
    }
    devices.push_back(j);
  }
  const int n = cuda_available() ? cuda_device_count() : 0;
  for (int i = 0; i < n; ++i) {
    const DeviceInfo d = device_info(Device::cuda(i));
    nlohmann::json j = {{"type", "cuda"}, {"index", i}, {"name", d.name}, {"multiprocessors", d.multiprocessors},
                        {"compute_capability", d.compute_capability}, {"l2_bytes", d.l2_bytes},
                        {"memory_bytes", d.memory_bytes}, {"peak_bandwidth_gbs", d.peak_bandwidth_gbs},
                        {"max_shared_per_block", d.max_shared_per_block},
                        {"kernels", kernel_names(Device::cuda(i), "quantized_matmul")}};
#ifdef QMM_HAVE_CUDA
    if (!o.no_probe) {
      bench::gpu::Context ctx(i);
      const std::size_t bytes = std::max<std::size_t>(std::size_t{1} << 30, 8 * static_cast<std::size_t>(d.l2_bytes));
      j["read_gbs"] = ctx.measure_read_bandwidth(bytes);
    }
#endif
    devices.push_back(j);
  }
  out["devices"] = devices;

  if (o.json) {
    std::printf("%s\n", out.dump(2).c_str());
    return;
  }
  std::printf("qmm %s\n", build.value("version", "").c_str());
  std::printf("build: %s, CUDA %s", build.value("build_type", "").c_str(), build.value("cuda", false) ? "on" : "off");
  if (build.value("cuda", false)) {
    std::printf(" (architectures %s; %s)", build.value("cuda_architectures", "").c_str(),
                build.value("cuda_versions", "").c_str());
  }
  std::printf(", %s\n", build.value("compiler", "").c_str());
  for (const auto& d : devices) {
    std::printf("\n");
    if (d["type"] == "cpu") {
      std::printf("cpu: %s\n", d["name"].get<std::string>().c_str());
      std::printf("  threads %d, last-level cache %s, memory %s\n", d["threads"].get<int>(),
                  gb(d["llc_bytes"].get<double>()).c_str(), gb(d["memory_bytes"].get<double>()).c_str());
    } else {
      std::printf("cuda:%d: %s\n", d["index"].get<int>(), d["name"].get<std::string>().c_str());
      std::printf("  %d SMs, compute capability %d.%d, L2 %s, memory %s, peak %.0f GB/s, shared/block %d KB\n",
                  d["multiprocessors"].get<int>(), d["compute_capability"].get<int>() / 10,
                  d["compute_capability"].get<int>() % 10, gb(d["l2_bytes"].get<double>()).c_str(),
                  gb(d["memory_bytes"].get<double>()).c_str(), d["peak_bandwidth_gbs"].get<double>(),
                  d["max_shared_per_block"].get<int>() / 1024);
    }
    if (d.contains("read_gbs")) std::printf("  measured read bandwidth %.1f GB/s\n", d["read_gbs"].get<double>());
    std::printf("  quantized_matmul kernels: %s\n", join(d["kernels"].get<std::vector<std::string>>()).c_str());
  }
  if (n == 0) std::printf("\nno CUDA device%s\n", build.value("cuda", false) ? "" : " (this build has no CUDA backend)");
}

}  // namespace

void add_info_command(CLI::App& app) {
  auto opts = std::make_shared<InfoOptions>();
  auto* cmd = app.add_subcommand("info", "Show the devices (name, SMs, caches, memory, measured read bandwidth), "
                                         "the kernel configurations and the build's configuration.");
  cmd->add_flag("--no-probe", opts->no_probe, "skip the read-bandwidth measurement");
  cmd->add_flag("--json", opts->json, "print JSON instead of text");
  cmd->callback([opts] { run(*opts); });
}

}  // namespace qmm::cli
