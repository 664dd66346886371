#include "src/cpu/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define QMM_CPU_RELAX() _mm_pause()
#else
#define QMM_CPU_RELAX() std::this_thread::yield()
#endif

namespace qmm::cpu {
namespace {

/// How long a thread spins before it blocks: a worker waiting for the next parallel region, and
/// the caller waiting for the workers to finish. Calls come back to back in a decoder (one per
/// linear layer, tens of microseconds to milliseconds each), so a short spin turns the wake-up
/// (a futex round trip, ~5 us) into a cache-line handoff; past it, the threads sleep and leave
/// the cores to others.
constexpr std::chrono::microseconds kSpin{50};

class Pool {
 public:
  explicit Pool(int n) : size_(n) {
    for (int i = 1; i < n; ++i) workers_.emplace_back([this, i] { loop(i); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_.store(true);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  int size() const { return size_; }

  void run(const std::function<void(int)>& task) {
    std::lock_guard<std::mutex> call_lock(call_mu_);  // one parallel region at a time
    task_ = &task;
    error_ = nullptr;
    pending_.store(size_ - 1, std::memory_order_relaxed);
    {
      // Under the mutex, so a worker that is about to block sees either the new generation or
      // the notification.
      std::lock_guard<std::mutex> lock(mu_);
      generation_.fetch_add(1, std::memory_order_release);
    }
    if (sleepers_.load() > 0) cv_.notify_all();
    run_one(0);
    if (!spin_until([this] { return pending_.load(std::memory_order_acquire) == 0; })) {
      std::unique_lock<std::mutex> lock(mu_);
      done_cv_.wait(lock, [this] { return pending_.load(std::memory_order_acquire) == 0; });
    }
    task_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  template <typename Ready>
  static bool spin_until(Ready ready) {
    const auto deadline = std::chrono::steady_clock::now() + kSpin;
    for (int i = 1;; ++i) {
      if (ready()) return true;
      QMM_CPU_RELAX();
      if (i % 64 == 0 && std::chrono::steady_clock::now() > deadline) return ready();
    }
  }

  void run_one(int index) {
    try {
      (*task_)(index);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      if (!error_) error_ = std::current_exception();
    }
  }

  void loop(int index) {
    std::uint64_t seen = 0;
    for (;;) {
      auto fresh = [&] { return stop_.load() || generation_.load(std::memory_order_acquire) != seen; };
      if (!spin_until(fresh)) {
        std::unique_lock<std::mutex> lock(mu_);
        ++sleepers_;
        cv_.wait(lock, fresh);
        --sleepers_;
      }
      if (stop_.load()) return;
      seen = generation_.load(std::memory_order_acquire);
      run_one(index);
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lock(mu_);
        done_cv_.notify_one();
      }
    }
  }

  int size_;
  std::vector<std::thread> workers_;
  std::mutex call_mu_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable done_cv_;
  const std::function<void(int)>* task_ = nullptr;
  std::exception_ptr error_;
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  // Written by the caller and polled by spinning workers, or decremented by every worker: each
  // on its own cache line.
  alignas(64) std::atomic<std::uint64_t> generation_{0};
  alignas(64) std::atomic<int> pending_{0};
};

int configured_threads() {
  if (const char* env = std::getenv("QMM_NUM_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

Pool& pool() {
  static Pool p(configured_threads());
  return p;
}

}  // namespace

int num_threads() { return pool().size(); }

void parallel_for(std::int64_t n, std::int64_t grain, const std::function<void(std::int64_t, std::int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<std::int64_t>(1, grain);
  const std::int64_t grains = (n + grain - 1) / grain;
  const int workers = static_cast<int>(std::min<std::int64_t>(num_threads(), grains));
  if (workers <= 1) {
    fn(0, n);
    return;
  }
  // Contiguous chunks of whole grains, about 8 per worker, handed out in order from a shared
  // counter: each thread streams long runs, and a thread the OS preempts (cores shared with
  // other work) does not hold up the call, because the others take its remaining chunks.
  const std::int64_t chunks = std::min<std::int64_t>(grains, 8 * static_cast<std::int64_t>(workers));
  alignas(64) std::atomic<std::int64_t> next{0};
  pool().run([&](int w) {
    if (w >= workers) return;
    for (std::int64_t c = next.fetch_add(1, std::memory_order_relaxed); c < chunks;
         c = next.fetch_add(1, std::memory_order_relaxed)) {
      const std::int64_t g0 = c * (grains / chunks) + std::min(c, grains % chunks);
      const std::int64_t g1 = g0 + grains / chunks + (c < grains % chunks ? 1 : 0);
      fn(g0 * grain, std::min(n, g1 * grain));
    }
  });
}

}  // namespace qmm::cpu
