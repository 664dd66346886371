// `qmm model` (scaffolding: the owner of this subcommand replaces this file).
#include <stdexcept>

#include "tools/qmm/commands.h"

namespace qmm::cli {

void add_model_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("model", "not built yet");
  cmd->callback([] { throw std::runtime_error("qmm model is not built yet"); });
}

}  // namespace qmm::cli
