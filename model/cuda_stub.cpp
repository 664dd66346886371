// qmm_model without CUDA (QMM_HAVE_CUDA off): every CUDA entry point is an error.
#include "model/cuda/device.h"
#include "qmm/ops.h"

namespace qmm::model::cuda {

namespace {
[[noreturn]] void no_cuda(const char* what) {
  throw Error(std::string("[model] ") + what + ": this build of qmm has no CUDA backend (configure with CUDA)");
}
}  // namespace

void set_device(int) { no_cuda("set_device"); }
void* stream_create() { no_cuda("stream_create"); }
void stream_destroy(void*) noexcept {}
void stream_synchronize(void*) { no_cuda("stream_synchronize"); }
void device_synchronize() { no_cuda("device_synchronize"); }
void copy_h2d(void*, const void*, std::size_t, void*) { no_cuda("copy"); }
void copy_d2h(void*, const void*, std::size_t, void*) { no_cuda("copy"); }
void copy_d2d(void*, const void*, std::size_t, void*) { no_cuda("copy"); }
void memset_zero(void*, std::size_t, void*) { no_cuda("memset"); }
void capture_begin(void*) { no_cuda("capture_begin"); }
void* capture_end(void*, const char**) { no_cuda("capture_end"); }
void graph_launch(void*, void*) { no_cuda("graph_launch"); }
void graph_destroy(void*) noexcept {}
void* event_create() { no_cuda("event_create"); }
void event_destroy(void*) noexcept {}
void event_record(void*, void*) { no_cuda("event_record"); }
float event_elapsed_ms(void*, void*) { no_cuda("event_elapsed_ms"); }
double measure_read_bandwidth_gbs(std::size_t, int, void*) { no_cuda("measure_read_bandwidth_gbs"); }
void embed_rows(const std::int32_t*, int, const EmbedTable&, float*, Dtype, void*) { no_cuda("embed_rows"); }
void rms_norm(const float*, const float*, void*, int, std::int64_t, float, Dtype, void*) { no_cuda("rms_norm"); }
void add_rms_norm(float*, const void*, const float*, const float*, void*, int, std::int64_t, float, Dtype, void*) {
  no_cuda("add_rms_norm");
}
std::int64_t attention_splits(std::int64_t pos, int n, std::int64_t split_len) {
  return (pos + n + split_len - 1) / split_len;
}
bool attention_supports_head_dim(int) { return false; }
std::int64_t attention_chunks(int n, int group, int head_dim) {
  const int chunk = head_dim >= 256 ? 8 : 16;
  return (static_cast<std::int64_t>(n) * group + chunk - 1) / chunk;
}
void attention(const QkvArgs&, const AttentionArgs&, Dtype, void*) { no_cuda("attention"); }
void swiglu(const void*, std::int64_t, const void*, std::int64_t, const float*, const float*, void*, int, std::int64_t,
            Dtype, void*) {
  no_cuda("swiglu");
}
void dense_linear(const void*, const void*, void*, int, std::int64_t, std::int64_t, Dtype, void*) {
  no_cuda("dense_linear");
}
void fill_uniform(void*, Dtype, std::int64_t, std::int64_t, std::int64_t, std::uint64_t, float, void*) {
  no_cuda("fill_uniform");
}

}  // namespace qmm::model::cuda
