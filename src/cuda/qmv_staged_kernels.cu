// qmv_staged: the small-M tensor-core kernel family for 4- and 8-bit weights, transpose=true
// (W is N x K), fp16/bf16 activations with scales of the same dtype.
//
// What it changes against qmv_mma (bench/NOTES.md, v6), which was issue-bound at ~6
// instructions per weight:
// - Weights, scales, biases and x travel by cp.async into a ring of shared-memory stages, several
//   items ahead, so the bytes in flight no longer depend on registers or on the warps' progress.
// - ldmatrix hands each lane one 32-bit word of two rows per 8x8 matrix: exactly the word the
//   k mapping below wants, four words per instruction.
// - The MMA multiplies x by exact integers `offset + q` (mask + magic exponent, no subtraction,
//   no rounding). Per quantization group the fp32 fold
//       out += s * sum(x (offset + q)) + (b - offset s) * sum(x)
//   applies scale and bias; sum(x) comes from one more MMA with an all-ones A operand, which
//   yields it for exactly the tokens each lane's accumulator holds. Every MMA of a group stays
//   inside the group.
//
// The k mapping (m16n8k16: lane (g, c) holds A rows g and g+8 at k slots {2c, 2c+1, 2c+8,
// 2c+9}, and B column g at the same slots). Per 32-value block of a row:
// - 4-bit: lane c owns word c (values 8c..8c+7). Nibbles j and j+4 of a word sit 16 bits apart,
//   so (w >> 4j) & 0x000F000F | magic is the pair (v_j, v_j+4). MMA 1 takes pairs j=0,1 (slots
//   2c.. <- (v0,v4), 2c+8.. <- (v1,v5)), MMA 2 pairs j=2,3; x is byte-permuted the same way.
// - 8-bit: 16-value halves h; lane c owns bytes 4c..4c+3 of half h (values 16h+4c..+3): slots
//   2c.. <- (v0,v1), 2c+8.. <- (v2,v3), x taken as it lies. bf16 cannot hold 128 + q exactly
//   for q >= 128, so there the byte is split into nibbles: (128 + lo) x + (128 + hi) (16 x).
//
// Work split: stream-K over (128-row block, 128-value K segment) items (stream_k.cuh), the same
// split for M = 1..16 (batch invariance).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <type_traits>
#include <utility>

#include "src/cuda/check.h"
#include "src/cuda/cp_async.cuh"
#include "src/cuda/dynamic_smem.h"
#include "src/cuda/kernels.h"
#include "src/cuda/mma_fragments.cuh"
#include "src/cuda/stream_k.cuh"

