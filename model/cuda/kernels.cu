// The small kernels of the decoder forward pass: embedding gather, RMSNorm, RoPE with the KV
// cache write, split-key GQA attention, SwiGLU, a dense fallback linear, and the synthetic
// weight fill. Simple and correct first; each row's result never depends on how many rows run
// together (batch invariance), so a verify pass of M tokens gives row r the bits of M = 1.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <string>
#include <utility>

#include "model/cuda/check.cuh"
#include "model/cuda/device.h"
#include "model/synthetic_rng.h"

namespace qmm::model::cuda {

namespace {

constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ __half from_f<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

/// XOR butterfly: every lane ends with the same bits (each step adds the same pair).
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
  return v;
}

/// Sum over the block in a fixed order (blockDim.x a multiple of 32, at most 1024).
__device__ float block_sum(float v) {
  __shared__ float partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // partial may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  float t = lane < nwarps ? partial[lane] : 0.0f;
  return warp_sum(t);  // each warp sums the same values in the same order
}

template <typename F>
void dispatch(Dtype dtype, const char* what, F&& f) {
  if (dtype == Dtype::float16) {
    f(__half{});
  } else if (dtype == Dtype::bfloat16) {
    f(__nv_bfloat16{});
  } else {
    throw Error(std::string("[model] ") + what + ": dtype must be float16 or bfloat16, not " + dtype_name(dtype));
  }
}

cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

template <typename... KernelArgs, typename... Args>
void launch(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, cudaStream_t stream, const char* name,
            Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = 0;
  config.stream = stream;
  const cudaError_t err = cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
  if (err != cudaSuccess) throw_cuda_error(err, name, __FILE__, __LINE__);
}

unsigned grid_for(std::int64_t work, int block) {
  const std::int64_t g = (work + block - 1) / block;
  return static_cast<unsigned>(g < 1 ? 1 : (g > 65535 * 8 ? 65535 * 8 : g));
}

// ---- embedding ------------------------------------------------------------------------------

template <typename T>
__global__ void embed_kernel(const std::int32_t* __restrict__ tokens, EmbedTable t, float* __restrict__ h) {
  const int i = blockIdx.x;
  const std::int32_t tok = tokens[i];
  float* out = h + static_cast<std::int64_t>(i) * t.hidden;
  if (tok < 0 || tok >= t.vocab) {
    for (std::int64_t k = threadIdx.x; k < t.hidden; k += blockDim.x) out[k] = 0.0f;
    return;
  }
  if (t.quantized) {
    const std::int64_t words = t.hidden * t.bits / 32;
    const std::int64_t groups = t.hidden / t.group_size;
    const std::uint32_t* row = t.w_q + tok * words;
    const T* s = static_cast<const T*>(t.scales) + tok * groups;
    const T* b = static_cast<const T*>(t.biases) + tok * groups;
    const std::uint32_t mask = (1u << t.bits) - 1u;
    for (std::int64_t k = threadIdx.x; k < t.hidden; k += blockDim.x) {
      const std::int64_t bit = k * t.bits;
      const int off = static_cast<int>(bit & 31);
      std::uint32_t q = row[bit >> 5] >> off;
      if (off + t.bits > 32) q |= row[(bit >> 5) + 1] << (32 - off);
      q &= mask;
      // As qmm::dequantize: the product rounded to the storage dtype, then the sum.
      const std::int64_t g = k / t.group_size;
      const float prod = to_f(from_f<T>(__fmul_rn(to_f(s[g]), static_cast<float>(q))));
      out[k] = to_f(from_f<T>(__fadd_rn(prod, to_f(b[g]))));
    }
  } else {
    const T* w = static_cast<const T*>(t.weight) + tok * t.hidden;
    for (std::int64_t k = threadIdx.x; k < t.hidden; k += blockDim.x) out[k] = to_f(w[k]);
  }
}

// ---- RMSNorm --------------------------------------------------------------------------------

template <typename T>
__global__ void rms_norm_kernel(const float* __restrict__ h, const float* __restrict__ w, T* __restrict__ out,
                                std::int64_t hidden, float eps) {
  const std::int64_t row = blockIdx.x;
  const float* x = h + row * hidden;
  float ss = 0.0f;
  for (std::int64_t k = threadIdx.x; k < hidden; k += blockDim.x) ss = fmaf(x[k], x[k], ss);
  ss = block_sum(ss);
  const float r = rsqrtf(ss / static_cast<float>(hidden) + eps);
  for (std::int64_t k = threadIdx.x; k < hidden; k += blockDim.x) out[row * hidden + k] = from_f<T>(x[k] * r * w[k]);
}

template <typename T>
__global__ void add_rms_norm_kernel(float* __restrict__ h, const T* __restrict__ delta, const float* __restrict__ bias,
                                    const float* __restrict__ w, T* __restrict__ out, std::int64_t hidden, float eps) {
  const std::int64_t row = blockIdx.x;
  float* x = h + row * hidden;
  const T* d = delta + row * hidden;
  float ss = 0.0f;
  for (std::int64_t k = threadIdx.x; k < hidden; k += blockDim.x) {
    float v = to_f(d[k]);
    if (bias) v += bias[k];
    v += x[k];
    x[k] = v;
    ss = fmaf(v, v, ss);
  }
  ss = block_sum(ss);
  const float r = rsqrtf(ss / static_cast<float>(hidden) + eps);
  for (std::int64_t k = threadIdx.x; k < hidden; k += blockDim.x) out[row * hidden + k] = from_f<T>(x[k] * r * w[k]);
}

// ---- attention ------------------------------------------------------------------------------
//
// One kernel per layer. Grid (kv head, key split, chunk of query vectors); a query vector is one
// (row, q head) of the kv head's GQA group, a block takes 8 warps x VPW of them, so every K/V
// tile it loads serves the whole group and every row at once.
//   1. Each warp builds its query vectors from the projections: bias, optional RMSNorm, RoPE,
//      rounded to the model dtype (as the CPU path stores q), scaled into log2 units.
//   2. Per 32-key tile, one warp per key row: old positions (< pos) come from the cache; new ones
//      are built from the k/v projections (bias, norm, RoPE) and written to the cache by the
//      last chunk's block, the one whose rows see every new key of the split.
//   3. Lane j scores key j; an online softmax keeps (max, sum, output) per vector in registers;
//      unnormalized partials go to the workspace per split.
//   4. The last block of a (kv head, chunk) to finish combines the splits in split order and
//      resets its counter (graph replays find it zero).
// Split boundaries are multiples of split_len and every per-row reduction runs in a fixed order,
// so a row sees the same tiles in the same order whatever n is: its bits do not depend on the
// batch.

constexpr int kTile = 32;
constexpr int kWarps = 8;

template <int D>
struct AttnShape {
  static constexpr int VPW = D >= 256 ? 1 : 2;  // query vectors per warp (shared memory budget)
  static constexpr int CHUNK = kWarps * VPW;
  static constexpr int DP = D + 2;  // padded K row: lane j's row starts in bank j
  static constexpr int PER_LANE = D / 32;
  static constexpr int HALF_LANE = PER_LANE / 2;  // RoPE partner of element e is e + HALF_LANE
};

/// Bias, optional RMSNorm and RoPE of one head row held as x[e] = element lane + 32 e.
template <int D>
__device__ __forceinline__ void bias_norm_rope(float (&x)[D / 32], const float* bias, const float* norm, float eps,
                                               const float* cos_row, const float* sin_row, int lane) {
  using S = AttnShape<D>;
#pragma unroll
  for (int e = 0; e < S::PER_LANE; ++e) {
    if (bias) x[e] += bias[lane + 32 * e];
  }
  if (norm) {
    float ss = 0.0f;
#pragma unroll
    for (int e = 0; e < S::PER_LANE; ++e) ss = fmaf(x[e], x[e], ss);
    ss = warp_sum(ss);
    const float r = rsqrtf(ss / static_cast<float>(D) + eps);
#pragma unroll
    for (int e = 0; e < S::PER_LANE; ++e) x[e] = x[e] * r * norm[lane + 32 * e];
  }
#pragma unroll
  for (int e = 0; e < S::HALF_LANE; ++e) {
    const int j = lane + 32 * e;
    const float c = cos_row[j], s = sin_row[j];
    const float x1 = x[e], x2 = x[e + S::HALF_LANE];
    x[e] = x1 * c - x2 * s;
    x[e + S::HALF_LANE] = x2 * c + x1 * s;
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kWarps * 32) attention_kernel(QkvArgs qa, AttentionArgs a, int splits) {
  using S = AttnShape<D>;
  constexpr int VPW = S::VPW, DP = S::DP, PER_LANE = S::PER_LANE, HALF = D / 2;
  __shared__ __align__(16) T ks[kTile * DP];
  __shared__ __align__(16) T vs[kTile * D];
  __shared__ float qs[kWarps][VPW][D];
  __shared__ bool last_block;

  const int kvh = blockIdx.x, split = blockIdx.y, chunk = blockIdx.z;
  const int group = a.heads / a.kv_heads;
  const int qn = a.n * group;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const std::int64_t s_begin = static_cast<std::int64_t>(split) * a.split_len;
  const std::int64_t s_end = min(s_begin + a.split_len, a.pos + a.n);
  const int v_first = chunk * S::CHUNK;
  const int v_last = min(qn, v_first + S::CHUNK) - 1;
  const std::int64_t block_end = min(s_end, a.pos + v_last / group + 1);
  const bool writes_cache = chunk == static_cast<int>(gridDim.z) - 1;
  const float qscale = a.scale * 1.4426950408889634f;  // scores in log2 units: exp2f below

  // 1. Query vectors.
  int vec[VPW];
  std::int64_t limit[VPW];
  for (int vi = 0; vi < VPW; ++vi) {
    const int v = v_first + warp + vi * kWarps;
    vec[vi] = v <= v_last ? v : -1;
    const int row = v / group, head = kvh * group + v % group;
    limit[vi] = vec[vi] >= 0 ? a.pos + row + 1 : 0;
    float x[PER_LANE];
    if (vec[vi] >= 0) {
      const T* src = static_cast<const T*>(qa.q) + row * qa.q_stride + static_cast<std::int64_t>(head) * D;
#pragma unroll
      for (int e = 0; e < PER_LANE; ++e) x[e] = to_f(src[lane + 32 * e]);
      const std::int64_t p = a.pos + row;
      bias_norm_rope<D>(x, qa.q_bias ? qa.q_bias + head * D : nullptr, qa.q_norm, qa.eps, qa.rope_cos + p * HALF,
                        qa.rope_sin + p * HALF, lane);
    }
#pragma unroll
    for (int e = 0; e < PER_LANE; ++e) {
      qs[warp][vi][lane + 32 * e] = vec[vi] >= 0 ? to_f(from_f<T>(x[e])) * qscale : 0.0f;
    }
  }
  float m[VPW], l[VPW], o[VPW][PER_LANE];
  for (int vi = 0; vi < VPW; ++vi) {
    m[vi] = -INFINITY;
    l[vi] = 0.0f;
    for (int e = 0; e < PER_LANE; ++e) o[vi][e] = 0.0f;
  }
  T* kc = static_cast<T*>(const_cast<void*>(a.k_cache));
  T* vc = static_cast<T*>(const_cast<void*>(a.v_cache));
  const std::int64_t row_stride = static_cast<std::int64_t>(a.kv_heads) * D;

  for (std::int64_t t0 = s_begin; t0 < block_end; t0 += kTile) {
    __syncthreads();  // the previous tile is consumed (and qs is written, first time round)
    // 2. Keys and values of the tile, one warp per row.
    for (int r = warp; r < kTile; r += kWarps) {
      T* kd = ks + r * DP;
      T* vd = vs + r * D;
      const std::int64_t p = t0 + r;
      if (p >= block_end) {
#pragma unroll
        for (int e = 0; e < PER_LANE; ++e) kd[lane + 32 * e] = vd[lane + 32 * e] = from_f<T>(0.0f);
        continue;
      }
      const std::int64_t off = p * row_stride + static_cast<std::int64_t>(kvh) * D;
      if (p < a.pos) {
#pragma unroll
        for (int e = 0; e < PER_LANE; ++e) {
          kd[lane + 32 * e] = kc[off + lane + 32 * e];
          vd[lane + 32 * e] = vc[off + lane + 32 * e];
        }
        continue;
      }
      const std::int64_t i = p - a.pos;  // a new row: build it from the projections
      const T* ksrc = static_cast<const T*>(qa.k) + i * qa.k_stride + static_cast<std::int64_t>(kvh) * D;
      const T* vsrc = static_cast<const T*>(qa.v) + i * qa.v_stride + static_cast<std::int64_t>(kvh) * D;
      float x[PER_LANE];
#pragma unroll
      for (int e = 0; e < PER_LANE; ++e) x[e] = to_f(ksrc[lane + 32 * e]);
      bias_norm_rope<D>(x, qa.k_bias ? qa.k_bias + kvh * D : nullptr, qa.k_norm, qa.eps, qa.rope_cos + p * HALF,
                        qa.rope_sin + p * HALF, lane);
#pragma unroll
      for (int e = 0; e < PER_LANE; ++e) {
        const int d = lane + 32 * e;
        const T kv = from_f<T>(x[e]);
        float vv = to_f(vsrc[d]);
        if (qa.v_bias) vv += qa.v_bias[kvh * D + d];
        const T vt = from_f<T>(vv);
        kd[d] = kv;
        vd[d] = vt;
        if (writes_cache) {
          kc[off + d] = kv;
          vc[off + d] = vt;
        }
      }
    }
    __syncthreads();
    // 3. Scores and the online softmax.
    for (int vi = 0; vi < VPW; ++vi) {
      if (vec[vi] < 0) continue;
      const std::int64_t visible = limit[vi] - t0;
      if (visible <= 0) continue;
      const int nvalid = static_cast<int>(min(static_cast<std::int64_t>(kTile), visible));
      float s = -INFINITY;
      if (lane < nvalid) {
        const T* kr = ks + lane * DP;
        const float* qv = qs[warp][vi];
        float acc = 0.0f;
#pragma unroll 8
        for (int d = 0; d < D; d += 2) {
          acc = fmaf(qv[d], to_f(kr[d]), acc);
          acc = fmaf(qv[d + 1], to_f(kr[d + 1]), acc);
        }
        s = acc;
      }
      const float m_new = fmaxf(m[vi], warp_max(s));
      const float corr = exp2f(m[vi] - m_new);
      const float p = lane < nvalid ? exp2f(s - m_new) : 0.0f;
      l[vi] = l[vi] * corr + warp_sum(p);
      for (int e = 0; e < PER_LANE; ++e) o[vi][e] *= corr;
      for (int j = 0; j < nvalid; ++j) {
        const float pj = __shfl_sync(kFull, p, j);
        const T* vr = vs + j * D + lane;
        for (int e = 0; e < PER_LANE; ++e) o[vi][e] = fmaf(pj, to_f(vr[32 * e]), o[vi][e]);
      }
      m[vi] = m_new;
    }
  }
  for (int vi = 0; vi < VPW; ++vi) {
    if (vec[vi] < 0 || limit[vi] <= s_begin) continue;  // the combine reads only splits a row sees
    const int v = vec[vi];
    const int row = v / group, head = kvh * group + v % group;
    const std::int64_t entry = (static_cast<std::int64_t>(row) * a.heads + head) * splits + split;
    for (int e = 0; e < PER_LANE; ++e) a.ws_o[entry * D + lane + 32 * e] = o[vi][e];
    if (lane == 0) {
      a.ws_ml[entry * 2] = m[vi];
      a.ws_ml[entry * 2 + 1] = l[vi];
    }
  }

  // 4. The last block of this (kv head, chunk) combines the splits.
  __threadfence();
  __syncthreads();
  std::uint32_t* counter = a.counters + static_cast<std::int64_t>(kvh) * gridDim.z + chunk;
  if (threadIdx.x == 0) last_block = atomicAdd(counter, 1u) == static_cast<std::uint32_t>(splits - 1);
  __syncthreads();
  if (!last_block) return;
  __threadfence();
  if (threadIdx.x == 0) *counter = 0;
  for (int v = v_first + warp; v <= v_last; v += kWarps) {
    const int row = v / group, head = kvh * group + v % group;
    const int used = static_cast<int>((a.pos + row) / a.split_len) + 1;  // splits 0 .. used - 1
    const std::int64_t base = (static_cast<std::int64_t>(row) * a.heads + head) * splits;
    float mmax = -INFINITY;
    for (int s = 0; s < used; ++s) mmax = fmaxf(mmax, __ldcg(a.ws_ml + (base + s) * 2));
    float den = 0.0f;
    for (int s = 0; s < used; ++s) {
      den += exp2f(__ldcg(a.ws_ml + (base + s) * 2) - mmax) * __ldcg(a.ws_ml + (base + s) * 2 + 1);
    }
    T* out = static_cast<T*>(a.out) + (static_cast<std::int64_t>(row) * a.heads + head) * D;
    for (int e = 0; e < PER_LANE; ++e) {
      const int d = lane + 32 * e;
      float acc = 0.0f;
      for (int s = 0; s < used; ++s) {
        acc += exp2f(__ldcg(a.ws_ml + (base + s) * 2) - mmax) * __ldcg(a.ws_o + (base + s) * D + d);
      }
      out[d] = from_f<T>(acc / den);
    }
  }
}

template <typename T, int D>
void launch_attention(const QkvArgs& qa, const AttentionArgs& a, cudaStream_t stream) {
  using S = AttnShape<D>;
  const int splits = static_cast<int>(attention_splits(a.pos, a.n, a.split_len));
  const int chunks = static_cast<int>(attention_chunks(a.n, a.heads / a.kv_heads, D));
  const dim3 grid(a.kv_heads, splits, chunks);
  static_assert(S::CHUNK == (D >= 256 ? 8 : 16), "attention_chunks() assumes these chunk sizes");
  launch(attention_kernel<T, D>, grid, kWarps * 32, stream, "attention_kernel", qa, a, splits);
}

// ---- SwiGLU, dense linear, fill -------------------------------------------------------------

template <typename T>
__global__ void swiglu_kernel(const T* __restrict__ gate, std::int64_t gs, const T* __restrict__ up, std::int64_t us,
                              const float* __restrict__ gb, const float* __restrict__ ub, T* __restrict__ out,
                              std::int64_t n, std::int64_t inter) {
  const std::int64_t total = n * inter;
  for (std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t r = idx / inter, c = idx % inter;
    float g = to_f(gate[r * gs + c]);
    float u = to_f(up[r * us + c]);
    if (gb) g += gb[c];
    if (ub) u += ub[c];
    out[idx] = from_f<T>(g / (1.0f + expf(-g)) * u);
  }
}

template <typename T>
__global__ void dense_linear_kernel(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ out, int n,
                                    std::int64_t N, std::int64_t K) {
  constexpr int R = 8;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const std::int64_t col = static_cast<std::int64_t>(blockIdx.x) * 8 + warp;
  const int r0 = blockIdx.y * R;
  if (col >= N) return;
  float acc[R] = {};
  const T* wr = w + col * K;
  for (std::int64_t k = lane; k < K; k += 32) {
    const float wk = to_f(wr[k]);
    for (int r = 0; r < R; ++r) {
      if (r0 + r < n) acc[r] = fmaf(wk, to_f(x[(r0 + r) * K + k]), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    const float s = warp_sum(acc[r]);
    if (lane == 0 && r0 + r < n) out[(r0 + r) * N + col] = from_f<T>(s);
  }
}

template <typename T>
__global__ void fill_kernel(T* dst, std::int64_t count, std::uint64_t base, std::uint64_t stream, float amp) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    dst[i] = from_f<T>(__fmul_rn(synthetic_uniform(stream, base + static_cast<std::uint64_t>(i)), amp));
  }
}

int norm_block(std::int64_t hidden) { return hidden >= 4096 ? 1024 : hidden >= 1024 ? 512 : 256; }

}  // namespace

// ---- launchers ------------------------------------------------------------------------------


void embed_rows(const std::int32_t* tokens, int n, const EmbedTable& table, float* h, Dtype dtype, void* stream) {
  if (n <= 0) return;
  dispatch(dtype, "embed_rows", [&](auto tag) {
    using T = decltype(tag);
    launch(embed_kernel<T>, n, 256, as_stream(stream), "embed_kernel", tokens, table, h);
  });
}

void rms_norm(const float* h, const float* w, void* out, int n, std::int64_t hidden, float eps, Dtype dtype,
              void* stream) {
  if (n <= 0) return;
  dispatch(dtype, "rms_norm", [&](auto tag) {
    using T = decltype(tag);
    launch(rms_norm_kernel<T>, n, norm_block(hidden), as_stream(stream), "rms_norm_kernel", h, w, static_cast<T*>(out),
           hidden, eps);
  });
}

void add_rms_norm(float* h, const void* delta, const float* delta_bias, const float* w, void* out, int n,
                  std::int64_t hidden, float eps, Dtype dtype, void* stream) {
  if (n <= 0) return;
  dispatch(dtype, "add_rms_norm", [&](auto tag) {
    using T = decltype(tag);
    launch(add_rms_norm_kernel<T>, n, norm_block(hidden), as_stream(stream), "add_rms_norm_kernel", h,
           static_cast<const T*>(delta), delta_bias, w, static_cast<T*>(out), hidden, eps);
  });
}

std::int64_t attention_splits(std::int64_t pos, int n, std::int64_t split_len) {
  return (pos + n + split_len - 1) / split_len;
}

std::int64_t attention_chunks(int n, int group, int head_dim) {
  const int chunk = head_dim >= 256 ? 8 : 16;
  return (static_cast<std::int64_t>(n) * group + chunk - 1) / chunk;
}

bool attention_supports_head_dim(int d) { return d == 64 || d == 128 || d == 256; }

void attention(const QkvArgs& qa, const AttentionArgs& a, Dtype dtype, void* stream) {
  if (a.n <= 0) return;
  if (a.split_len <= 0 || a.split_len % kTile != 0) throw Error("[model] attention: split_len must be a multiple of 32");
  if (a.kv_heads <= 0 || a.heads % a.kv_heads != 0) throw Error("[model] attention: heads must be a multiple of kv_heads");
  if (qa.k_cache != a.k_cache || qa.v_cache != a.v_cache || !a.counters || !a.ws_o || !a.ws_ml) {
    throw Error("[model] attention: inconsistent arguments");
  }
  dispatch(dtype, "attention", [&](auto tag) {
    using T = decltype(tag);
    switch (a.head_dim) {
      case 64: launch_attention<T, 64>(qa, a, as_stream(stream)); break;
      case 128: launch_attention<T, 128>(qa, a, as_stream(stream)); break;
      case 256: launch_attention<T, 256>(qa, a, as_stream(stream)); break;
      default: throw Error("[model] attention: head_dim " + std::to_string(a.head_dim) + " is not compiled (64, 128, 256)");
    }
  });
}

void swiglu(const void* gate, std::int64_t gate_stride, const void* up, std::int64_t up_stride, const float* gate_bias,
            const float* up_bias, void* out, int n, std::int64_t inter, Dtype dtype, void* stream) {
  if (n <= 0) return;
  dispatch(dtype, "swiglu", [&](auto tag) {
    using T = decltype(tag);
    launch(swiglu_kernel<T>, grid_for(n * inter, 256), 256, as_stream(stream), "swiglu_kernel",
           static_cast<const T*>(gate), gate_stride, static_cast<const T*>(up), up_stride, gate_bias, up_bias,
           static_cast<T*>(out), static_cast<std::int64_t>(n), inter);
  });
}

void dense_linear(const void* x, const void* w, void* out, int n, std::int64_t N, std::int64_t K, Dtype dtype,
                  void* stream) {
  if (n <= 0) return;
  dispatch(dtype, "dense_linear", [&](auto tag) {
    using T = decltype(tag);
    const dim3 grid(static_cast<unsigned>((N + 7) / 8), static_cast<unsigned>((n + 7) / 8));
    launch(dense_linear_kernel<T>, grid, 256, as_stream(stream), "dense_linear_kernel", static_cast<const T*>(x),
           static_cast<const T*>(w), static_cast<T*>(out), n, N, K);
  });
}

void fill_uniform(void* dst, Dtype dtype, std::int64_t rows, std::int64_t cols, std::int64_t row0,
                  std::uint64_t stream_id, float amplitude, void* stream) {
  const std::int64_t count = rows * cols;
  if (count <= 0) return;
  dispatch(dtype, "fill_uniform", [&](auto tag) {
    using T = decltype(tag);
    launch(fill_kernel<T>, grid_for(count, 256), 256, as_stream(stream), "fill_kernel", static_cast<T*>(dst), count,
           static_cast<std::uint64_t>(row0 * cols), stream_id, amplitude);
  });
}

}  // namespace qmm::model::cuda
