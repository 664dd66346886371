// Element types, devices and streams of qmm's public API. No CUDA headers here: a CUDA stream
// travels as an opaque pointer so that CPU-only users never need the CUDA toolkit.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace qmm {

enum class Dtype : std::uint8_t { float32, float16, bfloat16, uint32 };

/// Bytes per element.
std::size_t itemsize(Dtype dtype);
/// "float32", "float16", "bfloat16", "uint32" (MLX's spelling).
const char* dtype_name(Dtype dtype);
/// Inverse of dtype_name; also accepts "fp32", "fp16", "bf16", "f32", "f16". Throws
/// std::invalid_argument for anything else.
Dtype parse_dtype(const std::string& name);
/// True for float32, float16 and bfloat16.
bool is_floating(Dtype dtype);
/// MLX's type promotion restricted to qmm's float types: float32 wins; float16 with bfloat16
/// gives float32 (as in MLX).
Dtype promote_types(Dtype a, Dtype b);

enum class DeviceType : std::uint8_t { cpu, cuda };

struct Device {
  DeviceType type = DeviceType::cpu;
  int index = 0;

  static Device cpu() { return {DeviceType::cpu, 0}; }
  static Device cuda(int index = 0) { return {DeviceType::cuda, index}; }
  friend bool operator==(const Device& a, const Device& b) {
    return a.type == b.type && (a.type == DeviceType::cpu || a.index == b.index);
  }
  friend bool operator!=(const Device& a, const Device& b) { return !(a == b); }
};

/// "cpu" or "cuda:0".
std::string device_name(const Device& device);

/// A CUDA stream (cudaStream_t) as an opaque handle; nullptr means the legacy default stream.
/// CPU calls ignore it.
struct Stream {
  void* handle = nullptr;
};

// Scalar conversions used by the format (round to nearest even, as MLX and CUDA do). Host-side
// helpers for users who fill fp16/bf16 buffers themselves.
std::uint16_t float_to_float16_bits(float value);
float float16_bits_to_float(std::uint16_t bits);
std::uint16_t float_to_bfloat16_bits(float value);
float bfloat16_bits_to_float(std::uint16_t bits);

}  // namespace qmm
