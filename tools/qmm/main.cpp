// The qmm command-line tool: `qmm info`, `qmm bench`, `qmm model`.
#include <cstdio>
#include <exception>

#include "qmm/qmm.h"
#include "tools/qmm/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"qmm: low-batch quantized matmul in MLX's affine format (version " QMM_VERSION_STRING ")"};
  app.require_subcommand(1);
  qmm::cli::add_info_command(app);
  qmm::cli::add_bench_command(app);
  qmm::cli::add_model_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qmm: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
