#include "tools/qmm/bench_cpu.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>

namespace qmm::bench::cpu {

Pool::Pool(int threads) {
  int n = threads > 0 ? threads : static_cast<int>(std::thread::hardware_concurrency());
  n = std::max(1, n);
  for (int i = 1; i < n; ++i) workers_.emplace_back([this, i] { loop(i); });
}

Pool::~Pool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  start_.notify_all();
  for (auto& t : workers_) t.join();
}

void Pool::loop(int index) {
  std::uint64_t seen = 0;
  for (;;) {
    const std::function<void(int, int)>* fn;
    {
      std::unique_lock<std::mutex> lock(mu_);
      start_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      fn = fn_;
    }
    (*fn)(index, size());
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (--pending_ == 0) done_.notify_one();
    }
  }
}

void Pool::run(const std::function<void(int, int)>& fn) {
  if (workers_.empty()) {
    fn(0, 1);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    fn_ = &fn;
    pending_ = static_cast<int>(workers_.size());
    ++generation_;
  }
  start_.notify_all();
  fn(0, size());
  std::unique_lock<std::mutex> lock(mu_);
  done_.wait(lock, [&] { return pending_ == 0; });
}

namespace {

std::uint64_t read_range(const unsigned char* p, std::size_t bytes) {
  // Four independent 64-bit lanes: the loop vectorises to 16/32-byte loads and keeps several
  // loads in flight.
  std::uint64_t a = 0, b = 0, c = 0, d = 0;
  std::size_t i = 0;
  for (; i + 32 <= bytes; i += 32) {
    std::uint64_t v[4];
    std::memcpy(v, p + i, 32);
    a += v[0];
    b += v[1];
    c += v[2];
    d += v[3];
  }
  for (; i < bytes; ++i) a += p[i];
  return a ^ (b << 1) ^ (c << 2) ^ (d << 3);
}

std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace

std::uint64_t read_all(Pool& pool, const std::vector<Span>& spans) {
  std::size_t total = 0;
  for (const auto& s : spans) total += s.bytes;
  // Small reads are faster on one thread than the cost of waking the pool.
  if (total < (std::size_t{1} << 18)) {
    std::uint64_t h = 0;
    for (const auto& s : spans) h ^= read_range(static_cast<const unsigned char*>(s.data), s.bytes);
    return h;
  }
  std::vector<std::uint64_t> partial(static_cast<std::size_t>(pool.size()) * 8, 0);  // padded against false sharing
  pool.run([&](int t, int nt) {
    std::uint64_t h = 0;
    for (const auto& s : spans) {
      const std::size_t chunk = (s.bytes / nt + 63) & ~std::size_t{63};
      const std::size_t lo = std::min(s.bytes, chunk * t);
      const std::size_t hi = t == nt - 1 ? s.bytes : std::min(s.bytes, lo + chunk);
      h ^= read_range(static_cast<const unsigned char*>(s.data) + lo, hi - lo);
    }
    partial[static_cast<std::size_t>(t) * 8] = h;
  });
  std::uint64_t h = 0;
  for (std::size_t i = 0; i < partial.size(); i += 8) h ^= partial[i];
  return h;
}

void dense_gemm(Pool& pool, const float* x, const float* w, float* out, std::int64_t M, std::int64_t N,
                std::int64_t K) {
  pool.run([&](int t, int nt) {
    const std::int64_t chunk = (N + nt - 1) / nt;
    const std::int64_t n0 = std::min(N, chunk * t), n1 = std::min(N, n0 + chunk);
    for (std::int64_t n = n0; n < n1; ++n) {
      const float* row = w + n * K;
      for (std::int64_t m = 0; m < M; ++m) {
        const float* xr = x + m * K;
        float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        std::int64_t k = 0;
        for (; k + 8 <= K; k += 8) {
          for (int j = 0; j < 8; ++j) acc[j] += xr[k + j] * row[k + j];
        }
        float s = 0;
        for (; k < K; ++k) s += xr[k] * row[k];
        out[m * N + n] = s + ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
      }
    }
  });
}

void fill_random_bytes(void* data, std::size_t bytes, std::uint64_t seed) {
  auto* p = static_cast<unsigned char*>(data);
  std::size_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    const std::uint64_t v = splitmix64(seed * 0x100000001B3ull + i);
    std::memcpy(p + i, &v, 8);
  }
  if (i < bytes) {
    const std::uint64_t v = splitmix64(seed * 0x100000001B3ull + i);
    std::memcpy(p + i, &v, bytes - i);
  }
}

void fill_random_floats(float* data, std::size_t count, std::uint64_t seed, float lo, float hi) {
  for (std::size_t i = 0; i < count; ++i) {
    const std::uint64_t v = splitmix64(seed * 0x100000001B3ull + i);
    const float u = static_cast<float>(v >> 40) / static_cast<float>(1ull << 24);
    data[i] = lo + (hi - lo) * u;
  }
}

double measure_read_bandwidth(Pool& pool, std::size_t bytes, int passes) {
  std::unique_ptr<unsigned char[]> buf(new unsigned char[bytes]);
  fill_random_bytes(buf.get(), bytes, 7);
  std::vector<Span> spans{{buf.get(), bytes}};
  volatile std::uint64_t sink = read_all(pool, spans);  // warm-up: page faults, pool wake-up
  std::vector<double> gbs;
  for (int i = 0; i < passes; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    sink = sink ^ read_all(pool, spans);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    gbs.push_back(static_cast<double>(bytes) / s / 1e9);
  }
  (void)sink;
  std::sort(gbs.begin(), gbs.end());
  return gbs[gbs.size() / 2];
}

}  // namespace qmm::bench::cpu
