// qmm._qmm: the nanobind extension behind the `qmm` Python package. It uses qmm's public C++ API
// only (include/qmm/*.h).
//
// Every array argument arrives as any object that speaks DLPack (or the buffer protocol) and is
// wrapped as a qmm::TensorView over the caller's memory: no copy, the strides as given (qmm
// rejects non-contiguous views with its own error). Outputs are allocated by the caller's
// framework through an `alloc(shape, dtype_name)` callback that the Python layer binds to
// numpy.empty / torch.empty / cupy.empty on the input's device, and then filled by the *_into
// ops, so the only allocation on the call path is the framework's own (CUDA-graph friendly).
//
// Two reinterpretations exist because the array libraries lack dtypes that qmm uses; each is
// enabled per argument by the Python layer, never globally:
//  - kPackedWeight: an int32 array is accepted where qmm wants the uint32 packed weight (PyTorch's
//    uint32 is a "shell" dtype that older releases cannot export; the bits are identical).
//  - kBfloat16Bits: a uint16 array holds bfloat16 bits (NumPy has no bfloat16; the Python layer
//    views ml_dtypes.bfloat16 arrays as uint16 before calling).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "qmm/qmm.h"

namespace nb = nanobind;

namespace {

using InArray = nb::ndarray<nb::ro>;
using OutArray = nb::ndarray<>;

enum ArgFlags : unsigned {
  kNone = 0,
  kPackedWeight = 1u << 0,
  kBfloat16Bits = 1u << 1,
};

// DLPack device types (dlpack.h's DLDeviceType).
constexpr int kDLCPU = 1;
constexpr int kDLCUDA = 2;
constexpr int kDLCUDAHost = 3;
constexpr int kDLCUDAManaged = 13;

[[noreturn]] void fail(const char* op, const std::string& msg) {
  throw qmm::Error(std::string("[") + op + "] " + msg);
}

std::string dlpack_dtype_name(nb::dlpack::dtype dt) {
  const char* kind = "unknown";
  switch (static_cast<nb::dlpack::dtype_code>(dt.code)) {
    case nb::dlpack::dtype_code::Int: kind = "int"; break;
    case nb::dlpack::dtype_code::UInt: kind = "uint"; break;
    case nb::dlpack::dtype_code::Float: kind = "float"; break;
    case nb::dlpack::dtype_code::Bfloat: kind = "bfloat"; break;
    case nb::dlpack::dtype_code::Complex: kind = "complex"; break;
    case nb::dlpack::dtype_code::Bool: return "bool";
    default: break;
  }
  std::string s = kind + std::to_string(dt.bits);
  if (dt.lanes != 1) s += "x" + std::to_string(dt.lanes);
  return s;
}

qmm::Dtype dtype_of(const char* op, const char* name, nb::dlpack::dtype dt, unsigned flags) {
  using C = nb::dlpack::dtype_code;
  const auto code = static_cast<C>(dt.code);
  if (dt.lanes == 1) {
    if (code == C::Float && dt.bits == 32) return qmm::Dtype::float32;
    if (code == C::Float && dt.bits == 16) return qmm::Dtype::float16;
    if (code == C::Bfloat && dt.bits == 16) return qmm::Dtype::bfloat16;
    if (code == C::UInt && dt.bits == 32) return qmm::Dtype::uint32;
    if (code == C::Int && dt.bits == 32 && (flags & kPackedWeight)) return qmm::Dtype::uint32;
    if (code == C::UInt && dt.bits == 16 && (flags & kBfloat16Bits)) return qmm::Dtype::bfloat16;
  }
  fail(op, std::string(name) + " has dtype " + dlpack_dtype_name(dt) +
               "; qmm takes float32, float16 and bfloat16 arrays and uint32 packed weights");
}

qmm::Device device_of(const char* op, const char* name, int device_type, int device_id) {
  switch (device_type) {
    case kDLCPU:
    case kDLCUDAHost:  // pinned host memory: the CPU reads it directly
      return qmm::Device::cpu();
    case kDLCUDA:
    case kDLCUDAManaged:
      return qmm::Device::cuda(device_id);
    default:
      fail(op, std::string(name) + " lives on DLPack device type " + std::to_string(device_type) +
                   "; qmm runs on the CPU and on CUDA devices");
  }
}

template <typename Array>
qmm::TensorView view_of(const char* op, const char* name, const Array& a, unsigned flags) {
  qmm::Shape shape(a.ndim()), strides(a.ndim());
  for (std::size_t i = 0; i < a.ndim(); ++i) {
    shape[i] = static_cast<std::int64_t>(a.shape(i));
    strides[i] = a.stride(i);
  }
  // An empty array's strides mean nothing (producers report zeros or anything else).
  if (qmm::numel(shape) == 0) strides = qmm::contiguous_strides(shape);
  void* data = const_cast<void*>(static_cast<const void*>(a.data()));
  return qmm::TensorView(data, std::move(shape), std::move(strides), dtype_of(op, name, a.dtype(), flags),
                         device_of(op, name, a.device_type(), a.device_id()));
}

/// Imports a read-only input array (zero-copy). Anything that is not an array is a TypeError.
InArray import_input(const char* op, const char* name, nb::handle obj) {
  InArray a;
  if (!nb::try_cast<InArray>(obj, a, /*convert=*/false)) {
    std::string what = nb::type_name(obj.type()).c_str();
    throw nb::type_error((std::string("[") + op + "] " + name + " must be an array that supports DLPack " +
                          "(NumPy, PyTorch, CuPy, ...), not " + what)
                             .c_str());
  }
  return a;
}

struct Output {
  nb::object object;  // what the Python layer returns to the user
  OutArray array;     // the same memory as seen through DLPack
  qmm::TensorView view;
};

/// Asks the framework of the inputs for an uninitialised output and wraps it. The allocator
/// returns the array, or a pair (array, DLPack capsule of it) when the framework exports a
/// capsule faster than the extension can import the array (PyTorch).
Output allocate(const char* op, const char* name, const nb::callable& alloc, const qmm::Shape& shape,
                qmm::Dtype dtype) {
  nb::list dims;
  for (auto d : shape) dims.append(d);
  Output out;
  nb::object made = alloc(nb::tuple(dims), qmm::dtype_name(dtype));
  nb::object exported = made;
  if (nb::isinstance<nb::tuple>(made) && nb::len(made) == 2) {
    out.object = made[0];
    exported = made[1];
  } else {
    out.object = made;
  }
  if (!nb::try_cast<OutArray>(exported, out.array, /*convert=*/false)) {
    fail(op, std::string("the allocator returned a ") + nb::type_name(exported.type()).c_str() +
                 " for output " + name + ", which is not a writable DLPack array");
  }
  // An output may come back as int32 (uint32 requested) or uint16 (bfloat16 requested from NumPy).
  const unsigned flags = dtype == qmm::Dtype::uint32 ? kPackedWeight : dtype == qmm::Dtype::bfloat16 ? kBfloat16Bits : kNone;
  out.view = view_of(op, name, out.array, flags);
  return out;
}

qmm::CallOptions options_of(std::uintptr_t stream, const std::string& kernel) {
  qmm::CallOptions o;
  o.stream.handle = reinterpret_cast<void*>(stream);
  o.kernel = kernel;
  return o;
}

unsigned bf16_flag(unsigned mask, int index) { return (mask >> index) & 1u ? kBfloat16Bits : kNone; }

bool supported_bits(int bits) { return bits == 2 || bits == 3 || bits == 4 || bits == 5 || bits == 6 || bits == 8; }
bool supported_group(int g) { return g == 32 || g == 64 || g == 128; }

// ---- ops ------------------------------------------------------------------------------------

nb::tuple quantize(nb::handle w_obj, int group_size, int bits, const nb::callable& alloc, std::uintptr_t stream,
                   const std::string& kernel, unsigned bf16_mask) {
  const char* op = "quantize";
  InArray w_arr = import_input(op, "w", w_obj);
  const qmm::TensorView w = view_of(op, "w", w_arr, bf16_flag(bf16_mask, 0));
  const qmm::CallOptions options = options_of(stream, kernel);

  // Allocate only for input that qmm will accept; otherwise let qmm report the problem with
  // the input (it checks every input before any output).
  const bool plausible = supported_bits(bits) && supported_group(group_size) && w.ndim() >= 2 &&
                         qmm::is_floating(w.dtype) && w.shape.back() % group_size == 0;
  if (!plausible) {
    qmm::TensorView none(nullptr, {0}, qmm::Dtype::uint32, w.device);
    qmm::quantize_into(w, none, none, none, group_size, bits, options);
    fail(op, "internal error: invalid arguments were not rejected");
  }
  qmm::Shape qshape = w.shape, sshape = w.shape;
  qshape.back() = w.shape.back() * bits / 32;
  sshape.back() = w.shape.back() / group_size;
  Output w_q = allocate(op, "w_q", alloc, qshape, qmm::Dtype::uint32);
  Output scales = allocate(op, "scales", alloc, sshape, w.dtype);
  Output biases = allocate(op, "biases", alloc, sshape, w.dtype);
  {
    nb::gil_scoped_release release;
    qmm::quantize_into(w, w_q.view, scales.view, biases.view, group_size, bits, options);
  }
  return nb::make_tuple(w_q.object, scales.object, biases.object);
}

nb::object dequantize(nb::handle w_obj, nb::handle scales_obj, nb::handle biases_obj, int group_size, int bits,
                      std::optional<std::string> dtype_name, const nb::callable& alloc, std::uintptr_t stream,
                      const std::string& kernel, unsigned bf16_mask) {
  const char* op = "dequantize";
  InArray w_arr = import_input(op, "w", w_obj);
  InArray s_arr = import_input(op, "scales", scales_obj);
  InArray b_arr = import_input(op, "biases", biases_obj);
  const qmm::TensorView w = view_of(op, "w", w_arr, kPackedWeight);
  const qmm::TensorView scales = view_of(op, "scales", s_arr, bf16_flag(bf16_mask, 1));
  const qmm::TensorView biases = view_of(op, "biases", b_arr, bf16_flag(bf16_mask, 2));
  const qmm::CallOptions options = options_of(stream, kernel);

  std::optional<qmm::Dtype> requested;
  if (dtype_name) {
    try {
      requested = qmm::parse_dtype(*dtype_name);
    } catch (const std::invalid_argument& e) {
      fail(op, e.what());
    }
  }
  const qmm::Dtype out_dtype = requested.value_or(scales.dtype);
  const std::int64_t words = w.ndim() >= 1 ? w.shape.back() : 0;
  const bool plausible = supported_bits(bits) && supported_group(group_size) && w.ndim() >= 2 &&
                         w.dtype == qmm::Dtype::uint32 && (words * 32) % bits == 0 && qmm::is_floating(out_dtype);
  if (!plausible) {
    // qmm checks the inputs first, then the output dtype.
    qmm::TensorView none(nullptr, {0}, out_dtype, w.device);
    qmm::dequantize_into(w, scales, biases, none, group_size, bits, options);
    fail(op, "internal error: invalid arguments were not rejected");
  }
  qmm::Shape shape = w.shape;
  shape.back() = words * 32 / bits;
  Output out = allocate(op, "out", alloc, shape, out_dtype);
  {
    nb::gil_scoped_release release;
    qmm::dequantize_into(w, scales, biases, out.view, group_size, bits, options);
  }
  return out.object;
}

nb::object quantized_matmul(nb::handle x_obj, nb::handle w_obj, nb::handle scales_obj, nb::handle biases_obj,
                            bool transpose, int group_size, int bits, const nb::callable& alloc,
                            std::uintptr_t stream, const std::string& kernel, unsigned bf16_mask) {
  const char* op = "quantized_matmul";
  InArray x_arr = import_input(op, "x", x_obj);
  InArray w_arr = import_input(op, "w", w_obj);
  InArray s_arr = import_input(op, "scales", scales_obj);
  InArray b_arr = import_input(op, "biases", biases_obj);
  const qmm::TensorView x = view_of(op, "x", x_arr, bf16_flag(bf16_mask, 0));
  const qmm::TensorView w = view_of(op, "w", w_arr, kPackedWeight);
  const qmm::TensorView scales = view_of(op, "scales", s_arr, bf16_flag(bf16_mask, 2));
  const qmm::TensorView biases = view_of(op, "biases", b_arr, bf16_flag(bf16_mask, 3));
  const qmm::CallOptions options = options_of(stream, kernel);

  const auto [shape, dtype] = qmm::quantized_matmul_output(x, w, scales, biases, transpose, group_size, bits);
  Output out = allocate(op, "out", alloc, shape, dtype);
  {
    nb::gil_scoped_release release;
    qmm::quantized_matmul_into(x, w, scales, biases, out.view, transpose, group_size, bits, options);
  }
  return out.object;
}

/// Validates like quantized_matmul and returns (shape, dtype name) without computing anything.
nb::tuple quantized_matmul_output(nb::handle x_obj, nb::handle w_obj, nb::handle scales_obj, nb::handle biases_obj,
                                  bool transpose, int group_size, int bits, unsigned bf16_mask) {
  const char* op = "quantized_matmul";
  InArray x_arr = import_input(op, "x", x_obj);
  InArray w_arr = import_input(op, "w", w_obj);
  InArray s_arr = import_input(op, "scales", scales_obj);
  InArray b_arr = import_input(op, "biases", biases_obj);
  const auto [shape, dtype] = qmm::quantized_matmul_output(
      view_of(op, "x", x_arr, bf16_flag(bf16_mask, 0)), view_of(op, "w", w_arr, kPackedWeight),
      view_of(op, "scales", s_arr, bf16_flag(bf16_mask, 2)), view_of(op, "biases", b_arr, bf16_flag(bf16_mask, 3)),
      transpose, group_size, bits);
  nb::list dims;
  for (auto d : shape) dims.append(d);
  return nb::make_tuple(nb::tuple(dims), qmm::dtype_name(dtype));
}

nb::dict describe_quantized_matmul(nb::handle x_obj, nb::handle w_obj, nb::handle scales_obj, nb::handle biases_obj,
                                   bool transpose, int group_size, int bits, const std::string& kernel,
                                   unsigned bf16_mask) {
  const char* op = "quantized_matmul";
  InArray x_arr = import_input(op, "x", x_obj);
  InArray w_arr = import_input(op, "w", w_obj);
  InArray s_arr = import_input(op, "scales", scales_obj);
  InArray b_arr = import_input(op, "biases", biases_obj);
  const qmm::LaunchInfo info = qmm::describe_quantized_matmul(
      view_of(op, "x", x_arr, bf16_flag(bf16_mask, 0)), view_of(op, "w", w_arr, kPackedWeight),
      view_of(op, "scales", s_arr, bf16_flag(bf16_mask, 2)), view_of(op, "biases", b_arr, bf16_flag(bf16_mask, 3)),
      transpose, group_size, bits, options_of(0, kernel));
  nb::dict d;
  d["kernel"] = info.kernel;
  d["device"] = qmm::device_name(info.device);
  d["grid"] = nb::make_tuple(info.grid[0], info.grid[1], info.grid[2]);
  d["block_threads"] = info.block_threads;
  d["shared_bytes"] = info.shared_bytes;
  d["blocks_per_sm"] = info.blocks_per_sm;
  d["multiprocessors"] = info.multiprocessors;
  d["split_k"] = info.split_k;
  d["weight_bytes"] = info.weight_bytes;
  d["min_weight_bytes"] = info.min_weight_bytes;
  d["workspace_bytes"] = info.workspace_bytes;
  d["waves"] = info.waves();
  return d;
}

/// What the extension sees for an input: for tests that check that nothing was copied.
nb::dict view_info(nb::handle obj, unsigned flags) {
  InArray a = import_input("view_info", "array", obj);
  const qmm::TensorView v = view_of("view_info", "array", a, flags);
  nb::dict d;
  d["data"] = reinterpret_cast<std::uintptr_t>(v.data);
  nb::list shape, strides;
  for (auto x : v.shape) shape.append(x);
  for (auto x : v.strides) strides.append(x);
  d["shape"] = nb::tuple(shape);
  d["strides"] = nb::tuple(strides);
  d["dtype"] = qmm::dtype_name(v.dtype);
  d["device"] = qmm::device_name(v.device);
  return d;
}

qmm::Device parse_device(const std::string& name) {
  if (name == "cpu") return qmm::Device::cpu();
  if (name == "cuda") return qmm::Device::cuda(0);
  if (name.rfind("cuda:", 0) == 0) {
    try {
      std::size_t used = 0;
      const int index = std::stoi(name.substr(5), &used);
      if (used == name.size() - 5 && index >= 0) return qmm::Device::cuda(index);
    } catch (const std::exception&) {
    }
  }
  throw qmm::Error("[device] unknown device '" + name + "' (expected 'cpu', 'cuda' or 'cuda:N')");
}

nb::dict device_info(const std::string& name) {
  const qmm::DeviceInfo info = qmm::device_info(parse_device(name));
  nb::dict d;
  d["device"] = qmm::device_name(info.device);
  d["name"] = info.name;
  d["multiprocessors"] = info.multiprocessors;
  d["compute_capability"] = info.compute_capability;
  d["l2_bytes"] = info.l2_bytes;
  d["memory_bytes"] = info.memory_bytes;
  d["peak_bandwidth_gbs"] = info.peak_bandwidth_gbs;
  d["max_shared_per_block"] = info.max_shared_per_block;
  return d;
}

}  // namespace

