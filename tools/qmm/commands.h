// Subcommands of the qmm tool. Each lives in its own file and registers itself on the app.
#pragma once

#include <CLI/CLI.hpp>

namespace qmm::cli {

void add_info_command(CLI::App& app);   // tools/qmm/info_command.cpp
void add_bench_command(CLI::App& app);  // tools/qmm/bench_command.cpp
void add_model_command(CLI::App& app);  // tools/qmm/model_command.cpp

}  // namespace qmm::cli