namespace qmm::detail {
namespace {

namespace mma = qmm::cuda::mma;
namespace sk = qmm::cuda::stream_k;
using qmm::cuda::cp_async_ca;
using qmm::cuda::cp_async_cg16;
using qmm::cuda::cp_async_commit;
using qmm::cuda::cp_async_wait;
using qmm::cuda::shared_address;
using qmm::cuda::st_shared_u32;
using cuda_dispatch::kMmaRowsPerBlock;
using cuda_dispatch::kMmaSegment;
using cuda_dispatch::kMmaThreads;

static_assert(kMmaRowsPerBlock == 128 && kMmaSegment == 128 && kMmaThreads == 128,
              "qmv_staged's tile arithmetic assumes 4 warps x 32 rows and 128-value segments");

/// Shared-memory layout of one pipeline stage (one item): weights, scales, biases, x.
template <int Bits, int TokenTiles>
struct StageLayout {
  static constexpr int kStages = cuda_dispatch::staged_pipeline_stages(TokenTiles);
  static constexpr int kUnitsPerRow = kMmaSegment * Bits / 8 / 16;  // 16-byte units of a row's segment
  static constexpr int kWBytes = kMmaRowsPerBlock * kUnitsPerRow * 16;
  // A row's groups in one segment (at most 4, 2-byte values) start at any 2-byte boundary: up
  // to 3 aligned words are copied, into a 16-byte slot.
  static constexpr int kScaleSlotBytes = 16;
  static constexpr int kSBytes = kMmaRowsPerBlock * kScaleSlotBytes;
  static constexpr int kXRowBytes = kMmaSegment * 2;
  static constexpr int kXBytes = 8 * TokenTiles * kXRowBytes;
  static constexpr int kScalesOffset = kWBytes;
  static constexpr int kBiasesOffset = kWBytes + kSBytes;
  static constexpr int kXOffset = kWBytes + 2 * kSBytes;
  static constexpr int kStageBytes = kWBytes + 2 * kSBytes + kXBytes;
  static constexpr int kSmemBytes = kStages * kStageBytes;
};

/// Byte offset of 16-byte unit `unit` of row `row` in a stage's weight tile. The unit index is
/// XOR-swizzled within its 128-byte line so that the 8 row addresses of one ldmatrix matrix hit
/// 8 different bank groups (rows are 64 or 128 bytes apart).
template <int Bits>
__device__ __forceinline__ int w_offset(int row, int unit) {
  const int u = row * Bits + unit;
  const int line = u >> 3;
  return ((line << 3) | ((u & 7) ^ (line & 7))) << 4;
}

/// Byte offset of 16-byte unit `unit` (0..15) of token row `token` in a stage's x tile, swizzled
/// so that one phase of the B-fragment loads (8 lanes of 16 bytes for 4-bit, 16 lanes of 8 bytes
/// for 8-bit) covers all 32 banks.
template <int Bits>
__device__ __forceinline__ int x_offset(int token, int unit) {
  const int swizzle = Bits == 8 ? (token & 3) << 1 : (token & 1) << 2;
  return token * (kMmaSegment * 2) + ((unit ^ swizzle) << 4);
}

__device__ __forceinline__ void ldmatrix_x4(std::uint32_t (&d)[4], std::uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
               : "r"(addr)
               : "memory");
}

/// Per (T, Bits): the integer offset the A operand carries (A = offset + q, exactly) and 1.0.
template <typename T, int Bits>
struct Operand;
template <int Bits>
struct Operand<__half, Bits> {
  static constexpr float kOffset = 1024.0f;  // 0x6400 | q == 1024 + q for q < 1024
  static constexpr std::uint32_t kOnes = 0x3C003C00u;
};
template <int Bits>
struct Operand<__nv_bfloat16, Bits> {
  // 0x4300 | q == 128 + q for q < 128; bytes are split into nibbles, hi nibble against 16 x:
  // (128 + lo) x + (128 + hi) 16 x == (2176 + q) x.
  static constexpr float kOffset = Bits == 8 ? 2176.0f : 128.0f;
  static constexpr std::uint32_t kOnes = 0x3F803F80u;
};
/// Whether bytes are split into nibbles (bf16 8-bit, see Operand).
template <typename T, int Bits>
constexpr bool split_bytes() {
  return Bits == 8 && std::is_same<T, __nv_bfloat16>::value;
}

/// What this thread copies for the items of one row block, everything but the segment offset:
/// set up once per row block so that a stage costs a handful of integer instructions (the
/// first version recomputed 64-bit item arithmetic per stage and was issue-bound on it).
template <int Bits>
struct CopyPlan {
  // Weights: unit u = threadIdx.x + 128 i (i < Bits) of the tile is row u / Bits, 16-byte unit
  // u % Bits of the row's segment: rows row0 + i * 128 / Bits, one unit column per thread.
  const std::uint32_t* w;     // the unit's first word in segment 0 of row row0
  std::int64_t w_row_stride;  // words from one of this thread's rows to the next
  unsigned w_rows_valid;      // bit i: row i exists (< N)
  // Scales and biases: this thread copies row threadIdx.x's words.
  std::int64_t scale_e0;  // the row's first element (rows past N use row N-1)
};

template <int Bits>
__device__ __forceinline__ CopyPlan<Bits> make_plan(const sk::Params& p, int rb) {
  CopyPlan<Bits> c;
  const int row0 = static_cast<int>(threadIdx.x) / Bits;
  const int unit = static_cast<int>(threadIdx.x) % Bits;
  const int n0 = rb * kMmaRowsPerBlock;
  c.w = p.w_q + static_cast<std::int64_t>(n0 + row0) * p.words_per_row + unit * 4;
  c.w_row_stride = static_cast<std::int64_t>(kMmaThreads / Bits) * p.words_per_row;
  c.w_rows_valid = 0;
#pragma unroll
  for (int i = 0; i < Bits; ++i) c.w_rows_valid |= (n0 + row0 + i * (kMmaThreads / Bits) < p.N ? 1u : 0u) << i;
  c.scale_e0 = static_cast<std::int64_t>(min(n0 + static_cast<int>(threadIdx.x), p.N - 1)) * p.groups_per_row;
  return c;
}

/// Starts the copies of segment `seg` of the plan's row block into the stage at shared address
/// `stage`. Rows past N and values past K are zero-filled (cp.async with 0 source bytes).
template <typename T, int Bits, int TokenTiles>
__device__ __forceinline__ void issue_item(const sk::Params& p, const CopyPlan<Bits>& c, std::uint32_t stage, int seg) {
  using L = StageLayout<Bits, TokenTiles>;
  const int tid = static_cast<int>(threadIdx.x);
  const int k_seg = seg * kMmaSegment;

  // Weights: unit u = tid + 128 i lands at w_offset(u) = w_offset(tid) + 2048 i (the swizzle
  // depends on u's low 6 bits only).
  const bool k_ok = k_seg + (tid % Bits) * (kMmaSegment / Bits) < p.K;
  const std::uint32_t* w = c.w + seg * (4 * Bits);
  const std::uint32_t w_smem = stage + w_offset<Bits>(tid / Bits, tid % Bits);
#pragma unroll
  for (int i = 0; i < Bits; ++i) {
    const bool valid = k_ok && ((c.w_rows_valid >> i) & 1u);
    cp_async_cg16(w_smem + i * 2048, valid ? w + i * c.w_row_stride : p.w_q, valid ? 16 : 0);
  }

  // Scales and biases: the aligned words covering the row's groups of this segment.
  const int groups = kMmaSegment >> p.group_shift;
  const std::int64_t word0 = (c.scale_e0 + static_cast<std::int64_t>(seg) * groups) >> 1;
  const char* s = static_cast<const char*>(p.scales);
  const char* b = static_cast<const char*>(p.biases);
  const std::uint32_t dst = stage + tid * L::kScaleSlotBytes;
  if ((p.groups_per_row & 1) == 0) {
    // Every row starts at an even element and the arrays have even lengths: whole words, and
    // only those of the row's groups that exist (the K tail's segment has fewer), so never past
    // the end. A one-group segment (group 128) sits in either half of its word.
    const int words = groups == 1 ? 1 : min(groups, p.groups_per_row - seg * groups) / 2;
    const char* sw = s + word0 * 4;
    const char* bw = b + word0 * 4;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      if (i < words) {
        cp_async_ca<4>(dst + L::kScalesOffset + i * 4, sw + i * 4, 4);
        cp_async_ca<4>(dst + L::kBiasesOffset + i * 4, bw + i * 4, 4);
      }
    }
  } else {
    // Odd rows start mid-word: one more word, and the last word of the arrays may be half past
    // their end.
    const int words = groups == 1 ? 1 : groups / 2 + 1;
    const std::int64_t elements = static_cast<std::int64_t>(p.N) * p.groups_per_row;
#pragma unroll
    for (int i = 0; i < 3; ++i) {
      if (i < words) {
        const std::int64_t left = (elements - 2 * (word0 + i)) * 2;
        if (left >= 4) {
          cp_async_ca<4>(dst + L::kScalesOffset + i * 4, s + (word0 + i) * 4, 4);
          cp_async_ca<4>(dst + L::kBiasesOffset + i * 4, b + (word0 + i) * 4, 4);
        } else {
          // The arrays' last word, half past their end (or a word wholly past it): read the
          // 2 bytes that exist by hand, so no access (cp.async included) touches the rest.
          const bool half = left > 0;
          const auto* sh = reinterpret_cast<const unsigned short*>(s + (word0 + i) * 4);
          const auto* bh = reinterpret_cast<const unsigned short*>(b + (word0 + i) * 4);
          st_shared_u32(dst + L::kScalesOffset + i * 4, half ? *sh : 0u);
          st_shared_u32(dst + L::kBiasesOffset + i * 4, half ? *bh : 0u);
        }
      }
    }
  }

