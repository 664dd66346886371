// A safetensors reader (header parsed with nlohmann-json, data memory-mapped, every field
// validated) and a streaming writer. Format: 8-byte little-endian header length N, N bytes of
// JSON {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then
// the data; offsets are relative to the first byte after the header.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "qmm/tensor.h"

namespace qmm::model {

enum class StDtype : std::uint8_t { BOOL, U8, I8, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64, F8_E4M3, F8_E5M2 };

const char* st_dtype_name(StDtype dtype);        ///< "F16", ...
std::size_t st_itemsize(StDtype dtype);
bool parse_st_dtype(const std::string& name, StDtype& out);
/// The qmm dtype of a safetensors dtype (F32, F16, BF16, U32), or false.
bool st_to_qmm_dtype(StDtype dtype, Dtype& out);
StDtype qmm_to_st_dtype(Dtype dtype);

struct StTensor {
  std::string name;
  StDtype dtype = StDtype::F32;
  Shape shape;
  std::uint64_t begin = 0;  ///< byte offsets relative to the data section
  std::uint64_t end = 0;
  const std::uint8_t* data = nullptr;  ///< first byte, inside the file's bytes
  std::uint64_t nbytes() const { return end - begin; }
};

struct StHeader {
  std::vector<StTensor> tensors;  ///< in data-offset order
  std::map<std::string, std::string> metadata;
  std::uint64_t data_offset = 0;  ///< 8 + header length
};

/// Largest header accepted (the safetensors reference implementation's limit).
constexpr std::uint64_t kMaxSafetensorsHeader = 100'000'000;

/// Parses and validates a whole safetensors file held in `bytes`: header length against the file
/// size, JSON syntax, duplicate names, dtypes, shapes, offsets in range, sizes matching shapes,
/// no two tensors overlapping. Throws qmm::Error "[safetensors] FILENAME: ..." (naming the tensor
/// where one is at fault); never reads outside [bytes, bytes + size).
StHeader parse_safetensors(const std::uint8_t* bytes, std::size_t size, const std::string& filename);

/// A read-only memory map of a file.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const std::uint8_t* data() const { return data_; }
  std::size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
};

/// An opened, validated safetensors file.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  const std::string& path() const { return map_->path(); }
  const StHeader& header() const { return header_; }
  const std::vector<StTensor>& tensors() const { return header_.tensors; }
  /// nullptr when absent.
  const StTensor* find(const std::string& name) const;

 private:
  std::shared_ptr<MappedFile> map_;
  StHeader header_;
  std::map<std::string, std::size_t> index_;
};

/// Writes a safetensors file in one pass: the header first (tensors laid out back to back in
/// the order given, header padded with spaces to a multiple of 8), then each tensor's bytes in
/// that order through write().
class SafetensorsWriter {
 public:
  struct Spec {
    std::string name;
    StDtype dtype;
    Shape shape;
  };
  SafetensorsWriter(const std::string& path, std::vector<Spec> specs,
                    const std::map<std::string, std::string>& metadata = {{"format", "mlx"}});
  ~SafetensorsWriter();
  /// The next tensor's data, in spec order; `nbytes` must match its shape and dtype.
  void write(const std::string& name, const void* data, std::size_t nbytes);
  /// Checks every tensor was written and closes the file.
  void finish();
  static std::uint64_t data_bytes(const std::vector<Spec>& specs);

 private:
  std::string path_;
  std::vector<Spec> specs_;
  std::size_t next_ = 0;
  std::FILE* file_ = nullptr;
};

}  // namespace qmm::model
