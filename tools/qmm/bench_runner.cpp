#include "tools/qmm/bench_runner.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <memory>

#include "qmm/qmm.h"
#include "tools/qmm/bench_cpu.h"
#include "tools/qmm/build_info.h"

#ifdef QMM_HAVE_CUDA
#include "tools/qmm/bench_cuda.h"
#endif

namespace qmm::bench {

namespace {

constexpr int kMaxCopies = 1 << 16;
constexpr int kMinCallsPerReplay = 20;  // amortises the two events around each graph replay
constexpr int kMaxSamples = 100000;

std::size_t align_up(std::size_t v, std::size_t a) { return (v + a - 1) / a * a; }

/// Shapes and byte counts of one copy of the quantized weights, laid out in an arena.
struct WeightLayout {
  Shape wq_shape, s_shape;
  std::size_t wq_bytes = 0, s_bytes = 0;
  std::size_t s_offset = 0, b_offset = 0, stride = 0;  // within one copy; stride between copies
  std::int64_t bytes() const { return static_cast<std::int64_t>(wq_bytes + 2 * s_bytes); }
};

WeightLayout layout_for(const BenchPlan& plan, const ShapeSpec& shape) {
  WeightLayout l;
  // transpose=true: W is (N, K) grouped along K; transpose=false: W is (K, N) grouped along N.
  const std::int64_t rows = plan.transpose ? shape.n : shape.k;
  const std::int64_t cols = plan.transpose ? shape.k : shape.n;
  l.wq_shape = {rows, cols * plan.bits / 32};
  l.s_shape = {rows, cols / plan.group_size};
  l.wq_bytes = static_cast<std::size_t>(rows * (cols * plan.bits / 32)) * 4;
  l.s_bytes = static_cast<std::size_t>(rows * (cols / plan.group_size)) * itemsize(plan.dtype);
  l.s_offset = align_up(l.wq_bytes, 256);
  l.b_offset = l.s_offset + align_up(l.s_bytes, 256);
  l.stride = l.b_offset + align_up(l.s_bytes, 256);
  return l;
}

int copies_for(std::int64_t bytes_per_copy, double target_bytes, int minimum) {
  const double c = std::ceil(target_bytes / static_cast<double>(std::max<std::int64_t>(1, bytes_per_copy)));
  return static_cast<int>(std::min<double>(kMaxCopies, std::max<double>(minimum, c)));
}

void store_floats(void* dst, const std::vector<float>& v, Dtype dtype) {
  for (std::size_t i = 0; i < v.size(); ++i) {
    switch (dtype) {
      case Dtype::float32: static_cast<float*>(dst)[i] = v[i]; break;
      case Dtype::float16: static_cast<std::uint16_t*>(dst)[i] = float_to_float16_bits(v[i]); break;
      case Dtype::bfloat16: static_cast<std::uint16_t*>(dst)[i] = float_to_bfloat16_bits(v[i]); break;
      default: break;
    }
  }
}

std::string now_utc() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

/// The progress line on stderr: rewritten in place on a terminal, one line per case otherwise.
class Progress {
 public:
  Progress(bool quiet, int total) : quiet_(quiet), tty_(isatty(STDERR_FILENO) != 0), total_(total) {}
  ~Progress() { done(); }
  void step(const std::string& what) {
    if (quiet_) return;
    ++count_;
    if (tty_) {
      std::fprintf(stderr, "\r\033[K[qmm bench %d/%d] %s", count_, total_, what.c_str());
    } else {
      std::fprintf(stderr, "[qmm bench %d/%d] %s\n", count_, total_, what.c_str());
    }
    std::fflush(stderr);
    open_ = tty_;
  }
  void done() {
    if (open_) std::fprintf(stderr, "\r\033[K");
    open_ = false;
  }