  // x: rows 0..M-1 of this segment, 16 units of 8 values each.
  const T* x = static_cast<const T*>(p.x);
#pragma unroll
  for (int j = 0; j < TokenTiles; ++j) {
    const int u = tid + j * kMmaThreads;
    if (u < p.M * 16) {
      const int m = u >> 4;
      const int k = k_seg + (u & 15) * 8;
      const bool valid = k < p.K;
      cp_async_cg16(stage + L::kXOffset + x_offset<Bits>(m, u & 15),
                  valid ? x + static_cast<std::int64_t>(m) * p.K + k : x, valid ? 16 : 0);
    }
  }
}

/// The A operand (offset + q as two 16-bit values) of a 4-bit pair j of word w.
template <typename T>
__device__ __forceinline__ std::uint32_t nibble_pair(std::uint32_t w, int j) {
  return mma::and_or(w >> (4 * j), 0x000F000Fu, mma::Types<T>::kMagic);
}

/// Adds the group's sums into out: out += s * acc + (b - offset s) * xs, then clears acc, xs.
template <typename T, int Bits, int TokenTiles>
__device__ __forceinline__ void fold_group(float (&out)[2][TokenTiles][4], float (&acc)[2][TokenTiles][4],
                                           float (&xs)[TokenTiles][4], const unsigned char* stage,
                                           const int (&scale_index)[2][2], int group) {
  using L = StageLayout<Bits, TokenTiles>;
  const T* s_tile = reinterpret_cast<const T*>(stage + L::kScalesOffset);
  const T* b_tile = reinterpret_cast<const T*>(stage + L::kBiasesOffset);
  const int warp = threadIdx.x >> 5;
  const int r = (threadIdx.x & 31) >> 2;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = warp * 32 + mt * 16 + h * 8 + r;
      const int at = row * (L::kScaleSlotBytes / 2) + scale_index[mt][h] + group;
      const float s = static_cast<float>(s_tile[at]);
      const float b = fmaf(-Operand<T, Bits>::kOffset, s, static_cast<float>(b_tile[at]));
#pragma unroll
      for (int t = 0; t < TokenTiles; ++t) {
#pragma unroll
        for (int e = 2 * h; e < 2 * h + 2; ++e) {
          out[mt][t][e] = fmaf(s, acc[mt][t][e], out[mt][t][e]);
          out[mt][t][e] = fmaf(b, xs[t][e], out[mt][t][e]);
          acc[mt][t][e] = 0.0f;
        }
      }
    }
  }
  sk::zero(xs);
}

