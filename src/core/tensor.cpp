#include "qmm/tensor.h"

#include <cstring>

#include "qmm/ops.h"
#include "src/core/runtime.h"
#include "src/cpu/scalar.h"

namespace qmm {

std::int64_t numel(const Shape& shape) {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::string shape_to_string(const Shape& shape) {
  // Plain string building, no iostreams: the Python extension links its own libstdc++ pieces,
  // and ostream's locale facets crashed there (H100 machine, torch's Python).
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  if (shape.size() == 1) s += ",";
  return s + ")";
}

Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  std::int64_t s = 1;
  for (std::size_t i = shape.size(); i-- > 0;) {
    strides[i] = s;
    s *= shape[i];
  }
  return strides;
}

TensorView::TensorView(void* data_, Shape shape_, Dtype dtype_, Device device_)
    : data(data_), shape(std::move(shape_)), dtype(dtype_), device(device_) {
  strides = contiguous_strides(shape);
}

TensorView::TensorView(void* data_, Shape shape_, Shape strides_, Dtype dtype_, Device device_)
    : data(data_), shape(std::move(shape_)), strides(std::move(strides_)), dtype(dtype_),
      device(device_) {}

std::size_t TensorView::nbytes() const { return static_cast<std::size_t>(numel()) * itemsize(dtype); }

bool TensorView::is_contiguous() const {
  if (strides.size() != shape.size()) return false;
  std::int64_t expected = 1;
  for (std::size_t i = shape.size(); i-- > 0;) {
    if (shape[i] != 1 && strides[i] != expected) return false;
    expected *= shape[i];
  }
  return true;
}

std::int64_t TensorView::dim(int i) const {
  const int n = ndim();
  if (i < 0) i += n;
  if (i < 0 || i >= n) {
    throw Error("[tensor] dimension " + std::to_string(i) + " out of range for shape " +
                shape_to_string(shape));
  }
  return shape[static_cast<std::size_t>(i)];
}

Tensor Tensor::empty(const Shape& shape, Dtype dtype, Device device) {
  for (auto d : shape) {
    if (d < 0) throw Error("[tensor] negative dimension in shape " + shape_to_string(shape));
  }
  Tensor t;
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.device_ = device;
  const std::size_t bytes = std::max<std::size_t>(1, static_cast<std::size_t>(qmm::numel(shape)) * itemsize(dtype));
  if (device.type == DeviceType::cpu) {
    // 64-byte alignment so SIMD loads of rows never straddle a cache line at the start.
    void* p = ::operator new(bytes, std::align_val_t{64});
    t.storage_ = std::shared_ptr<void>(p, [](void* q) { ::operator delete(q, std::align_val_t{64}); });
  } else {
    const int index = device.index;
    void* p = detail::cuda_malloc(bytes, index);
    t.storage_ = std::shared_ptr<void>(p, [index](void* q) { detail::cuda_free(q, index); });
  }
  return t;
}

Tensor Tensor::from_floats(const std::vector<float>& values, const Shape& shape, Dtype dtype) {
  if (static_cast<std::int64_t>(values.size()) != qmm::numel(shape)) {
    throw Error("[tensor] " + std::to_string(values.size()) + " values do not fill shape " +
                shape_to_string(shape));
  }
  if (!is_floating(dtype)) throw Error("[tensor] from_floats needs a float dtype");
  Tensor t = empty(shape, dtype);
  for (std::size_t i = 0; i < values.size(); ++i) cpu::store(t.data(), dtype, static_cast<std::int64_t>(i), values[i]);
  return t;
}

std::size_t Tensor::nbytes() const { return static_cast<std::size_t>(numel()) * itemsize(dtype_); }

TensorView Tensor::view() const { return TensorView(data(), shape_, dtype_, device_); }

Tensor Tensor::to(Device device) const {
  Tensor t = empty(shape_, dtype_, device);
  if (nbytes() == 0) return t;
  if (device_.type == DeviceType::cpu && device.type == DeviceType::cpu) {
    std::memcpy(t.data(), data(), nbytes());
  } else {
    detail::cuda_copy(t.data(), data(), nbytes());
  }
  return t;
}

std::vector<float> Tensor::to_floats() const {
  if (!is_floating(dtype_)) throw Error("[tensor] to_floats needs a float dtype");
  const Tensor host = device_.type == DeviceType::cpu ? *this : to(Device::cpu());
  std::vector<float> out(static_cast<std::size_t>(numel()));
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = cpu::load(host.data(), dtype_, static_cast<std::int64_t>(i));
  return out;
}

}  // namespace qmm
