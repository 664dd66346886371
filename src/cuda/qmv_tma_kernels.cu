// qmv_tma: the small-M tensor-core kernel family fed by the tensor memory accelerator (sm_90).
// transpose=true (W is N x K), fp16/bf16 activations with scales of the same dtype, any bits,
// K a multiple of 256, up to 16 rows of x per pass.
//
// Why it was built (bench/NOTES.md, v5/v6): qmv_mma keeps only the next segment's loads in
// flight, in registers, and ncu showed it waiting on global memory. Here one producer warp per
// block moves whole tiles with TMA into a ring of shared-memory stages, up to kTmaMaxStages items
// ahead, at no instruction cost to the computing warps. Measured (v7): slower than qmv_mma on the
// large H100 shapes — both are compute bound — so dispatch never picks it; it is reached by name.
//
// Block: warps 0-3 compute exactly as qmv_mma does (same k mapping, same SegmentLoad and
// compute_segment from qmv_mma_segment.cuh, so the products are bit-identical to qmv_mma's for
// the same split), reading their chunks and scales from shared memory; warp 4 is the producer.
// Item: (128-row block, 256-value K slice) = one stage: one TMA box of 128 rows x 256 values
// (rows past N are zero-filled by the TMA), plus the rows' scales and biases for the slice, which
// the producer's lanes copy with cp.async (rows past N copy row N-1: finite values whose
// outputs are never stored). Stage handoff: a "full" mbarrier per stage (the TMA bytes as a
// transaction count, plus one arrival per producer lane once its scale copies have landed) and
// an "empty" mbarrier (one arrival per consumer thread).
//
// Work split: stream-K over items (stream_k.cuh, items of 256 values), one block count for
// M = 1..16 (batch invariance); partial row blocks are reduced by the last arriving block in
// block order.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "src/cuda/check.h"
#include "src/cuda/cp_async.cuh"
#include "src/cuda/dynamic_smem.h"
#include "src/cuda/kernels.h"
#include "src/cuda/mma_fragments.cuh"
#include "src/cuda/qmv_mma_segment.cuh"
#include "src/cuda/static_dispatch.cuh"
#include "src/cuda/stream_k.cuh"
#include "src/format/affine.h"