 private:
  bool quiet_, tty_;
  int total_, count_ = 0;
  bool open_ = false;
};

/// Wall-clock samples of `call(i)` (i counts up across the rotation), in microseconds per call.
std::vector<double> time_wall(const std::function<void(std::int64_t)>& call, double budget_ms, int min_samples,
                              int warmup) {
  using clock = std::chrono::steady_clock;
  std::int64_t i = 0;
  for (int w = 0; w < warmup; ++w) call(i++);
  std::vector<double> us;
  const auto t0 = clock::now();
  for (;;) {
    const auto a = clock::now();
    call(i++);
    const auto b = clock::now();
    us.push_back(std::chrono::duration<double, std::micro>(b - a).count());
    const double elapsed_ms = std::chrono::duration<double, std::milli>(b - t0).count();
    const int n = static_cast<int>(us.size());
    if ((elapsed_ms >= budget_ms && n >= min_samples) || n >= kMaxSamples) break;
  }
  return us;
}

std::string case_name(const ShapeSpec& s, const char* what, int m = 0) {
  std::string t = s.key() + " " + what;
  if (m > 0) t += " M=" + std::to_string(m);
  return t;
}

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
using HostBuffer = std::unique_ptr<void, FreeDeleter>;

HostBuffer host_alloc(std::size_t bytes) {
  void* p = std::aligned_alloc(256, align_up(std::max<std::size_t>(bytes, 256), 256));
  if (p == nullptr) throw std::runtime_error("[bench] out of host memory (" + std::to_string(bytes) + " bytes)");
  return HostBuffer(p);
}

/// A shape's result with its weight rotation set up: copies to cycle through so that `target`
/// bytes are streamed, and whether that is cold against a cache of `cache_bytes` (>= 4x).
ShapeResult rotation_for(const BenchPlan& plan, const ShapeSpec& shape, double target, double cache_bytes) {
  ShapeResult sr;
  sr.shape = shape;
  const WeightLayout l = layout_for(plan, shape);
  sr.weight_bytes = l.bytes();
  sr.copies = copies_for(l.bytes(), target, 2);
  sr.rotation_bytes = static_cast<std::int64_t>(sr.copies) * l.bytes();
  sr.cold = cache_bytes > 0 && static_cast<double>(sr.rotation_bytes) >= 4 * cache_bytes;
  return sr;
}

/// Progress steps of a plan: per shape the probe, and per M the kernel and the dense row.
int progress_steps(const BenchPlan& plan) {
  return static_cast<int>(plan.shapes.size() * (1 + plan.ms.size() * (plan.dense ? 2 : 1)));
}

// ---- CPU ------------------------------------------------------------------------------------

void run_cpu(const BenchPlan& plan, Report& report, bool quiet) {
  cpu::Pool pool;
  const double llc = static_cast<double>(report.device.l2_bytes);
  // 4x the last-level cache, at least 256 MB (CPUs prefetch; small sets hide in caches) and at
  // most 1 GB (some virtual machines report the whole host's L3).
  const double target = plan.rotation_mb > 0 ? plan.rotation_mb * 1e6 : std::min(std::max(4 * llc, 256e6), 1e9);
  const int warmup = 2;
  Progress progress(quiet, progress_steps(plan));
  const int max_m = plan.ms.back();

  for (const auto& shape : plan.shapes) {
    ShapeResult sr = rotation_for(plan, shape, target, llc);
    const WeightLayout l = layout_for(plan, shape);
    sr.calls_per_sample = 1;

    // Weights: one random copy, replicated (identical bytes are as costly to read as any).
    HostBuffer arena = host_alloc(l.stride * sr.copies);
    char* base = static_cast<char*>(arena.get());
    cpu::fill_random_bytes(base, l.wq_bytes, 1);
    {
      const std::size_t ns = l.s_bytes / itemsize(plan.dtype);
      std::vector<float> v(ns);
      cpu::fill_random_floats(v.data(), ns, 2, -0.02f, 0.02f);
      store_floats(base + l.s_offset, v, plan.dtype);
      cpu::fill_random_floats(v.data(), ns, 3, -0.2f, 0.2f);
      store_floats(base + l.b_offset, v, plan.dtype);
    }
    for (int c = 1; c < sr.copies; ++c) std::memcpy(base + c * l.stride, base, l.stride);
    auto wq = [&](std::int64_t i) { return TensorView(base + (i % sr.copies) * l.stride, l.wq_shape, Dtype::uint32); };
    auto sc = [&](std::int64_t i) {
      return TensorView(base + (i % sr.copies) * l.stride + l.s_offset, l.s_shape, plan.dtype);
    };
    auto bi = [&](std::int64_t i) {
      return TensorView(base + (i % sr.copies) * l.stride + l.b_offset, l.s_shape, plan.dtype);
    };

    // Activations stay hot: one x for every call.
    const std::size_t x_count = static_cast<std::size_t>(max_m * shape.k);
    HostBuffer x_buf = host_alloc(x_count * itemsize(plan.dtype));
    {
      std::vector<float> v(x_count);
      cpu::fill_random_floats(v.data(), x_count, 4, -1.0f, 1.0f);
      store_floats(x_buf.get(), v, plan.dtype);
    }
    HostBuffer out_buf = host_alloc(static_cast<std::size_t>(max_m * shape.n) * itemsize(plan.dtype));

    // Read probe: the same bytes, the same rotation.
    progress.step(case_name(shape, "read probe"));
    volatile std::uint64_t sink = 0;
    sr.probe_us = summarize(time_wall(
        [&](std::int64_t i) {
          const char* c = base + (i % sr.copies) * l.stride;
          sink = sink ^ cpu::read_all(pool, {{c, l.wq_bytes}, {c + l.s_offset, l.s_bytes}, {c + l.b_offset, l.s_bytes}});
        },
        plan.budget_ms, plan.min_samples, warmup));

    // Dense float equivalent.
    HostBuffer dense_w, dense_x, dense_out;
    const std::size_t dense_bytes = static_cast<std::size_t>(shape.n * shape.k) * sizeof(float);
    if (plan.dense) {
      sr.dense_copies = copies_for(static_cast<std::int64_t>(dense_bytes), target, 1);
      dense_w = host_alloc(dense_bytes * sr.dense_copies);
      cpu::fill_random_floats(static_cast<float*>(dense_w.get()), static_cast<std::size_t>(shape.n * shape.k), 5,
                              -0.1f, 0.1f);
      for (int c = 1; c < sr.dense_copies; ++c) {
        std::memcpy(static_cast<char*>(dense_w.get()) + c * dense_bytes, dense_w.get(), dense_bytes);
      }
      dense_x = host_alloc(x_count * sizeof(float));
      cpu::fill_random_floats(static_cast<float*>(dense_x.get()), x_count, 6, -1.0f, 1.0f);
      dense_out = host_alloc(static_cast<std::size_t>(max_m * shape.n) * sizeof(float));
    }

    for (int m : plan.ms) {
      Row row;
      row.m = m;
      const TensorView x(x_buf.get(), {m, shape.k}, plan.dtype);
      const TensorView out(out_buf.get(), {m, shape.n}, plan.dtype);
      row.x_bytes = static_cast<std::int64_t>(x.nbytes());
      row.out_bytes = static_cast<std::int64_t>(out.nbytes());
      CallOptions opts;
      opts.kernel = plan.kernel;
      row.launch = describe_quantized_matmul(x, wq(0), sc(0), bi(0), plan.transpose, plan.group_size, plan.bits, opts);
      progress.step(case_name(shape, "qmm", m));
      row.us = summarize(time_wall(
          [&](std::int64_t i) {
            quantized_matmul_into(x, wq(i), sc(i), bi(i), out, plan.transpose, plan.group_size, plan.bits, opts);
          },
          plan.budget_ms, plan.min_samples, warmup));
      if (plan.dense) {
        progress.step(case_name(shape, "dense", m));
        const float* dx = static_cast<const float*>(dense_x.get());
        float* dout = static_cast<float*>(dense_out.get());
        row.dense_us = summarize(time_wall(
            [&](std::int64_t i) {
              const auto* w = reinterpret_cast<const float*>(static_cast<const char*>(dense_w.get()) +
                                                             (i % sr.dense_copies) * dense_bytes);
              cpu::dense_gemm(pool, dx, w, dout, m, shape.n, shape.k);
            },
            plan.budget_ms, plan.min_samples, warmup));
      }
      sr.rows.push_back(std::move(row));
    }
    report.shapes.push_back(std::move(sr));
  }
}

// ---- CUDA -----------------------------------------------------------------------------------

#ifdef QMM_HAVE_CUDA
void run_cuda(const BenchPlan& plan, Report& report, bool quiet) {
  gpu::Context ctx(plan.device.index);
  double l2 = static_cast<double>(report.device.l2_bytes);
  if (l2 <= 0) l2 = 64e6;  // unknown: assume a large L2
  const double target = plan.rotation_mb > 0 ? plan.rotation_mb * 1e6 : 4 * l2;
  Progress progress(quiet, progress_steps(plan));
  const int max_m = plan.ms.back();
  const Device dev = plan.device;

  for (const auto& shape : plan.shapes) {
    ShapeResult sr = rotation_for(plan, shape, target, l2);
    const WeightLayout l = layout_for(plan, shape);
    const int calls = sr.copies * ((kMinCallsPerReplay + sr.copies - 1) / sr.copies);
    sr.calls_per_sample = calls;

    char* base = static_cast<char*>(ctx.alloc(l.stride * sr.copies));
    const std::size_t ns = l.s_bytes / itemsize(plan.dtype);
    for (int c = 0; c < sr.copies; ++c) {
      char* p = base + c * l.stride;
      ctx.fill_random_bits(p, l.wq_bytes, 100 + 3 * c);
      ctx.fill_random(p + l.s_offset, ns, plan.dtype, 101 + 3 * c, -0.02f, 0.02f);
      ctx.fill_random(p + l.b_offset, ns, plan.dtype, 102 + 3 * c, -0.2f, 0.2f);
    }
    auto wq = [&](int i) { return TensorView(base + (i % sr.copies) * l.stride, l.wq_shape, Dtype::uint32, dev); };
    auto sc = [&](int i) {
      return TensorView(base + (i % sr.copies) * l.stride + l.s_offset, l.s_shape, plan.dtype, dev);
    };
    auto bi = [&](int i) {
      return TensorView(base + (i % sr.copies) * l.stride + l.b_offset, l.s_shape, plan.dtype, dev);
    };
    const std::size_t x_count = static_cast<std::size_t>(max_m * shape.k);
    void* x_buf = ctx.alloc(x_count * itemsize(plan.dtype));
    ctx.fill_random(x_buf, x_count, plan.dtype, 7, -1.0f, 1.0f);
    void* out_buf = ctx.alloc(static_cast<std::size_t>(max_m * shape.n) * itemsize(plan.dtype));
    ctx.synchronize();

    progress.step(case_name(shape, "read probe"));
    sr.probe_us = summarize(ctx.time_graph(
        calls,
        [&](int i) {
          const char* c = base + (i % sr.copies) * l.stride;
          ctx.enqueue_read({{c, l.wq_bytes}, {c + l.s_offset, l.s_bytes}, {c + l.b_offset, l.s_bytes}});
        },
        plan.budget_ms, plan.min_samples));

    // Dense equivalent in the activation dtype (cuBLAS, fp32 accumulate).
    char* dense_w = nullptr;
    int dense_calls = 0;
    const std::size_t dense_bytes = static_cast<std::size_t>(shape.n * shape.k) * itemsize(plan.dtype);
    if (plan.dense) {
      sr.dense_copies = copies_for(static_cast<std::int64_t>(dense_bytes), target, 1);
      dense_calls = sr.dense_copies * ((kMinCallsPerReplay + sr.dense_copies - 1) / sr.dense_copies);
      dense_w = static_cast<char*>(ctx.alloc(dense_bytes * sr.dense_copies));
      for (int c = 0; c < sr.dense_copies; ++c) {
        ctx.fill_random(dense_w + c * dense_bytes, static_cast<std::size_t>(shape.n * shape.k), plan.dtype, 200 + c,
                        -0.1f, 0.1f);
      }
      ctx.synchronize();
    }

    for (int m : plan.ms) {
      Row row;
      row.m = m;
      const TensorView x(x_buf, {m, shape.k}, plan.dtype, dev);
      const TensorView out(out_buf, {m, shape.n}, plan.dtype, dev);
      row.x_bytes = static_cast<std::int64_t>(x.nbytes());
      row.out_bytes = static_cast<std::int64_t>(out.nbytes());
      CallOptions opts;
      opts.kernel = plan.kernel;
      opts.stream = ctx.stream();
      row.launch = describe_quantized_matmul(x, wq(0), sc(0), bi(0), plan.transpose, plan.group_size, plan.bits, opts);
      progress.step(case_name(shape, "qmm", m));
      row.us = summarize(ctx.time_graph(
          calls,
          [&](int i) {
            quantized_matmul_into(x, wq(i), sc(i), bi(i), out, plan.transpose, plan.group_size, plan.bits, opts);
          },
          plan.budget_ms, plan.min_samples));
      if (plan.dense) {
        progress.step(case_name(shape, "dense", m));
        row.dense_us = summarize(ctx.time_graph(
            dense_calls,
            [&](int i) {
              ctx.enqueue_gemm(plan.dtype, m, shape.n, shape.k, x_buf, dense_w + (i % sr.dense_copies) * dense_bytes,
                               out_buf);
            },
            plan.budget_ms, plan.min_samples));
      }
      sr.rows.push_back(std::move(row));
    }
    ctx.free_all();
    report.shapes.push_back(std::move(sr));
  }
}
#endif

}  // namespace

Report run_bench(const BenchPlan& plan, const std::string& command, bool quiet) {
  Report report;
  report.plan = plan;
  report.command = command;
  report.created = now_utc();
  report.build = build_info();
  report.device = device_info(plan.device);
  if (plan.device.type == DeviceType::cuda) {
    report.device_type = "cuda";
    report.method = "cuda-graph";
#ifdef QMM_HAVE_CUDA
    run_cuda(plan, report, quiet);
#else
    throw std::runtime_error("[bench] this build of qmm has no CUDA backend");
#endif
  } else {
    report.device_type = "cpu";
    report.method = "wall-clock";
    run_cpu(plan, report, quiet);
  }
  return report;
}

}  // namespace qmm::bench
