// The performance targets of issue 3 ("CUDA backend ... flat cost from M=1 to 16"), checked on a
// bench report. Kept apart from the measuring so the rules are easy to read and to change.
#pragma once

#include <vector>

#include "tools/qmm/bench_report.h"

namespace qmm::bench {

/// Whether the run is the configuration the targets were set for (CUDA, 4-bit, group 64, fp16,
/// transpose=true). Other runs still get the checks, marked as for information.
bool targets_apply(const Report& report);

/// One check per (target, shape) that the report has the data for:
///  - probe_ratio: t / read probe <= 1.10 (M 1..8) and 1.20 (M 9..16) on large layers
///    (K*N >= 40M: 5120x13824), <= 1.20 on medium ones (>= 10M: 5120x5120), <= 1.5 on small ones;
///  - flat_16: t(16)/t(1) <= 1.20;  flat_32: t(32)/t(1) <= 1.6;
///  - no_step: t(M+1)/t(M) <= 1.15 for every measured pair in 1..64;
///  - dense: never slower than the dense equivalent for M <= 64;
///  - peers: faster than every peer at every M in 1..16 the peers measured (the detail names the
///    peers of the merged file that did not run).
std::vector<TargetCheck> check_targets(const Report& report);

}  // namespace qmm::bench
