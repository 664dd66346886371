// A persistent pool of worker threads for the CPU production path. Threads are started once
// (size: QMM_NUM_THREADS or std::thread::hardware_concurrency) so a call costs a wake-up, not a
// thread creation; threads spin for a few tens of microseconds before they block, so calls that
// come back to back (a decoder's linear layers) do not pay the futex round trip either.
#pragma once

#include <cstdint>
#include <functional>

namespace qmm::cpu {

/// Number of workers (including the calling thread).
int num_threads();

/// Calls fn(begin, end) over [0, n) split into contiguous chunks (about 8 per worker, handed out
/// in order to whichever thread is free) and waits. Chunks are multiples of `grain` (except the
/// last); fn may be called several times on one thread. Runs inline when n is small or the pool
/// has one thread. Exceptions thrown by fn are rethrown on the calling thread.
void parallel_for(std::int64_t n, std::int64_t grain, const std::function<void(std::int64_t, std::int64_t)>& fn);

}  // namespace qmm::cpu
