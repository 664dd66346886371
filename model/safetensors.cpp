#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "qmm/ops.h"

namespace qmm::model {

namespace {

using json = nlohmann::json;

[[noreturn]] void fail(const std::string& file, const std::string& msg) {
  throw Error("[safetensors] " + file + ": " + msg);
}

struct DtypeInfo {
  StDtype dtype;
  const char* name;
  std::size_t size;
};
constexpr DtypeInfo kDtypes[] = {
    {StDtype::BOOL, "BOOL", 1}, {StDtype::U8, "U8", 1},     {StDtype::I8, "I8", 1},
    {StDtype::I16, "I16", 2},   {StDtype::U16, "U16", 2},   {StDtype::F16, "F16", 2},
    {StDtype::BF16, "BF16", 2}, {StDtype::I32, "I32", 4},   {StDtype::U32, "U32", 4},
    {StDtype::F32, "F32", 4},   {StDtype::F64, "F64", 8},   {StDtype::I64, "I64", 8},
    {StDtype::U64, "U64", 8},   {StDtype::F8_E4M3, "F8_E4M3", 1}, {StDtype::F8_E5M2, "F8_E5M2", 1},
};

constexpr std::size_t kMaxRank = 16;

std::string printable(const std::string& s) {
  // Tensor names come from untrusted files: keep messages readable and bounded.
  std::string out;
  for (unsigned char ch : s.substr(0, 200)) {
    if (ch >= 0x20 && ch < 0x7f) {
      out += static_cast<char>(ch);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", ch);
      out += buf;
    }
  }
  if (s.size() > 200) out += "...";
  return out;
}

// Local shape helpers: the parser depends on nothing but the standard library and nlohmann-json,
// so the fuzz targets (fuzz/) build it alone with clang's sanitizers.
std::string shape_str(const Shape& shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

std::uint64_t element_count(const Shape& shape) {
  std::uint64_t n = 1;
  for (auto d : shape) n *= static_cast<std::uint64_t>(d);
  return n;
}

std::uint64_t read_u64_le(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

std::uint64_t as_u64(const json& v, const std::string& file, const std::string& what) {
  if (!v.is_number_integer()) fail(file, what + " must be a non-negative integer but is a " + v.type_name());
  if (v.is_number_unsigned()) return v.get<std::uint64_t>();
  const std::int64_t s = v.get<std::int64_t>();
  if (s < 0) fail(file, what + " is negative (" + std::to_string(s) + ")");
  return static_cast<std::uint64_t>(s);
}

}  // namespace

const char* st_dtype_name(StDtype dtype) {
  for (const auto& d : kDtypes) {
    if (d.dtype == dtype) return d.name;
  }
  return "?";
}

std::size_t st_itemsize(StDtype dtype) {
  for (const auto& d : kDtypes) {
    if (d.dtype == dtype) return d.size;
  }
  return 0;
}

bool parse_st_dtype(const std::string& name, StDtype& out) {
  for (const auto& d : kDtypes) {
    if (name == d.name) {
      out = d.dtype;
      return true;
    }
  }
  return false;
}

bool st_to_qmm_dtype(StDtype dtype, Dtype& out) {
  switch (dtype) {
    case StDtype::F32: out = Dtype::float32; return true;
    case StDtype::F16: out = Dtype::float16; return true;
    case StDtype::BF16: out = Dtype::bfloat16; return true;
    case StDtype::U32: out = Dtype::uint32; return true;
    default: return false;
  }
}

StDtype qmm_to_st_dtype(Dtype dtype) {
  switch (dtype) {
    case Dtype::float32: return StDtype::F32;
    case Dtype::float16: return StDtype::F16;
    case Dtype::bfloat16: return StDtype::BF16;
    case Dtype::uint32: return StDtype::U32;
  }
  return StDtype::F32;
}

StHeader parse_safetensors(const std::uint8_t* bytes, std::size_t size, const std::string& file) {
  if (size < 8) {
    fail(file, "is " + std::to_string(size) + " bytes, too short for the 8-byte header length (truncated file?)");
  }
  const std::uint64_t n = read_u64_le(bytes);
  if (n > kMaxSafetensorsHeader) {
    fail(file, "header length " + std::to_string(n) + " exceeds the limit of " + std::to_string(kMaxSafetensorsHeader) +
                   " bytes (corrupt or not a safetensors file)");
  }
  if (n > size - 8) {
    fail(file, "header length " + std::to_string(n) + " runs past the end of the " + std::to_string(size) +
                   "-byte file (truncated file?)");
  }
  if (n < 2) fail(file, "header length " + std::to_string(n) + " is too short for a JSON object");
  StHeader h;
  h.data_offset = 8 + n;
  const std::uint64_t data_size = size - h.data_offset;
  const char* text = reinterpret_cast<const char*>(bytes + 8);

  // Duplicate names are an error (JSON parsers keep one silently); a parse callback sees every key
  // of the top-level object.
  std::set<std::string> seen;
  std::string duplicate;
  json::parser_callback_t cb = [&](int depth, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::key && depth == 1 && duplicate.empty()) {
      const std::string key = parsed.get<std::string>();
      if (!seen.insert(key).second) duplicate = key;
    }
    return true;
  };
  json j;
  try {
    j = json::parse(text, text + n, cb);
  } catch (const json::exception& e) {
    fail(file, std::string("header is not valid JSON: ") + e.what());
  }
  if (!duplicate.empty()) fail(file, "header lists tensor '" + printable(duplicate) + "' twice");
  if (!j.is_object()) fail(file, std::string("header must be a JSON object but is a ") + j.type_name());

  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) fail(file, "\"__metadata__\" must be an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) {
          fail(file, "\"__metadata__\" entry '" + printable(m.key()) + "' must be a string");
        }
        h.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor '" + printable(name) + "'";
    if (name.empty()) fail(file, "a tensor has an empty name");
    if (!v.is_object()) fail(file, where + ": entry must be an object but is a " + v.type_name());
    for (auto f = v.begin(); f != v.end(); ++f) {
      if (f.key() != "dtype" && f.key() != "shape" && f.key() != "data_offsets") {
        fail(file, where + ": unknown field '" + printable(f.key()) + "'");
      }
    }
    StTensor t;
    t.name = name;
    auto d = v.find("dtype");
    if (d == v.end()) fail(file, where + ": missing \"dtype\"");
    if (!d->is_string()) fail(file, where + ": \"dtype\" must be a string");
    if (!parse_st_dtype(d->get<std::string>(), t.dtype)) {
      fail(file, where + ": unknown dtype '" + printable(d->get<std::string>()) + "'");
    }
    auto s = v.find("shape");
    if (s == v.end()) fail(file, where + ": missing \"shape\"");
    if (!s->is_array()) fail(file, where + ": \"shape\" must be an array");
    if (s->size() > kMaxRank) fail(file, where + ": rank " + std::to_string(s->size()) + " is too large");
    // numel * itemsize must fit: every dimension is bounded by the file size once multiplied.
    unsigned __int128 bytes_needed = st_itemsize(t.dtype);
    bool zero = false;
    for (const auto& dim : *s) {
      const std::uint64_t di = as_u64(dim, file, where + ": a shape dimension");
      if (di > (std::uint64_t(1) << 62)) fail(file, where + ": shape dimension " + std::to_string(di) + " is too large");
      t.shape.push_back(static_cast<std::int64_t>(di));
      if (di == 0) zero = true;
      if (!zero) {
        bytes_needed *= di;
        if (bytes_needed > (static_cast<unsigned __int128>(1) << 64)) {
          fail(file, where + ": shape " + shape_str(t.shape) + " is too large for any file");
        }
      }
    }
    if (zero) bytes_needed = 0;
    auto o = v.find("data_offsets");
    if (o == v.end()) fail(file, where + ": missing \"data_offsets\"");
    if (!o->is_array() || o->size() != 2) fail(file, where + ": \"data_offsets\" must be [begin, end]");
    t.begin = as_u64((*o)[0], file, where + ": data_offsets[0]");
    t.end = as_u64((*o)[1], file, where + ": data_offsets[1]");
    if (t.begin > t.end) {
      fail(file, where + ": data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "] are reversed");
    }
    if (t.end > data_size) {
      fail(file, where + ": data_offsets end " + std::to_string(t.end) + " is past the end of the data (" +
                     std::to_string(data_size) + " bytes; truncated file?)");
    }
    if (static_cast<unsigned __int128>(t.end - t.begin) != bytes_needed) {
      fail(file, where + ": " + std::to_string(t.end - t.begin) + " bytes of data but dtype " + st_dtype_name(t.dtype) +
                     " and shape " + shape_str(t.shape) + " need " +
                     std::to_string(static_cast<std::uint64_t>(bytes_needed)));
    }
    t.data = bytes + h.data_offset + t.begin;
    h.tensors.push_back(std::move(t));
  }
  std::sort(h.tensors.begin(), h.tensors.end(), [](const StTensor& a, const StTensor& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (std::size_t i = 1; i < h.tensors.size(); ++i) {
    const StTensor& a = h.tensors[i - 1];
    const StTensor& b = h.tensors[i];
    if (b.begin < a.end) {
      fail(file, "tensors '" + printable(a.name) + "' [" + std::to_string(a.begin) + ", " + std::to_string(a.end) +
                     ") and '" + printable(b.name) + "' [" + std::to_string(b.begin) + ", " + std::to_string(b.end) +
                     ") overlap");
    }
  }
  return h;
}

// ---- MappedFile -------------------------------------------------------------------------------

MappedFile::MappedFile(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    fail(path, std::string("cannot stat: ") + std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path, "is not a regular file");
  }
  size_ = static_cast<std::size_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      fail(path, std::string("cannot mmap: ") + std::strerror(err));
    }
    data_ = static_cast<const std::uint8_t*>(p);
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<std::uint8_t*>(data_), size_);
}