/// All MMAs and folds of one item (its stage has landed and is visible to the block).
template <typename T, int Bits, int TokenTiles>
__device__ __forceinline__ void compute_item(float (&out)[2][TokenTiles][4], const sk::Params& p,
                                             const unsigned char* stage, std::uint32_t stage_addr, int seg,
                                             unsigned row_parity) {
  using L = StageLayout<Bits, TokenTiles>;
  using Op = Operand<T, Bits>;
  using T2 = typename mma::Types<T>::T2;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int r = lane >> 2;
  const int c = lane & 3;
  const int groups = kMmaSegment >> p.group_shift;
  const int group_mask = (1 << p.group_shift) - 1;

  // Where this lane's rows' scales sit in their slots: the copied words start at an even
  // element, so the row's first group of the segment is at (n * groups_per_row + seg * groups)
  // & 1, i.e. the row's parity bit, flipped by odd segments when a segment is one group.
  const unsigned seg_flip = groups == 1 ? static_cast<unsigned>(seg & 1) * 0xFu : 0u;
  int scale_index[2][2];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) scale_index[mt][h] = static_cast<int>(((row_parity ^ seg_flip) >> (2 * mt + h)) & 1u);

  float acc[2][TokenTiles][4];
  float xs[TokenTiles][4];
  sk::zero(acc);
  sk::zero(xs);
  const std::uint32_t ones[4] = {Op::kOnes, Op::kOnes, Op::kOnes, Op::kOnes};
  const std::uint32_t magic = mma::Types<T>::kMagic;  // in a register: one LOP3 per pair

  // ldmatrix.x4 addresses: lanes 0-7 rows 0-7, 8-15 rows 8-15 of the m16 tile, first unit;
  // lanes 16-31 the same rows, next unit.
  const int ld_row = warp * 32 + (lane & 7) + ((lane >> 3) & 1) * 8;
  const int ld_unit = lane >> 4;

  std::uint32_t words[2][4];
