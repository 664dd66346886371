// Tensors of qmm's public API: a non-owning view (what every op takes) and a small owning
// tensor for convenience (what the allocating ops return).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "qmm/dtype.h"

namespace qmm {

using Shape = std::vector<std::int64_t>;

/// Number of elements of a shape (1 for a scalar shape {}).
std::int64_t numel(const Shape& shape);
/// "(2, 3, 4)".
std::string shape_to_string(const Shape& shape);
/// Row-major strides, in elements.
Shape contiguous_strides(const Shape& shape);

/// A non-owning view of memory: pointer, shape, strides (in elements), dtype and device.
/// Ops accept row-major contiguous views and reject any other strides with a clear error.
struct TensorView {
  void* data = nullptr;
  Shape shape;
  Shape strides;
  Dtype dtype = Dtype::float32;
  Device device = Device::cpu();

  TensorView() = default;
  /// A contiguous view.
  TensorView(void* data, Shape shape, Dtype dtype, Device device = Device::cpu());
  /// A view with explicit strides (in elements).
  TensorView(void* data, Shape shape, Shape strides, Dtype dtype, Device device = Device::cpu());

  int ndim() const { return static_cast<int>(shape.size()); }
  std::int64_t numel() const { return qmm::numel(shape); }
  std::size_t nbytes() const;
  bool is_contiguous() const;
  /// Dimension i, Python-style negative indices allowed.
  std::int64_t dim(int i) const;
};

/// An owning, contiguous tensor on the CPU or a CUDA device. Copies share the storage.
class Tensor {
 public:
  Tensor() = default;
  /// Uninitialised storage.
  static Tensor empty(const Shape& shape, Dtype dtype, Device device = Device::cpu());
  /// A CPU tensor holding a copy of `values` converted to `dtype` (round to nearest even).
  static Tensor from_floats(const std::vector<float>& values, const Shape& shape, Dtype dtype);

  const Shape& shape() const { return shape_; }
  Dtype dtype() const { return dtype_; }
  Device device() const { return device_; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  std::int64_t numel() const { return qmm::numel(shape_); }
  std::size_t nbytes() const;
  bool defined() const { return static_cast<bool>(storage_); }

  void* data() const { return storage_.get(); }
  template <typename T>
  T* data_as() const {
    return static_cast<T*>(data());
  }
  TensorView view() const;
  operator TensorView() const { return view(); }  // NOLINT(google-explicit-constructor)

  /// A copy on another device (synchronous).
  Tensor to(Device device) const;
  /// The elements converted to float (copies to the CPU first if needed). Float dtypes only.
  std::vector<float> to_floats() const;

 private:
  std::shared_ptr<void> storage_;
  Shape shape_;
  Dtype dtype_ = Dtype::float32;
  Device device_ = Device::cpu();
};

}  // namespace qmm