namespace qmm::detail {
namespace {

namespace mma = qmm::cuda::mma;
namespace sk = qmm::cuda::stream_k;
using qmm::cuda::cp_async_arrive_noinc;
using qmm::cuda::cp_async_ca;
using qmm::cuda::cp_async_wait_all;
using qmm::cuda::shared_address;
using cuda_dispatch::kMmaRowsPerBlock;
using cuda_dispatch::kMmaSegment;
using cuda_dispatch::kMmaThreads;
using cuda_dispatch::kTmaItemValues;
using cuda_dispatch::kTmaMaxStages;
using cuda_dispatch::kTmaThreads;


/// A stage's weights: one TMA box of 128 rows x kTmaItemValues values (128 bytes per row at 4
/// bits), each row's bytes of the stage one contiguous request.
template <int Bits>
struct StageWeights {
  static constexpr int kSegments = kTmaItemValues / kMmaSegment;  // 128-value segments per stage
  static constexpr int kRowBytes = kTmaItemValues * Bits / 8;
  static constexpr int kBoxBytes = kMmaRowsPerBlock * kRowBytes;  // also where the scales start
};

/// The rest of a stage, which depends on the group size (computed on the host, passed to the
/// kernel): after the weights, [128 rows][G] scales then [128 rows][G] biases, G = groups per stage.
struct StageGeometry {
  int groups;     // G = kTmaItemValues / group_size
  int biases_at;  // byte offset of the biases in a stage
  int stage_bytes;
  int stages;
};

StageGeometry stage_geometry(int bits, int group_size) {
  StageGeometry g{};
  g.groups = kTmaItemValues / group_size;
  g.biases_at = kMmaRowsPerBlock * kTmaItemValues * bits / 8 + kMmaRowsPerBlock * g.groups * 2;
  g.stage_bytes = cuda_dispatch::tma_stage_bytes(bits, group_size);
  g.stages = cuda_dispatch::tma_pipeline_stages(bits, group_size);
  return g;
}

// ---- PTX wrappers (sm_90; the sm_80 build compiles the kernel to a trap) ----------------------
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
constexpr int kConsumerWarps = kMmaThreads / 32;

__device__ __forceinline__ void mbar_init(std::uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}

/// Blocks until the phase of `bar` with parity `parity` has completed.
__device__ __forceinline__ void mbar_wait(std::uint32_t bar, std::uint32_t parity) {
  std::uint32_t done = 0;
  do {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
}

__device__ __forceinline__ void mbar_arrive(std::uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}

__device__ __forceinline__ void mbar_arrive_expect_tx(std::uint32_t bar, std::uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}

/// 2-D TMA tile load into shared memory; completion is counted in bytes on `bar`.
__device__ __forceinline__ void tma_load_2d(std::uint32_t dst, const CUtensorMap* map, int x, int y,
                                            std::uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
          dst),
      "l"(reinterpret_cast<std::uint64_t>(map)), "r"(x), "r"(y), "r"(bar)
      : "memory");
}

/// A chunk (32 values, Bits words) from shared memory; the address is 4*Bits-byte aligned.
template <int Bits>
__device__ __forceinline__ mma::Chunk<Bits> load_chunk_shared(const unsigned char* p) {
  mma::Chunk<Bits> c;
  if constexpr (Bits % 4 == 0) {
#pragma unroll
    for (int i = 0; i < Bits / 4; ++i) {
      const uint4 v = reinterpret_cast<const uint4*>(p)[i];
      c.w[4 * i] = v.x, c.w[4 * i + 1] = v.y, c.w[4 * i + 2] = v.z, c.w[4 * i + 3] = v.w;
    }
  } else if constexpr (Bits % 2 == 0) {
#pragma unroll
    for (int i = 0; i < Bits / 2; ++i) {
      const uint2 v = reinterpret_cast<const uint2*>(p)[i];
      c.w[2 * i] = v.x, c.w[2 * i + 1] = v.y;
    }
  } else {
#pragma unroll
    for (int i = 0; i < Bits; ++i) c.w[i] = reinterpret_cast<const std::uint32_t*>(p)[i];
  }
  return c;
}

// ---- the kernel ------------------------------------------------------------------------------

/// Producer (warp 4): for each item of this block's run, wait until its stage is free, then
/// start the weight box (lane 0) and the scale and bias copies (all lanes).
template <typename T, int Bits>
__device__ __forceinline__ void produce(const sk::Params& p, const CUtensorMap* map, const StageGeometry& geo,
                                        unsigned char* stages, std::uint32_t full0, std::uint32_t empty0,
                                        std::int64_t start, std::int64_t end) {
  const int lane = threadIdx.x & 31;
  const T* scales = static_cast<const T*>(p.scales);
  const T* biases = static_cast<const T*>(p.biases);
  int stage = 0;
  std::uint32_t round_parity = 0;
  for (std::int64_t it = start; it < end; ++it) {
    const int rb = static_cast<int>(it / p.segments);
    const int slice = static_cast<int>(it - static_cast<std::int64_t>(rb) * p.segments);
    const std::uint32_t full = full0 + 8 * stage;
    // A fresh barrier counts its (virtual) previous phase as complete: round 0 passes at once.
    mbar_wait(empty0 + 8 * stage, round_parity ^ 1);
    const std::uint32_t dst = shared_address(stages + static_cast<std::size_t>(stage) * geo.stage_bytes);
    if (lane == 0) {
      mbar_arrive_expect_tx(full, StageWeights<Bits>::kBoxBytes);
      tma_load_2d(dst, map, slice * (StageWeights<Bits>::kRowBytes / 4), rb * kMmaRowsPerBlock, full);
    }
    const int scale_row_bytes = geo.groups * static_cast<int>(sizeof(T));  // 16, 8 or 4 (groups 32, 64, 128)
#pragma unroll
    for (int i = 0; i < kMmaRowsPerBlock / 32; ++i) {
      const int r = lane + 32 * i;
      const int n = min(rb * kMmaRowsPerBlock + r, p.N - 1);
      const std::int64_t at = static_cast<std::int64_t>(n) * p.groups_per_row + static_cast<std::int64_t>(slice) * geo.groups;
      const std::uint32_t s_dst = dst + StageWeights<Bits>::kBoxBytes + r * scale_row_bytes;
      const std::uint32_t b_dst = dst + geo.biases_at + r * scale_row_bytes;
      if (scale_row_bytes == 16) {
        cp_async_ca<16>(s_dst, scales + at), cp_async_ca<16>(b_dst, biases + at);
      } else if (scale_row_bytes == 8) {
        cp_async_ca<8>(s_dst, scales + at), cp_async_ca<8>(b_dst, biases + at);
      } else {
        cp_async_ca<4>(s_dst, scales + at), cp_async_ca<4>(b_dst, biases + at);
      }
    }
    // Each lane's arrival on the stage's full barrier comes from the copy hardware once its copies
    // have landed, so the consumers' acquire of that barrier orders their reads after the copies.
    // The lanes used to arrive themselves, one stage late, after cp.async.wait_group; racecheck
    // reported those copies racing with the consumers' scale and bias reads (bench/NOTES.md v18).
    cp_async_arrive_noinc(full);
    if (++stage == geo.stages) stage = 0, round_parity ^= 1;
  }
  // Every copy has landed before the producer's threads exit.
  cp_async_wait_all();
}
#endif

template <typename T, int Bits, int TokenTiles>
__global__ void __launch_bounds__(kTmaThreads, cuda_dispatch::kTmaBlocksPerSm)
    qmv_tma_kernel(const sk::Params p, const __grid_constant__ CUtensorMap map, const StageGeometry geo) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ __align__(128) unsigned char stages[];
  __shared__ __align__(8) std::uint64_t full_bars[kTmaMaxStages];
  __shared__ __align__(8) std::uint64_t empty_bars[kTmaMaxStages];
  __shared__ int s_is_last;

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const std::uint32_t full0 = shared_address(&full_bars[0]);
  const std::uint32_t empty0 = shared_address(&empty_bars[0]);
  if (threadIdx.x == 0) {
    for (int s = 0; s < geo.stages; ++s) {
      mbar_init(full0 + 8 * s, 1 + 32);  // lane 0's expect_tx arrival + one per producer lane
      mbar_init(empty0 + 8 * s, kMmaThreads);  // one arrival per consumer thread
    }
    // Make the initialised barriers visible to the async proxy (TMA) as well.
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  const std::int64_t items = static_cast<std::int64_t>(p.row_blocks) * p.segments;
  const std::int64_t start = sk::item_start(items, p.blocks, blockIdx.x);
  const std::int64_t end = sk::item_start(items, p.blocks, blockIdx.x + 1);

  if (warp == kConsumerWarps) {
    produce<T, Bits>(p, &map, geo, stages, full0, empty0, start, end);
    return;
  }

  const int row_in_8 = lane >> 2;
  const int c = lane & 3;
  int stage = 0;
  std::uint32_t round_parity = 0;
  for (std::int64_t cur = start; cur < end;) {
    const int rb = static_cast<int>(cur / p.segments);
    const int s0 = static_cast<int>(cur % p.segments);
    const int s1 = static_cast<int>(std::min<std::int64_t>(p.segments, s0 + (end - cur)));

    float acc[2][TokenTiles][4];
    sk::zero(acc);
    for (int slice = s0; slice < s1; ++slice) {
      mbar_wait(full0 + 8 * stage, round_parity);
      const unsigned char* st = stages + static_cast<std::size_t>(stage) * geo.stage_bytes;
      const T* s_smem = reinterpret_cast<const T*>(st + StageWeights<Bits>::kBoxBytes);
      const T* b_smem = reinterpret_cast<const T*>(st + geo.biases_at);
#pragma unroll
      for (int half = 0; half < StageWeights<Bits>::kSegments; ++half) {
        mma::SegmentLoad<T, Bits> L;
        const int g = (half * kMmaSegment + 32 * c) >> p.group_shift;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int r = warp * 32 + i * 8 + row_in_8;
          L.chunk[i] =
              load_chunk_shared<Bits>(st + r * StageWeights<Bits>::kRowBytes + half * (16 * Bits) + c * (4 * Bits));
          L.s[i] = s_smem[r * geo.groups + g];
          L.b[i] = b_smem[r * geo.groups + g];
        }
        mma::compute_segment<T, Bits, TokenTiles>(acc, L, p, slice * StageWeights<Bits>::kSegments + half, c,
                                                  row_in_8);
      }
      // Each thread's reads of this stage are done (their values are in registers and used), and
      // its own arrival releases them to the producer. With one arrival per warp after __syncwarp,
      // racecheck reported the producer's next copies into the stage racing with these reads.
      mbar_arrive(empty0 + 8 * stage);
      if (++stage == geo.stages) stage = 0, round_parity ^= 1;
    }
    sk::finish_row_block<T, TokenTiles, sk::SyncConsumers>(acc, p, rb, cur, cur + (s1 - s0) - 1, start, &s_is_last);
    cur += s1 - s0;
  }
#else
  // Dispatch sends only sm_90 devices here (cuda_dispatch::tma_supported).
  __trap();
#endif
}