NB_MODULE(_qmm, m) {
  m.doc() =
      "qmm's C++ extension. Use the functions of the `qmm` package instead: they pick the "
      "allocator and CUDA stream of the input's framework and call these.";

  // qmm::Error is a std::invalid_argument (nanobind maps that to ValueError too); registering it
  // explicitly keeps the mapping should the hierarchy ever change.
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const qmm::Error& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });

  m.attr("__version__") = QMM_VERSION_STRING;
#ifdef QMM_HAVE_CUDA
  m.attr("cuda_built") = true;
#else
  m.attr("cuda_built") = false;
#endif
  m.attr("FLAG_BFLOAT16_BITS") = static_cast<unsigned>(kBfloat16Bits);

  m.def("quantize", &quantize, nb::arg("w"), nb::arg("group_size"), nb::arg("bits"), nb::arg("alloc"),
        nb::arg("stream"), nb::arg("kernel"), nb::arg("bf16_mask"),
        "Quantize `w` into arrays made by `alloc(shape, dtype_name)`; returns (w_q, scales, biases).");
  m.def("dequantize", &dequantize, nb::arg("w"), nb::arg("scales"), nb::arg("biases"), nb::arg("group_size"),
        nb::arg("bits"), nb::arg("dtype").none(), nb::arg("alloc"), nb::arg("stream"), nb::arg("kernel"),
        nb::arg("bf16_mask"), "Dequantize into an array made by `alloc(shape, dtype_name)`.");
  m.def("quantized_matmul", &quantized_matmul, nb::arg("x"), nb::arg("w"), nb::arg("scales"), nb::arg("biases"),
        nb::arg("transpose"), nb::arg("group_size"), nb::arg("bits"), nb::arg("alloc"), nb::arg("stream"),
        nb::arg("kernel"), nb::arg("bf16_mask"),
        "x @ dequantize(w).T (or x @ dequantize(w)) into an array made by `alloc(shape, dtype_name)`.");
  m.def("quantized_matmul_output", &quantized_matmul_output, nb::arg("x"), nb::arg("w"), nb::arg("scales"),
        nb::arg("biases"), nb::arg("transpose"), nb::arg("group_size"), nb::arg("bits"), nb::arg("bf16_mask"),
        "Validate like quantized_matmul; return (shape, dtype_name) of its output.");
  m.def("describe_quantized_matmul", &describe_quantized_matmul, nb::arg("x"), nb::arg("w"), nb::arg("scales"),
        nb::arg("biases"), nb::arg("transpose"), nb::arg("group_size"), nb::arg("bits"), nb::arg("kernel"),
        nb::arg("bf16_mask"), "How a quantized_matmul call would run (kernel, grid, split-K, bytes).");
  m.def("view_info", &view_info, nb::arg("array"), nb::arg("flags") = 0,
        "The qmm::TensorView the extension makes of an array (data pointer, shape, strides, dtype, "
        "device); flags: 1 = int32 as packed uint32, 2 = uint16 as bfloat16 bits. For tests.");
  m.attr("FLAG_PACKED_WEIGHT") = static_cast<unsigned>(kPackedWeight);
  m.def("kernel_names", [](const std::string& device, const std::string& op) {
        return qmm::kernel_names(parse_device(device), op);
      }, nb::arg("device"), nb::arg("op"), "Kernel configurations the `kernel=` argument accepts.");
  m.def("cuda_available", &qmm::cuda_available, "True if this build has CUDA and a CUDA device is present.");
  m.def("cuda_device_count", &qmm::cuda_device_count, "Number of CUDA devices qmm sees.");
  m.def("device_info", &device_info, nb::arg("device"), "Facts about a device ('cpu' or 'cuda:N').");
  m.def("synchronize", [](std::uintptr_t stream) {
        nb::gil_scoped_release release;
        qmm::synchronize(qmm::Stream{reinterpret_cast<void*>(stream)});
      }, nb::arg("stream") = 0, "Wait for the work queued on a CUDA stream (0: the legacy default stream).");
  m.def("parse_dtype", [](const std::string& name) {
        try {
          return std::string(qmm::dtype_name(qmm::parse_dtype(name)));
        } catch (const std::invalid_argument& e) {
          throw qmm::Error(std::string("[dtype] ") + e.what());
        }
      }, nb::arg("name"), "qmm's name for a dtype spelling ('fp16' -> 'float16').");
}
