// printf-style formatting into a std::string, for the texts of `qmm bench` (report rows, step
// evidence, target lines).
#pragma once

#include <cstdio>
#include <string>

namespace qmm::bench {

/// Up to three numbers, always passed as double (formats use %f/%g/%e conversions only).
inline std::string printf_string(const char* format, double a, double b = 0, double c = 0) {
  char buf[256];
  std::snprintf(buf, sizeof buf, format, a, b, c);
  return buf;
}

}  // namespace qmm::bench
