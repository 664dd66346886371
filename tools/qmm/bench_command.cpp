// `qmm bench` (scaffolding: the owner of this subcommand replaces this file).
#include <stdexcept>

#include "tools/qmm/commands.h"

namespace qmm::cli {

void add_bench_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("bench", "not built yet");
  cmd->callback([] { throw std::runtime_error("qmm bench is not built yet"); });
}

}  // namespace qmm::cli