// ---- host side -------------------------------------------------------------------------------

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found{};
    QMM_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &found));
    if (found != cudaDriverEntryPointSuccess || f == nullptr) {
      throw std::runtime_error("[cuda] cuTensorMapEncodeTiled is not available from the driver");
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

/// The weights as a 2-D tensor of 32-bit words (N rows of K*bits/32 words); one box is 128 rows
/// x one 128-value segment. Rows past N read as zeros.
CUtensorMap weight_map(const MatmulProblem& p) {
  CUtensorMap map;
  const cuuint64_t words_per_row = static_cast<cuuint64_t>(format::packed_words(p.K, p.w.bits));
  const cuuint64_t dims[2] = {words_per_row, static_cast<cuuint64_t>(p.N)};
  const cuuint64_t strides[1] = {words_per_row * 4};
  const cuuint32_t box[2] = {static_cast<cuuint32_t>(kTmaItemValues * p.w.bits / 32),
                             static_cast<cuuint32_t>(kMmaRowsPerBlock)};
  const cuuint32_t element_strides[2] = {1, 1};
  const CUresult r = tensor_map_encoder()(&map, CU_TENSOR_MAP_DATA_TYPE_UINT32, 2, const_cast<std::uint32_t*>(p.w.w_q),
                                          dims, strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                          CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                          CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    throw std::runtime_error("[cuda] cuTensorMapEncodeTiled failed for the qmv_tma weight map (CUresult " +
                             std::to_string(static_cast<int>(r)) + ")");
  }
  return map;
}

using KernelFn = void (*)(sk::Params, CUtensorMap, StageGeometry);

/// The instantiation for this problem's activation dtype and bits and the configuration's token
/// tiles, opted in to its shared memory (launch and occupancy query share it).
KernelFn kernel_for(const MatmulProblem& p, int token_tiles) {
  const KernelFn kernel = qmm::cuda::with_16bit_dtype(p.x_dtype, [&](auto dtype) {
    using T = typename decltype(dtype)::type;
    return qmm::cuda::with_token_tiles<1, 2>(token_tiles, [&](auto tiles) {
      return qmm::cuda::with_bits(p.w.bits, [&](auto bits) -> KernelFn {
        return &qmv_tma_kernel<T, decltype(bits)::value, decltype(tiles)::value>;
      });
    });
  });
  allow_dynamic_smem(reinterpret_cast<const void*>(kernel), cuda_dispatch::kTmaStageBudgetBytes);
  return kernel;
}

}  // namespace

