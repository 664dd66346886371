// cp.async (sm_80+) and shared-memory address helpers shared by the kernel families that stage
// global data in shared memory (qmv_staged_kernels.cu, qmv_tma_kernels.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace qmm::cuda {

/// The 32-bit shared-memory address of a generic pointer into shared memory.
__device__ __forceinline__ std::uint32_t shared_address(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

/// Copies Bytes (4, 8 or 16) through L1 (.ca).
template <int Bytes>
__device__ __forceinline__ void cp_async_ca(std::uint32_t dst, const void* src) {
  static_assert(Bytes == 4 || Bytes == 8 || Bytes == 16, "cp.async copies 4, 8 or 16 bytes");
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(dst), "l"(src), "n"(Bytes) : "memory");
}
/// Copies src_bytes (<= Bytes) through L1 and zero-fills the rest (0: all zeros, src unread).
template <int Bytes>
__device__ __forceinline__ void cp_async_ca(std::uint32_t dst, const void* src, int src_bytes) {
  static_assert(Bytes == 4 || Bytes == 8 || Bytes == 16, "cp.async copies 4, 8 or 16 bytes");
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(dst), "l"(src), "n"(Bytes), "r"(src_bytes)
               : "memory");
}
/// Copies src_bytes (<= 16) of a 16-byte unit past L1 (.cg: data read once) and zero-fills the rest.
__device__ __forceinline__ void cp_async_cg16(std::uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
/// Waits until at most Pending committed groups of this thread's copies are still in flight.
template <int Pending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending) : "memory");
}
/// Makes `bar` (an mbarrier in shared memory) receive one arrival once every cp.async this thread
/// has issued so far has landed; .noinc: that arrival is one of those the barrier was initialised
/// to expect.
__device__ __forceinline__ void cp_async_arrive_noinc(std::uint32_t bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
/// Waits for all of this thread's copies, committed or not.
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

__device__ __forceinline__ void st_shared_u32(std::uint32_t dst, std::uint32_t v) {
  asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(dst), "r"(v) : "memory");
}

}  // namespace qmm::cuda