#pragma unroll
  for (int j = 0; j < kMmaSegment / 32; ++j) {
    // Weights of block j: 4-bit, one ldmatrix.x4 per m16 tile covers blocks j and j+1; 8-bit,
    // halves 0 and 1 of block j.
    if (Bits == 8 || j % 2 == 0) {
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        const int unit = (Bits == 8 ? 2 * j : j) + ld_unit;
        ldmatrix_x4(words[mt], stage_addr + w_offset<Bits>(ld_row + mt * 16, unit));
      }
    }

    // B fragments: bx[t][0..1] for the first MMA of the block, bx[t][2..3] for the second.
    std::uint32_t bx[TokenTiles][4];
#pragma unroll
    for (int t = 0; t < TokenTiles; ++t) {
      const int token = t * 8 + r;
      const unsigned char* xrow = stage + L::kXOffset;
      if constexpr (Bits == 4) {
        const uint4 X = *reinterpret_cast<const uint4*>(xrow + x_offset<4>(token, 4 * j + c));
        bx[t][0] = __byte_perm(X.x, X.z, 0x5410);  // (x0, x4)
        bx[t][1] = __byte_perm(X.x, X.z, 0x7632);  // (x1, x5)
        bx[t][2] = __byte_perm(X.y, X.w, 0x5410);  // (x2, x6)
        bx[t][3] = __byte_perm(X.y, X.w, 0x7632);  // (x3, x7)
      } else {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const uint2 X =
              *reinterpret_cast<const uint2*>(xrow + x_offset<8>(token, 4 * j + 2 * h + (c >> 1)) + (c & 1) * 8);
          bx[t][2 * h] = X.x;      // (x0, x1)
          bx[t][2 * h + 1] = X.y;  // (x2, x3)
        }
      }
    }

    // sum(x) of the block, for the tokens of this lane's accumulator elements.
#pragma unroll
    for (int t = 0; t < TokenTiles; ++t) {
      mma::mma_16816<T>(xs[t], ones, bx[t][0], bx[t][1]);
      mma::mma_16816<T>(xs[t], ones, bx[t][2], bx[t][3]);
    }

#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
      if constexpr (Bits == 4) {
        const std::uint32_t w0 = words[mt][(j & 1) * 2];      // row r
        const std::uint32_t w8 = words[mt][(j & 1) * 2 + 1];  // row r + 8
        const std::uint32_t a1[4] = {mma::and_or(w0, 0x000F000Fu, magic), mma::and_or(w8, 0x000F000Fu, magic),
                                     mma::and_or(w0 >> 4, 0x000F000Fu, magic), mma::and_or(w8 >> 4, 0x000F000Fu, magic)};
        const std::uint32_t a2[4] = {mma::and_or(w0 >> 8, 0x000F000Fu, magic), mma::and_or(w8 >> 8, 0x000F000Fu, magic),
                                     mma::and_or(w0 >> 12, 0x000F000Fu, magic),
                                     mma::and_or(w8 >> 12, 0x000F000Fu, magic)};
#pragma unroll
        for (int t = 0; t < TokenTiles; ++t) {
          mma::mma_16816<T>(acc[mt][t], a1, bx[t][0], bx[t][1]);
          mma::mma_16816<T>(acc[mt][t], a2, bx[t][2], bx[t][3]);
        }
      } else {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const std::uint32_t w0 = words[mt][2 * h];
          const std::uint32_t w8 = words[mt][2 * h + 1];
          if constexpr (!split_bytes<T, Bits>()) {
            // (byte0, byte1) and (byte2, byte3) as 1024 + q halves (byte 5 of the pair is 0x64).
            const std::uint32_t a[4] = {__byte_perm(w0, magic, 0x5150), __byte_perm(w8, magic, 0x5150),
                                        __byte_perm(w0, magic, 0x5352), __byte_perm(w8, magic, 0x5352)};
#pragma unroll
            for (int t = 0; t < TokenTiles; ++t) mma::mma_16816<T>(acc[mt][t], a, bx[t][2 * h], bx[t][2 * h + 1]);
          } else {
            const std::uint32_t p0 = __byte_perm(w0, 0u, 0x4140), p8 = __byte_perm(w8, 0u, 0x4140);
            const std::uint32_t q0 = __byte_perm(w0, 0u, 0x4342), q8 = __byte_perm(w8, 0u, 0x4342);
            const std::uint32_t lo[4] = {mma::and_or(p0, 0x000F000Fu, magic), mma::and_or(p8, 0x000F000Fu, magic),
                                         mma::and_or(q0, 0x000F000Fu, magic), mma::and_or(q8, 0x000F000Fu, magic)};
            const std::uint32_t hi[4] = {mma::and_or(p0 >> 4, 0x000F000Fu, magic),
                                         mma::and_or(p8 >> 4, 0x000F000Fu, magic),
                                         mma::and_or(q0 >> 4, 0x000F000Fu, magic),
                                         mma::and_or(q8 >> 4, 0x000F000Fu, magic)};
            const T2 sixteen = T2{T(16.0f), T(16.0f)};
#pragma unroll
            for (int t = 0; t < TokenTiles; ++t) {
              const std::uint32_t b16a = mma::as_u32(__hmul2(mma::as_t2<T2>(bx[t][2 * h]), sixteen));
              const std::uint32_t b16b = mma::as_u32(__hmul2(mma::as_t2<T2>(bx[t][2 * h + 1]), sixteen));
              mma::mma_16816<T>(acc[mt][t], lo, bx[t][2 * h], bx[t][2 * h + 1]);
              mma::mma_16816<T>(acc[mt][t], hi, b16a, b16b);
            }
          }
        }
      }
    }

    // A group ends with this block: apply its scale and bias (groups past K are all zero and
    // are skipped, their scale words may belong to the next row).
    if ((((j + 1) * 32) & group_mask) == 0) {
      const int group = (j * 32) >> p.group_shift;
      if (seg * groups + group < p.groups_per_row) {
        fold_group<T, Bits, TokenTiles>(out, acc, xs, stage, scale_index, group);
      }
    }
  }
}