// ---- SafetensorsFile --------------------------------------------------------------------------

SafetensorsFile::SafetensorsFile(const std::string& path) : map_(std::make_shared<MappedFile>(path)) {
  header_ = parse_safetensors(map_->data(), map_->size(), path);
  for (std::size_t i = 0; i < header_.tensors.size(); ++i) index_[header_.tensors[i].name] = i;
}

const StTensor* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

// ---- SafetensorsWriter ------------------------------------------------------------------------

std::uint64_t SafetensorsWriter::data_bytes(const std::vector<Spec>& specs) {
  std::uint64_t total = 0;
  for (const auto& s : specs) total += static_cast<std::uint64_t>(element_count(s.shape)) * st_itemsize(s.dtype);
  return total;
}

SafetensorsWriter::SafetensorsWriter(const std::string& path, std::vector<Spec> specs,
                                     const std::map<std::string, std::string>& metadata)
    : path_(path), specs_(std::move(specs)) {
  nlohmann::ordered_json j;
  if (!metadata.empty()) {
    nlohmann::ordered_json m = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    j["__metadata__"] = m;
  }
  std::uint64_t offset = 0;
  std::set<std::string> names;
  for (const auto& s : specs_) {
    if (!names.insert(s.name).second) throw Error("[safetensors] " + path + ": tensor '" + s.name + "' given twice");
    const std::uint64_t nbytes = static_cast<std::uint64_t>(element_count(s.shape)) * st_itemsize(s.dtype);
    j[s.name] = {{"dtype", st_dtype_name(s.dtype)}, {"shape", s.shape}, {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string header = j.dump();
  header.append((8 - header.size() % 8) % 8, ' ');  // data starts 8-byte aligned
  file_ = std::fopen(path.c_str(), "wb");
  if (!file_) fail(path, std::string("cannot create: ") + std::strerror(errno));
  std::uint8_t len[8];
  const std::uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<std::uint8_t>(n >> (8 * i));
  if (std::fwrite(len, 1, 8, file_) != 8 || std::fwrite(header.data(), 1, header.size(), file_) != header.size()) {
    fail(path, std::string("write failed: ") + std::strerror(errno));
  }
}

SafetensorsWriter::~SafetensorsWriter() {
  if (file_) std::fclose(file_);
}

void SafetensorsWriter::write(const std::string& name, const void* data, std::size_t nbytes) {
  if (next_ >= specs_.size()) fail(path_, "write of '" + name + "' after the last tensor");
  const Spec& s = specs_[next_];
  if (s.name != name) fail(path_, "expected tensor '" + s.name + "' next but got '" + name + "'");
  const std::size_t expected = static_cast<std::size_t>(element_count(s.shape)) * st_itemsize(s.dtype);
  if (nbytes != expected) {
    fail(path_, "tensor '" + name + "': " + std::to_string(nbytes) + " bytes given, " + std::to_string(expected) + " expected");
  }
  if (nbytes > 0 && std::fwrite(data, 1, nbytes, file_) != nbytes) {
    fail(path_, std::string("write failed: ") + std::strerror(errno));
  }
  ++next_;
}

void SafetensorsWriter::finish() {
  if (next_ != specs_.size()) fail(path_, "closed after " + std::to_string(next_) + " of " + std::to_string(specs_.size()) + " tensors");
  const int rc = std::fclose(file_);
  file_ = nullptr;
  if (rc != 0) fail(path_, std::string("close failed: ") + std::strerror(errno));
}

}  // namespace qmm::model
