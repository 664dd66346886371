#include "qmm/dtype.h"

#include <cstring>
#include <stdexcept>

#include "qmm/ops.h"

namespace qmm {

std::size_t itemsize(Dtype dtype) {
  switch (dtype) {
    case Dtype::float32:
    case Dtype::uint32:
      return 4;
    case Dtype::float16:
    case Dtype::bfloat16:
      return 2;
  }
  return 0;
}

const char* dtype_name(Dtype dtype) {
  switch (dtype) {
    case Dtype::float32:
      return "float32";
    case Dtype::float16:
      return "float16";
    case Dtype::bfloat16:
      return "bfloat16";
    case Dtype::uint32:
      return "uint32";
  }
  return "?";
}

Dtype parse_dtype(const std::string& name) {
  if (name == "float32" || name == "fp32" || name == "f32") return Dtype::float32;
  if (name == "float16" || name == "fp16" || name == "f16" || name == "half") return Dtype::float16;
  if (name == "bfloat16" || name == "bf16") return Dtype::bfloat16;
  if (name == "uint32" || name == "u32") return Dtype::uint32;
  throw Error("unknown dtype '" + name + "' (expected float32, float16, bfloat16 or uint32)");
}

bool is_floating(Dtype dtype) { return dtype != Dtype::uint32; }

Dtype promote_types(Dtype a, Dtype b) {
  if (a == b) return a;
  // Any mix of distinct float types (fp16 with bf16, or either with fp32) is float32 in MLX.
  return Dtype::float32;
}

std::string device_name(const Device& device) {
  if (device.type == DeviceType::cpu) return "cpu";
  return "cuda:" + std::to_string(device.index);
}

namespace {
std::uint32_t float_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
float bits_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
}  // namespace

std::uint16_t float_to_float16_bits(float value) {
  const std::uint32_t x = float_bits(value);
  const std::uint32_t sign = (x >> 16) & 0x8000u;
  const std::uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u) {  // inf or NaN
    return static_cast<std::uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u));
  }
  if (abs >= 0x477ff000u) {  // rounds to >= 65520: overflow to inf
    return static_cast<std::uint16_t>(sign | 0x7c00u);
  }
  if (abs < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal or zero
    // value = abs_f * 2^24 half-ulps; round to nearest even integer count of 2^-24.
    const float scaled = bits_float(abs) * 16777216.0f;  // exact: power-of-two scaling
    // scaled < 1024: use integer rounding on the float with ties to even.
    float r = scaled;
    const float floor_r = static_cast<float>(static_cast<std::uint32_t>(r));
    const float frac = r - floor_r;
    std::uint32_t m = static_cast<std::uint32_t>(floor_r);
    if (frac > 0.5f || (frac == 0.5f && (m & 1u))) ++m;
    return static_cast<std::uint16_t>(sign | m);  // m == 1024 becomes the smallest normal
  }
  // Normal: rebias exponent, round mantissa from 23 to 10 bits (ties to even).
  const std::uint32_t exp_mant = abs - 0x38000000u;  // exponent bias 127 -> 15
  const std::uint32_t lsb = (exp_mant >> 13) & 1u;
  const std::uint32_t rounded = exp_mant + 0xfffu + lsb;
  return static_cast<std::uint16_t>(sign | (rounded >> 13));
}

float float16_bits_to_float(std::uint16_t bits) {
  const std::uint32_t sign = (static_cast<std::uint32_t>(bits) & 0x8000u) << 16;
  const std::uint32_t exp = (bits >> 10) & 0x1fu;
  const std::uint32_t mant = bits & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24
    const float v = static_cast<float>(mant) * (1.0f / 16777216.0f);
    return sign ? -v : v;
  }
  if (exp == 31) return bits_float(sign | 0x7f800000u | (mant << 13));
  return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

std::uint16_t float_to_bfloat16_bits(float value) {
  const std::uint32_t x = float_bits(value);
  if ((x & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep it a quiet NaN
    return static_cast<std::uint16_t>((x >> 16) | 0x40u);
  }
  const std::uint32_t lsb = (x >> 16) & 1u;
  return static_cast<std::uint16_t>((x + 0x7fffu + lsb) >> 16);
}

float bfloat16_bits_to_float(std::uint16_t bits) {
  return bits_float(static_cast<std::uint32_t>(bits) << 16);
}

}  // namespace qmm
