// Placeholder entry until `qmm bench` lands (issue 4): prints the version and exits.
#include <cstdio>

#include "qmm/qmm.h"

int main() {
  std::printf("qmm %s (cuda: %s)\n", QMM_VERSION_STRING, qmm::cuda_available() ? "yes" : "no");
  return 0;
}
