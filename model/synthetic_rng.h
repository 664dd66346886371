// The counter-based random numbers of synthetic checkpoints. Header-only and host/device: a
// weight generated on the GPU has exactly the bits of the same weight generated on the CPU, so
// an in-memory synthetic model on either device equals the checkpoint --make-synthetic writes.
#pragma once

#include <cstdint>
#include <string>

#if defined(__CUDACC__)
#define QMM_MODEL_HD __host__ __device__ __forceinline__
#else
#define QMM_MODEL_HD inline
#endif

namespace qmm::model {

QMM_MODEL_HD std::uint64_t mix64(std::uint64_t x) {  // splitmix64's finalizer
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

/// Uniform in [-1, 1) with 24 random bits; exact in float (no rounding anywhere), so host and
/// device agree bit for bit.
QMM_MODEL_HD float synthetic_uniform(std::uint64_t stream, std::uint64_t index) {
  const std::uint64_t h = mix64(stream ^ mix64(index + 0x9e3779b97f4a7c15ull));
  const std::uint32_t u = static_cast<std::uint32_t>(h >> 40);       // 24 bits
  return static_cast<float>(static_cast<std::int32_t>(u) - (1 << 23)) * (1.0f / 8388608.0f);
}

/// The stream of one tensor: a hash of its name and the seed.
inline std::uint64_t synthetic_stream(const std::string& name, std::uint64_t seed) {
  std::uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a
  for (unsigned char c : name) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return mix64(h ^ mix64(seed));
}

}  // namespace qmm::model
