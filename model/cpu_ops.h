// The small ops of the forward pass on the CPU (float math, activations in float16/bfloat16),
// mirroring the CUDA kernels of model/cuda/kernels.cu with the same argument structs.
#pragma once

#include <cstdint>

#include "model/cuda/device.h"
#include "model/weights.h"

namespace qmm::model::cpu {

void embed_rows(const std::int32_t* tokens, int n, const Linear& embed, float* h);
void rms_norm(const float* h, const float* w, void* out, int n, std::int64_t hidden, float eps, Dtype dtype);
void add_rms_norm(float* h, const void* delta, const float* delta_bias, const float* w, void* out, int n,
                  std::int64_t hidden, float eps, Dtype dtype);
void qkv_rope(const cuda::QkvArgs& a, Dtype dtype);
/// Plain causal attention (split_len and the workspace are not used).
void attention(const cuda::AttentionArgs& a, Dtype dtype);
void swiglu(const void* gate, std::int64_t gate_stride, const void* up, std::int64_t up_stride, const float* gate_bias,
            const float* up_bias, void* out, int n, std::int64_t inter, Dtype dtype);
void dense_linear(const void* x, const void* w, void* out, int n, std::int64_t N, std::int64_t K, Dtype dtype);

}  // namespace qmm::model::cpu