/// Parity of n * groups_per_row for this lane's rows n of row block rb (bit 2 * mt + h).
__device__ __forceinline__ unsigned row_parity_bits(const sk::Params& p, int rb) {
  const int warp = threadIdx.x >> 5;
  const int r = (threadIdx.x & 31) >> 2;
  unsigned bits = 0;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int n = min(rb * kMmaRowsPerBlock + warp * 32 + mt * 16 + h * 8 + r, p.N - 1);
      bits |= static_cast<unsigned>(n & p.groups_per_row & 1) << (2 * mt + h);
    }
  return bits;
}

template <typename T, int Bits, int TokenTiles>
__global__ void __launch_bounds__(kMmaThreads, cuda_dispatch::staged_blocks_per_sm(Bits, TokenTiles))
    qmv_staged_kernel(const sk::Params p) {
  using L = StageLayout<Bits, TokenTiles>;
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ int s_is_last;
  const std::uint32_t smem_addr = shared_address(smem);
  const std::int64_t items = static_cast<std::int64_t>(p.row_blocks) * p.segments;
  const std::int64_t start = sk::item_start(items, p.blocks, blockIdx.x);
  const int count = static_cast<int>(sk::item_start(items, p.blocks, blockIdx.x + 1) - start);

  // Token rows M..8*TokenTiles-1 are never copied: zero them once in every stage so the MMA
  // columns of absent tokens hold finite values (their outputs are never stored).
  const int absent_words = (8 * TokenTiles - p.M) * L::kXRowBytes / 4;
  for (int s = 0; s < L::kStages; ++s) {
    auto* x_words = reinterpret_cast<std::uint32_t*>(smem + s * L::kStageBytes + L::kXOffset + p.M * L::kXRowBytes);
    for (int u = threadIdx.x; u < absent_words; u += kMmaThreads) x_words[u] = 0u;
  }

  // Two cursors over the block's items (row block, segment): the copies run kStages - 1 items
  // ahead of the compute.
  const int first_rb = static_cast<int>(start / p.segments);
  const int first_seg = static_cast<int>(start - static_cast<std::int64_t>(first_rb) * p.segments);
  int issue_rb = first_rb, issue_seg = first_seg;
  CopyPlan<Bits> plan = make_plan<Bits>(p, issue_rb);
  auto issue_next = [&](int buf) {
    issue_item<T, Bits, TokenTiles>(p, plan, smem_addr + buf * L::kStageBytes, issue_seg);
    if (++issue_seg == p.segments) {
      issue_seg = 0;
      plan = make_plan<Bits>(p, ++issue_rb);
    }
  };
#pragma unroll
  for (int s = 0; s < L::kStages - 1; ++s) {
    if (s < count) issue_next(s);
    cp_async_commit();
  }

  float out[2][TokenTiles][4];
  sk::zero(out);

  int rb = first_rb, seg = first_seg;
  unsigned parity = row_parity_bits(p, rb);
  std::int64_t run_first = start;  // first item of the current row block in this block's run
  int buf = 0;                     // stage of item i
  for (int i = 0; i < count; ++i) {
    cp_async_wait<L::kStages - 2>();  // this thread's copies of item i have landed
    __syncthreads();                  // everyone's have; everyone is done with item i-1's stage
    if (i + L::kStages - 1 < count) issue_next(buf == 0 ? L::kStages - 1 : buf - 1);
    cp_async_commit();
    compute_item<T, Bits, TokenTiles>(out, p, smem + buf * L::kStageBytes, smem_addr + buf * L::kStageBytes, seg,
                                      parity);
    if (i + 1 == count || seg + 1 == p.segments) {
      sk::finish_row_block<T, TokenTiles>(out, p, rb, run_first, start + i, start, &s_is_last);
      sk::zero(out);
      run_first = start + i + 1;
    }
    if (++seg == p.segments) {
      seg = 0;
      parity = row_parity_bits(p, ++rb);
    }
    buf = buf + 1 == L::kStages ? 0 : buf + 1;
  }
}

