// Runs a validated bench plan: the measuring half of `qmm bench`.
#pragma once

#include <string>

#include "tools/qmm/bench_options.h"
#include "tools/qmm/bench_report.h"

namespace qmm::bench {

/// Measures every (shape, M) of the plan with the method of DESIGN.md §5 (rotated cold weights,
/// warm-up, CUDA-graph replays timed with events on CUDA, wall clock per call on the CPU, median
/// with min and max, a fixed time budget per case), plus the read probe and the dense
/// equivalent. Progress goes to stderr unless `quiet`. Derived fields are not filled here.
Report run_bench(const BenchPlan& plan, const std::string& command, bool quiet);

}  // namespace qmm::bench
