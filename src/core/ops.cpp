// The op front end: validates every argument the way MLX does (plus null data, strides and
// aliasing), builds backend problems, and dispatches on the inputs' device. Nothing is written
// before validation has passed.
#include "qmm/ops.h"

#include <algorithm>

#include "src/core/problem.h"
#include "src/core/runtime.h"
#include "src/cpu/cpu_backend.h"
#include "src/format/affine.h"

namespace qmm {
namespace {

using detail::DequantizeProblem;
using detail::MatmulProblem;
using detail::QuantizedMatrix;
using detail::QuantizeProblem;

[[noreturn]] void fail(const char* op, const std::string& msg) {
  throw Error(std::string("[") + op + "] " + msg);
}

void check_bits_group(const char* op, int group_size, int bits) {
  if (!format::is_supported_bits(bits)) {
    fail(op, "bits=" + std::to_string(bits) +
                 " is not supported; the supported bits are 2, 3, 4, 5, 6 and 8.");
  }
  if (!format::is_supported_group_size(group_size)) {
    fail(op, "group_size=" + std::to_string(group_size) +
                 " is not supported; the supported group sizes are 32, 64 and 128.");
  }
}

/// Data present, row-major contiguous.
void check_memory(const char* op, const char* name, const TensorView& t) {
  if (t.strides.size() != t.shape.size()) {
    fail(op, std::string(name) + " has " + std::to_string(t.strides.size()) + " strides for shape " +
                 shape_to_string(t.shape));
  }
  for (auto d : t.shape) {
    if (d < 0) fail(op, std::string(name) + " has a negative dimension: " + shape_to_string(t.shape));
  }
  if (t.numel() > 0 && t.data == nullptr) fail(op, std::string(name) + " has null data");
  if (!t.is_contiguous()) {
    fail(op, std::string(name) + " with shape " + shape_to_string(t.shape) + " has strides " +
                 shape_to_string(t.strides) + "; only row-major contiguous tensors are supported");
  }
}

void check_same_device(const char* op, const std::vector<std::pair<const char*, const TensorView*>>& ts) {
  const Device d = ts.front().second->device;
  for (const auto& [name, t] : ts) {
    if (t->device != d) {
      fail(op, std::string("all tensors must be on one device, but ") + ts.front().first + " is on " +
                   device_name(d) + " and " + name + " is on " + device_name(t->device));
    }
    if (t->device.type == DeviceType::cuda && !detail::cuda_runtime_available()) {
      fail(op, std::string(name) + " is on " + device_name(t->device) +
                   " but this build or machine has no CUDA device");
    }
  }
}

bool overlaps(const TensorView& a, const TensorView& b) {
  if (a.numel() == 0 || b.numel() == 0 || a.device != b.device) return false;
  const auto* a0 = static_cast<const char*>(a.data);
  const auto* b0 = static_cast<const char*>(b.data);
  return a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes();
}

void check_no_alias(const char* op, const char* out_name, const TensorView& out,
                    const std::vector<std::pair<const char*, const TensorView*>>& others) {
  for (const auto& [name, t] : others) {
    if (overlaps(out, *t)) {
      fail(op, std::string("output ") + out_name + " overlaps " + name +
                   " in memory; outputs must not alias inputs or other outputs");
    }
  }
}

void check_output(const char* op, const char* name, const TensorView& out, const Shape& shape, Dtype dtype) {
  if (out.shape != shape || out.dtype != dtype) {
    fail(op, std::string("output ") + name + " must be " + shape_to_string(shape) + " " + dtype_name(dtype) +
                 " but is " + shape_to_string(out.shape) + " " + dtype_name(out.dtype));
  }
}

void check_kernel(const char* op, const Device& device, const std::string& kernel) {
  if (kernel.empty() || is_kernel_name(device, op, kernel)) return;
  std::string list;
  for (const auto& n : kernel_names(device, op)) list += (list.empty() ? "" : ", ") + n;
  fail(op, "unknown kernel '" + kernel + "' for " + device_name(device) + " (available: " + list + ")");
}

Shape batch_of(const Shape& s, std::size_t trailing) {
  return s.size() > trailing ? Shape(s.begin(), s.end() - static_cast<std::ptrdiff_t>(trailing)) : Shape{};
}

/// Checks w_q, scales and biases as a (batched) quantized matrix and returns its logical
/// (rows, cols): rows = w_q.shape[-2], cols = packed words * 32 / bits.
QuantizedMatrix check_quantized(const char* op, const TensorView& w_q, const TensorView& scales,
                                const TensorView& biases, int group_size, int bits) {
  check_bits_group(op, group_size, bits);
  if (w_q.dtype != Dtype::uint32) {
    fail(op, "the quantized weight must be uint32 but is " + std::string(dtype_name(w_q.dtype)));
  }
  if (w_q.ndim() < 2) {
    fail(op, "the quantized weight must have at least 2 dimensions but has shape " + shape_to_string(w_q.shape));
  }
  if (!is_floating(scales.dtype)) {
    fail(op, "scales must be float32, float16 or bfloat16 but are " + std::string(dtype_name(scales.dtype)));
  }
  if (scales.shape != biases.shape) {
    fail(op, "scales and biases must have the same shape but have " + shape_to_string(scales.shape) +
                 " and " + shape_to_string(biases.shape));
  }
  if (scales.dtype != biases.dtype) {
    fail(op, "scales and biases must have the same dtype but are " + std::string(dtype_name(scales.dtype)) +
                 " and " + dtype_name(biases.dtype));
  }
  const std::int64_t words = w_q.dim(-1);
  const std::int64_t cols = words * 32 / bits;
  const bool shapes_ok = scales.ndim() == w_q.ndim() &&
                         std::equal(w_q.shape.begin(), w_q.shape.end() - 1, scales.shape.begin()) &&
                         (words * 32) % bits == 0 && scales.dim(-1) * group_size == cols;
  if (!shapes_ok) {
    // Say what would have fitted, so the caller sees which of bits, group_size or the shapes is off.
    std::string why;
    if ((words * 32) % bits != 0) {
      why = "a row of " + std::to_string(words) + " words (" + std::to_string(words * 32) +
            " bits) is not a whole number of " + std::to_string(bits) + "-bit elements";
    } else if (cols % group_size != 0) {
      why = "a row of " + std::to_string(cols) + " elements is not a whole number of groups";
    } else {
      Shape expected = w_q.shape;
      expected.back() = cols / group_size;
      why = "rows of " + std::to_string(cols) + " elements need scales of shape " + shape_to_string(expected);
    }
    fail(op, "the shapes of the weight and scales are incompatible based on bits and group_size: w_q " +
                 shape_to_string(w_q.shape) + " and scales " + shape_to_string(scales.shape) +
                 " with group_size=" + std::to_string(group_size) + " and bits=" + std::to_string(bits) + ": " + why);
  }
  check_memory(op, "w_q", w_q);
  check_memory(op, "scales", scales);
  check_memory(op, "biases", biases);
  QuantizedMatrix m;
  m.w_q = static_cast<const std::uint32_t*>(w_q.data);
  m.scales = scales.data;
  m.biases = biases.data;
  m.dtype = scales.dtype;
  m.rows = w_q.dim(-2);
  m.cols = cols;
  m.bits = bits;
  m.group_size = group_size;
  return m;
}

/// NumPy broadcasting of two batch shapes.
Shape broadcast_batch(const char* op, const Shape& a, const Shape& b) {
  const std::size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (std::size_t i = 0; i < n; ++i) {
    const std::int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    const std::int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    if (da != db && da != 1 && db != 1) {
      fail(op, "the batch shapes of x " + shape_to_string(a) + " and of the weight " + shape_to_string(b) +
                   " cannot be broadcast together");
    }
    out[i] = da == 1 ? db : da;
  }
  return out;
}

/// Flat index into a batch shape `src` (right-aligned, broadcast) for multi-index `idx` of `full`.
std::int64_t broadcast_index(const Shape& idx, const Shape& full, const Shape& src) {
  std::int64_t flat = 0;
  const std::size_t off = full.size() - src.size();
  for (std::size_t i = 0; i < src.size(); ++i) {
    flat = flat * src[i] + (src[i] == 1 ? 0 : idx[i + off]);
  }
  return flat;
}

struct MatmulPlan {
  Shape out_shape;
  Dtype out_dtype;
  std::vector<MatmulProblem> problems;  // pointers filled in except out
  std::vector<std::int64_t> out_offsets;  // elements
};

MatmulPlan plan_matmul(const TensorView& x, const TensorView& w_q, const TensorView& scales,
                       const TensorView& biases, bool transpose, int group_size, int bits) {
  const char* op = "quantized_matmul";
  check_same_device(op, {{"x", &x}, {"w_q", &w_q}, {"scales", &scales}, {"biases", &biases}});
  const QuantizedMatrix w = check_quantized(op, w_q, scales, biases, group_size, bits);
  if (!is_floating(x.dtype)) {
    fail(op, "x must be float32, float16 or bfloat16 but is " + std::string(dtype_name(x.dtype)));
  }
  if (x.ndim() < 1) fail(op, "x must have at least 1 dimension");
  const std::int64_t K = transpose ? w.cols : w.rows;
  const std::int64_t N = transpose ? w.rows : w.cols;
  if (x.dim(-1) != K) {
    fail(op, "the last dimension of x " + shape_to_string(x.shape) + " does not match the weight: w_q " +
                 shape_to_string(w_q.shape) + " with group_size=" + std::to_string(group_size) + ", bits=" +
                 std::to_string(bits) + " and transpose=" + (transpose ? "true" : "false") +
                 " expands to K=" + std::to_string(K) + ", N=" + std::to_string(N));
  }
  check_memory(op, "x", x);

  const std::int64_t M = x.ndim() >= 2 ? x.dim(-2) : 1;
  const Shape x_batch = batch_of(x.shape, 2);
  const Shape w_batch = batch_of(w_q.shape, 2);
  const Shape batch = broadcast_batch(op, x_batch, w_batch);

  MatmulPlan plan;
  plan.out_dtype = promote_types(x.dtype, scales.dtype);
  plan.out_shape = batch;
  if (x.ndim() >= 2) plan.out_shape.push_back(M);
  plan.out_shape.push_back(N);

  MatmulProblem base;
  base.x_dtype = x.dtype;
  base.out_dtype = plan.out_dtype;
  base.N = N;
  base.K = K;
  base.transpose = transpose;
  base.w = w;
  const std::int64_t w_words = w.rows * format::packed_words(w.cols, bits);
  const std::int64_t w_groups = w.rows * (w.cols / group_size);
  const std::size_t sbytes = itemsize(scales.dtype);
  const std::size_t xbytes = itemsize(x.dtype);

  if (numel(w_batch) == 1) {
    // One weight matrix: every row of x (all batches) is one M x K problem.
    base.M = numel(batch) * M;
    base.x = x.data;
    plan.problems.push_back(base);
    plan.out_offsets.push_back(0);
    return plan;
  }
  const std::int64_t nb = numel(batch);
  Shape idx(batch.size(), 0);
  for (std::int64_t b = 0; b < nb; ++b) {
    MatmulProblem p = base;
    p.M = M;
    const std::int64_t xi = broadcast_index(idx, batch, x_batch);
    const std::int64_t wi = broadcast_index(idx, batch, w_batch);
    p.x = static_cast<const char*>(x.data) + static_cast<std::size_t>(xi * M * K) * xbytes;
    p.w.w_q = w.w_q + wi * w_words;
    p.w.scales = static_cast<const char*>(w.scales) + static_cast<std::size_t>(wi * w_groups) * sbytes;
    p.w.biases = static_cast<const char*>(w.biases) + static_cast<std::size_t>(wi * w_groups) * sbytes;
    plan.problems.push_back(p);
    plan.out_offsets.push_back(b * M * N);
    for (std::size_t d = batch.size(); d-- > 0;) {  // increment the multi-index
      if (++idx[d] < batch[d]) break;
      idx[d] = 0;
    }
  }
  return plan;
}

}  // namespace

// ---- quantize -------------------------------------------------------------------------------

namespace {
/// Checks w for quantize and returns the shapes of (w_q, scales/biases). Shared by quantize and
/// quantize_into, so both reject bad input with the same message before anything is allocated.
std::pair<Shape, Shape> plan_quantize(const TensorView& w, int group_size, int bits) {
  const char* op = "quantize";
  check_bits_group(op, group_size, bits);
  if (w.ndim() < 2) {
    fail(op, "the matrix to be quantized must have at least 2 dimensions but has shape " + shape_to_string(w.shape));
  }
  if (w.dim(-1) % group_size != 0) {
    fail(op, "the last dimension of w " + shape_to_string(w.shape) + " must be divisible by group_size=" +
                 std::to_string(group_size));
  }
  if (!is_floating(w.dtype)) fail(op, "w must be float32, float16 or bfloat16 but is " + std::string(dtype_name(w.dtype)));
  check_memory(op, "w", w);
  Shape qshape = w.shape;
  qshape.back() = format::packed_words(w.dim(-1), bits);
  Shape sshape = w.shape;
  sshape.back() = w.dim(-1) / group_size;
  return {qshape, sshape};
}
}  // namespace

void quantize_into(const TensorView& w, const TensorView& w_q, const TensorView& scales,
                   const TensorView& biases, int group_size, int bits, const CallOptions& options) {
  const char* op = "quantize";
  const auto [qshape, sshape] = plan_quantize(w, group_size, bits);
  check_same_device(op, {{"w", &w}, {"w_q", &w_q}, {"scales", &scales}, {"biases", &biases}});
  check_output(op, "w_q", w_q, qshape, Dtype::uint32);
  check_output(op, "scales", scales, sshape, w.dtype);
  check_output(op, "biases", biases, sshape, w.dtype);
  check_memory(op, "w_q", w_q);
  check_memory(op, "scales", scales);
  check_memory(op, "biases", biases);
  check_no_alias(op, "w_q", w_q, {{"w", &w}, {"scales", &scales}, {"biases", &biases}});
  check_no_alias(op, "scales", scales, {{"w", &w}, {"biases", &biases}});
  check_no_alias(op, "biases", biases, {{"w", &w}});
  check_kernel(op, w.device, options.kernel);

  QuantizeProblem p;
  p.w = w.data;
  p.dtype = w.dtype;
  p.cols = w.dim(-1);
  p.rows = p.cols == 0 ? 0 : w.numel() / p.cols;
  p.bits = bits;
  p.group_size = group_size;
  p.w_q = static_cast<std::uint32_t*>(w_q.data);
  p.scales = scales.data;
  p.biases = biases.data;
  if (p.rows == 0 || p.cols == 0) return;
  if (w.device.type == DeviceType::cuda) {
    detail::CudaDeviceScope on_device(w.device.index);
    detail::cuda_quantize(p, options.stream, options.kernel);
  } else {
    detail::cpu_quantize(p, options.kernel);
  }
}

QuantizedWeights quantize(const TensorView& w, int group_size, int bits, const CallOptions& options) {
  const auto [qshape, sshape] = plan_quantize(w, group_size, bits);  // before allocating
  check_same_device("quantize", {{"w", &w}});
  QuantizedWeights out{Tensor::empty(qshape, Dtype::uint32, w.device), Tensor::empty(sshape, w.dtype, w.device),
                       Tensor::empty(sshape, w.dtype, w.device)};
  quantize_into(w, out.w_q, out.scales, out.biases, group_size, bits, options);
  return out;
}

// ---- dequantize -----------------------------------------------------------------------------

namespace {
DequantizeProblem plan_dequantize(const TensorView& w_q, const TensorView& scales, const TensorView& biases,
                                  int group_size, int bits, Shape& out_shape) {
  const char* op = "dequantize";
  check_same_device(op, {{"w_q", &w_q}, {"scales", &scales}, {"biases", &biases}});
  const QuantizedMatrix w = check_quantized(op, w_q, scales, biases, group_size, bits);
  out_shape = w_q.shape;
  out_shape.back() = w.cols;
  DequantizeProblem p;
  p.w = w;
  p.w.rows = w.cols == 0 ? 0 : numel(out_shape) / w.cols;  // all batches as one tall matrix
  return p;
}
}  // namespace

void dequantize_into(const TensorView& w_q, const TensorView& scales, const TensorView& biases,
                     const TensorView& out, int group_size, int bits, const CallOptions& options) {
  const char* op = "dequantize";
  Shape out_shape;
  DequantizeProblem p = plan_dequantize(w_q, scales, biases, group_size, bits, out_shape);
  if (!is_floating(out.dtype)) fail(op, "the output dtype must be a float type, not " + std::string(dtype_name(out.dtype)));
  check_output(op, "out", out, out_shape, out.dtype);
  check_memory(op, "out", out);
  check_same_device(op, {{"w_q", &w_q}, {"out", &out}});
  check_no_alias(op, "out", out, {{"w_q", &w_q}, {"scales", &scales}, {"biases", &biases}});
  check_kernel(op, out.device, options.kernel);
  p.out = out.data;
  p.out_dtype = out.dtype;
  if (p.w.rows == 0 || p.w.cols == 0) return;
  if (out.device.type == DeviceType::cuda) {
    detail::CudaDeviceScope on_device(out.device.index);
    detail::cuda_dequantize(p, options.stream, options.kernel);
  } else {
    detail::cpu_dequantize(p, options.kernel);
  }
}

Tensor dequantize(const TensorView& w_q, const TensorView& scales, const TensorView& biases, int group_size,
                  int bits, std::optional<Dtype> dtype, const CallOptions& options) {
  Shape out_shape;
  plan_dequantize(w_q, scales, biases, group_size, bits, out_shape);
  const Dtype out_dtype = dtype.value_or(scales.dtype);
  if (!is_floating(out_dtype)) {
    fail("dequantize", "the output dtype must be a float type, not " + std::string(dtype_name(out_dtype)));
  }
  Tensor out = Tensor::empty(out_shape, out_dtype, w_q.device);
  dequantize_into(w_q, scales, biases, out, group_size, bits, options);
  return out;
}

// ---- quantized_matmul -----------------------------------------------------------------------

std::pair<Shape, Dtype> quantized_matmul_output(const TensorView& x, const TensorView& w_q, const TensorView& scales,
                                                const TensorView& biases, bool transpose, int group_size, int bits) {
  MatmulPlan plan = plan_matmul(x, w_q, scales, biases, transpose, group_size, bits);
  return {plan.out_shape, plan.out_dtype};
}

void quantized_matmul_into(const TensorView& x, const TensorView& w_q, const TensorView& scales,
                           const TensorView& biases, const TensorView& out, bool transpose, int group_size,
                           int bits, const CallOptions& options) {
  const char* op = "quantized_matmul";
  MatmulPlan plan = plan_matmul(x, w_q, scales, biases, transpose, group_size, bits);
  check_output(op, "out", out, plan.out_shape, plan.out_dtype);
  check_memory(op, "out", out);
  check_same_device(op, {{"x", &x}, {"out", &out}});
  check_no_alias(op, "out", out, {{"x", &x}, {"w_q", &w_q}, {"scales", &scales}, {"biases", &biases}});
  check_kernel(op, out.device, options.kernel);
  const std::size_t obytes = itemsize(plan.out_dtype);
  for (std::size_t i = 0; i < plan.problems.size(); ++i) {
    plan.problems[i].out = static_cast<char*>(out.data) + static_cast<std::size_t>(plan.out_offsets[i]) * obytes;
  }
  if (out.numel() == 0) return;
  if (x.device.type == DeviceType::cuda) {
    detail::CudaDeviceScope on_device(x.device.index);
    detail::cuda_quantized_matmul(plan.problems, options.stream, options.kernel);
  } else {
    detail::cpu_quantized_matmul(plan.problems, options.kernel);
  }
}

Tensor quantized_matmul(const TensorView& x, const TensorView& w_q, const TensorView& scales, const TensorView& biases,
                        bool transpose, int group_size, int bits, const CallOptions& options) {
  MatmulPlan plan = plan_matmul(x, w_q, scales, biases, transpose, group_size, bits);
  Tensor out = Tensor::empty(plan.out_shape, plan.out_dtype, x.device);
  quantized_matmul_into(x, w_q, scales, biases, out, transpose, group_size, bits, options);
  return out;
}

// ---- kernels and devices --------------------------------------------------------------------

std::vector<std::string> kernel_names(const Device& device, const std::string& op) {
  if (op != "quantize" && op != "dequantize" && op != "quantized_matmul") {
    throw Error("[kernel_names] unknown op '" + op + "' (expected quantize, dequantize or quantized_matmul)");
  }
  return device.type == DeviceType::cuda ? detail::cuda_kernel_names(op) : detail::cpu_kernel_names(op);
}

double LaunchInfo::waves() const {
  const double slots = static_cast<double>(multiprocessors) * std::max(1, blocks_per_sm);
  return slots > 0 ? static_cast<double>(grid[0]) * grid[1] * grid[2] / slots : 0.0;
}

LaunchInfo describe_quantized_matmul(const TensorView& x, const TensorView& w_q, const TensorView& scales,
                                     const TensorView& biases, bool transpose, int group_size, int bits,
                                     const CallOptions& options) {
  MatmulPlan plan = plan_matmul(x, w_q, scales, biases, transpose, group_size, bits);
  check_kernel("quantized_matmul", x.device, options.kernel);
  if (x.device.type == DeviceType::cuda) {
    detail::CudaDeviceScope on_device(x.device.index);
    return detail::cuda_describe(plan.problems, options.kernel);
  }
  return detail::cpu_describe(plan.problems, options.kernel);
}

int cuda_device_count() { return detail::cuda_device_count(); }

DeviceInfo device_info(const Device& device) {
  if (device.type == DeviceType::cuda) {
    if (device.index < 0 || device.index >= detail::cuda_device_count()) {
      throw Error("[device_info] no CUDA device " + std::to_string(device.index));
    }
    return detail::cuda_device_info(device.index);
  }
  return detail::cpu_device_info();
}

bool is_kernel_name(const Device& device, const std::string& op, const std::string& name) {
  const auto names = kernel_names(device, op);
  // A listed name; a tensor-core tile name (qmv_<family>_m<rows>) followed by "_b<digits>" (a
  // block count); a qmv_mma name (tile or family) followed by "_c<digits>" (a cluster size), and
  // that followed by "_k2" (K split in two inside each block); or any of those qmv_mma names
  // followed by "_wg" (wgmma MMAs). The backend checks the numbers and the combinations.
  const auto ends_with = [&name](const std::string& tail) {
    return name.rfind("qmv_mma", 0) == 0 && name.size() > tail.size() &&
           name.compare(name.size() - tail.size(), tail.size(), tail) == 0;
  };
  for (const std::string tail : {"_wg", "_k2"}) {
    if (!ends_with(tail)) continue;
    const std::string base = name.substr(0, name.size() - tail.size());
    if (tail == "_k2" && base.find("_c") == std::string::npos) return false;
    return base.rfind("qmv_mma", 0) == 0 && is_kernel_name(device, op, base);
  }
  const auto has_suffix = [&name](const std::string& n, const char* tag) {
    return name.size() > n.size() + 2 && name.compare(0, n.size(), n) == 0 && name.compare(n.size(), 2, tag) == 0 &&
           name.find_first_not_of("0123456789", n.size() + 2) == std::string::npos;
  };
  return std::any_of(names.begin(), names.end(), [&](const std::string& n) {
    if (name == n) return true;
    const bool tile = n.rfind("qmv_", 0) == 0 && n.find("_m", 4) != std::string::npos;
    return (tile && has_suffix(n, "_b")) || (n.rfind("qmv_mma", 0) == 0 && has_suffix(n, "_c"));
  });
}

bool cuda_available() { return detail::cuda_runtime_available(); }

void synchronize(Stream stream) { detail::cuda_synchronize(stream); }

}  // namespace qmm