struct KernelRef {
  const void* fn;
  int smem_bytes;
};

template <typename T, int Bits, int TokenTiles>
KernelRef kernel_ref() {
  return {reinterpret_cast<const void*>(&qmv_staged_kernel<T, Bits, TokenTiles>),
          StageLayout<Bits, TokenTiles>::kSmemBytes};
}

template <typename T, int Bits>
KernelRef kernel_ref_tiles(int token_tiles) {
  switch (token_tiles) {
    case 1:
      return kernel_ref<T, Bits, 1>();
    case 2:
      return kernel_ref<T, Bits, 2>();
    case 4:
      return kernel_ref<T, Bits, 4>();
    case 8:
      return kernel_ref<T, Bits, 8>();
    default:
      throw std::logic_error("qmv_staged: unsupported token tile count");
  }
}

KernelRef kernel_for(const MatmulProblem& p, int token_tiles) {
  const bool bf16 = p.x_dtype == Dtype::bfloat16;
  if (p.w.bits == 4) return bf16 ? kernel_ref_tiles<__nv_bfloat16, 4>(token_tiles) : kernel_ref_tiles<__half, 4>(token_tiles);
  if (p.w.bits == 8) return bf16 ? kernel_ref_tiles<__nv_bfloat16, 8>(token_tiles) : kernel_ref_tiles<__half, 8>(token_tiles);
  throw std::logic_error("qmv_staged: unsupported bits reached the launcher");
}

}  // namespace

int qmv_staged_blocks_per_sm(const MatmulProblem& p, const cuda_dispatch::KernelConfig& config) {
  const KernelRef k = kernel_for(p, config.token_tiles);
  allow_dynamic_smem(k.fn, k.smem_bytes);
  int blocks = 0;
  QMM_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, k.fn, kMmaThreads, k.smem_bytes));
  return blocks;
}

void launch_qmv_staged(const MatmulProblem& p, const cuda_dispatch::KernelConfig& config, cudaStream_t stream) {
  const KernelRef k = kernel_for(p, config.token_tiles);
  allow_dynamic_smem(k.fn, k.smem_bytes);
  sk::Params q = sk::make_params(p, config.blocks);
  sk::bind_workspace(q, stream, p, config);
  sk::for_each_pass(q, p, 8 * config.token_tiles, [&](sk::Params& pass) {
    void* args[] = {&pass};
    QMM_CUDA_CHECK(cudaLaunchKernel(k.fn, dim3(config.blocks), dim3(kMmaThreads), args,
                                    static_cast<std::size_t>(k.smem_bytes), stream));
  });
}

}  // namespace qmm::detail