int qmv_tma_blocks_per_sm(const MatmulProblem& p, const cuda_dispatch::KernelConfig& config) {
  const StageGeometry geo = stage_geometry(p.w.bits, p.w.group_size);
  int blocks = 0;
  QMM_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &blocks, reinterpret_cast<const void*>(kernel_for(p, config.token_tiles)), kTmaThreads,
      static_cast<std::size_t>(geo.stages) * geo.stage_bytes));
  return blocks;
}

void launch_qmv_tma(const MatmulProblem& p, const cuda_dispatch::KernelConfig& config, cudaStream_t stream) {
  const KernelFn kernel = kernel_for(p, config.token_tiles);
  const StageGeometry geo = stage_geometry(p.w.bits, p.w.group_size);
  const auto smem = static_cast<std::size_t>(geo.stages) * geo.stage_bytes;
  sk::Params q = sk::make_params(p, config.blocks);
  q.segments = static_cast<int>(p.K / kTmaItemValues);  // items per row block
  sk::bind_workspace(q, stream, p, config);
  const CUtensorMap map = weight_map(p);
  sk::for_each_pass(q, p, 8 * config.token_tiles, [&](const sk::Params& pass) {
    kernel<<<config.blocks, kTmaThreads, smem, stream>>>(pass, map, geo);
    QMM_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace qmm::detail
