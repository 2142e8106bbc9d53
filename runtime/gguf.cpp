// GGUF file structure: mmap, validated parsing of header, metadata and tensor infos, and the
// dequantizers. The model-level parts (config, Hugging Face names) are in gguf_model.cpp.
#include "runtime/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <stdexcept>

#include "runtime/safetensors.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "GGUF reader assumes little-endian");

namespace starattn {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr int kMaxDims = 4;              // ggml's GGML_MAX_DIMS
constexpr int kMaxArrayDepth = 8;        // nested arrays are legal; bound the recursion

struct TypeInfo {
  uint32_t id;
  const char* name;
  int64_t block_elements;  // 0: layout unknown to us
  int64_t block_bytes;
};

// ggml's type ids. Layouts are listed for the types whose block sizes are part of the format's
// long-stable core, so their tensors' byte ranges can be validated even though we do not
// dequantize them; the rest are known by name only.
constexpr TypeInfo kTypes[] = {
    {0, "F32", 1, 4},      {1, "F16", 1, 2},       {2, "Q4_0", 32, 18},   {3, "Q4_1", 32, 20},
    {6, "Q5_0", 32, 22},   {7, "Q5_1", 32, 24},    {8, "Q8_0", 32, 34},   {9, "Q8_1", 32, 36},
    {10, "Q2_K", 256, 84}, {11, "Q3_K", 256, 110}, {12, "Q4_K", 256, 144}, {13, "Q5_K", 256, 176},
    {14, "Q6_K", 256, 210}, {15, "Q8_K", 256, 292}, {16, "IQ2_XXS", 0, 0}, {17, "IQ2_XS", 0, 0},
    {18, "IQ3_XXS", 0, 0}, {19, "IQ1_S", 0, 0},    {20, "IQ4_NL", 0, 0},  {21, "IQ3_S", 0, 0},
    {22, "IQ2_S", 0, 0},   {23, "IQ4_XS", 0, 0},   {24, "I8", 1, 1},      {25, "I16", 1, 2},
    {26, "I32", 1, 4},     {27, "I64", 1, 8},      {28, "F64", 1, 8},     {29, "IQ1_M", 0, 0},
    {30, "BF16", 1, 2},    {34, "TQ1_0", 0, 0},    {35, "TQ2_0", 0, 0},   {39, "MXFP4", 0, 0},
};

const TypeInfo* type_info(uint32_t id) {
  for (const TypeInfo& t : kTypes)
    if (t.id == id) return &t;
  return nullptr;
}

size_t scalar_size(GgufType t) {
  switch (t) {
    case GgufType::u8: case GgufType::i8: case GgufType::boolean: return 1;
    case GgufType::u16: case GgufType::i16: return 2;
    case GgufType::u32: case GgufType::i32: case GgufType::f32: return 4;
    case GgufType::u64: case GgufType::i64: case GgufType::f64: return 8;
    case GgufType::string: case GgufType::array: return 0;
  }
  return 0;
}

bool valid_value_type(uint32_t t) { return t <= static_cast<uint32_t>(GgufType::f64); }

// Bounds-checked little-endian reads over the mapped file; every failure names the file,
// the byte offset and what was being read.
class Cursor {
 public:
  Cursor(const std::string& path, const uint8_t* data, size_t size)
      : path_(path), data_(data), size_(size) {}
  size_t pos() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }

  [[noreturn]] void fail(const std::string& what, const std::string& problem) const {
    throw std::runtime_error(path_ + ": " + what + ": " + problem);
  }

  template <typename T>
  T read(const std::string& what) {
    if (remaining() < sizeof(T))
      fail(what, "needs " + std::to_string(sizeof(T)) + " bytes at offset " + std::to_string(pos_) +
                     " but the file ends at " + std::to_string(size_) + " (truncated)");
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  std::string read_string(const std::string& what) {
    const uint64_t len = read<uint64_t>(what + " (string length)");
    if (len > remaining())
      fail(what, "string length " + std::to_string(len) + " at offset " +
                     std::to_string(pos_ - 8) + " runs past the end of the file (" +
                     std::to_string(remaining()) + " bytes left)");
    std::string s(reinterpret_cast<const char*>(data_ + pos_), static_cast<size_t>(len));
    pos_ += static_cast<size_t>(len);
    return s;
  }

  GgufValue read_value(GgufType type, const std::string& what, int depth) {
    GgufValue v;
    v.type = type;
    switch (type) {
      case GgufType::u8: v.i = read<uint8_t>(what); break;
      case GgufType::i8: v.i = read<int8_t>(what); break;
      case GgufType::u16: v.i = read<uint16_t>(what); break;
      case GgufType::i16: v.i = read<int16_t>(what); break;
      case GgufType::u32: v.i = read<uint32_t>(what); break;
      case GgufType::i32: v.i = read<int32_t>(what); break;
      case GgufType::i64: v.i = read<int64_t>(what); break;
      case GgufType::u64:
        v.u = read<uint64_t>(what);
        v.i = v.u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())
                  ? std::numeric_limits<int64_t>::max()
                  : static_cast<int64_t>(v.u);
        break;
      case GgufType::f32: v.f = read<float>(what); break;
      case GgufType::f64: v.f = read<double>(what); break;
      case GgufType::boolean: v.i = read<uint8_t>(what) != 0; break;
      case GgufType::string: v.str = read_string(what); break;
      case GgufType::array: {
        if (depth >= kMaxArrayDepth)
          fail(what, "arrays nested deeper than " + std::to_string(kMaxArrayDepth));
        const uint32_t elem = read<uint32_t>(what + " (array element type)");
        if (!valid_value_type(elem))
          fail(what, "array element type " + std::to_string(elem) + " is not a GGUF value type");
        v.array_type = static_cast<GgufType>(elem);
        const uint64_t count = read<uint64_t>(what + " (array length)");
        // Every element takes at least this many bytes, so a count the file cannot hold is
        // caught before anything is allocated.
        size_t min_bytes = scalar_size(v.array_type);
        if (v.array_type == GgufType::string) min_bytes = 8;
        if (v.array_type == GgufType::array) min_bytes = 12;
        if (count > remaining() / min_bytes)
          fail(what, "array of " + std::to_string(count) + " elements runs past the end of the file (" +
                         std::to_string(remaining()) + " bytes left)");
        v.array.reserve(static_cast<size_t>(count));
        for (uint64_t k = 0; k < count; ++k)
          v.array.push_back(read_value(v.array_type, what + "[" + std::to_string(k) + "]", depth + 1));
        break;
      }
    }
    // Integers are readable through every numeric field.
    if (v.is_integer()) {
      if (type != GgufType::u64) v.u = static_cast<uint64_t>(v.i);
      v.f = type == GgufType::u64 ? static_cast<double>(v.u) : static_cast<double>(v.i);
    }
    return v;
  }

 private:
  const std::string& path_;
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

std::string dims_text(const std::vector<int64_t>& dims) {
  std::string out = "[";
  for (size_t i = 0; i < dims.size(); ++i) out += (i ? ", " : "") + std::to_string(dims[i]);
  return out + "]";
}

}  // namespace

const char* gguf_type_name(GgufType type) {
  static const char* const kNames[] = {"u8",  "i8",  "u16",    "i16",   "u32", "i32", "f32",
                                       "bool", "string", "array", "u64", "i64", "f64"};
  const auto i = static_cast<uint32_t>(type);
  return i < sizeof(kNames) / sizeof(kNames[0]) ? kNames[i] : "?";
}

bool GgufValue::is_integer() const {
  switch (type) {
    case GgufType::u8: case GgufType::i8: case GgufType::u16: case GgufType::i16:
    case GgufType::u32: case GgufType::i32: case GgufType::u64: case GgufType::i64: return true;
    default: return false;
  }
}

std::string ggml_type_name(uint32_t type) {
  const TypeInfo* t = type_info(type);
  return t ? t->name : "unknown";
}

bool ggml_type_supported(uint32_t type) {
  using namespace ggml_type;
  switch (type) {
    case f32: case f16: case bf16: case q8_0: case q4_0: case q4_1:
    case q2_k: case q3_k: case q4_k: case q5_k: case q6_k: return true;
    default: return false;
  }
}

const char* ggml_supported_types() {
  return "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K";
}

bool ggml_type_layout(uint32_t type, int64_t& block_elements, int64_t& block_bytes) {
  const TypeInfo* t = type_info(type);
  if (!t || t->block_elements == 0) return false;
  block_elements = t->block_elements;
  block_bytes = t->block_bytes;
  return true;
}

void ggml_dequantize(uint32_t type, const uint8_t* src, int64_t n, float* out) {
  auto half = [](const uint8_t* p) {
    uint16_t h;
    std::memcpy(&h, p, 2);
    return f16_to_f32(h);
  };
  if (ggml_dequantize_k(type, src, n, out)) return;
  switch (type) {
    case ggml_type::f32:
      std::memcpy(out, src, static_cast<size_t>(n) * 4);
      return;
    case ggml_type::f16:
      for (int64_t i = 0; i < n; ++i) out[i] = half(src + 2 * i);
      return;
    case ggml_type::bf16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t b;
        std::memcpy(&b, src + 2 * i, 2);
        out[i] = bf16_to_f32(b);
      }
      return;
    case ggml_type::q8_0:
      for (int64_t b = 0; b < n / 32; ++b) {
        const uint8_t* block = src + 34 * b;
        const float d = half(block);
        for (int k = 0; k < 32; ++k)
          out[32 * b + k] = static_cast<float>(static_cast<int8_t>(block[2 + k])) * d;
      }
      return;
    case ggml_type::q4_0:
      for (int64_t b = 0; b < n / 32; ++b) {
        const uint8_t* block = src + 18 * b;
        const float d = half(block);
        for (int k = 0; k < 16; ++k) {
          out[32 * b + k] = static_cast<float>((block[2 + k] & 0x0F) - 8) * d;
          out[32 * b + 16 + k] = static_cast<float>((block[2 + k] >> 4) - 8) * d;
        }
      }
      return;
    case ggml_type::q4_1:
      for (int64_t b = 0; b < n / 32; ++b) {
        const uint8_t* block = src + 20 * b;
        const float d = half(block);
        const float m = half(block + 2);
        for (int k = 0; k < 16; ++k) {
          out[32 * b + k] = static_cast<float>(block[4 + k] & 0x0F) * d + m;
          out[32 * b + 16 + k] = static_cast<float>(block[4 + k] >> 4) * d + m;
        }
      }
      return;
    default:
      throw std::invalid_argument("ggml_dequantize: type " + ggml_type_name(type) + " (id " +
                                  std::to_string(type) + ") is not supported");
  }
}

int64_t GgufTensorInfo::elements() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

std::vector<int64_t> GgufTensorInfo::shape() const { return {dims.rbegin(), dims.rend()}; }

GgufFile::GgufFile(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error(path + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw std::runtime_error(path + ": cannot stat: " + std::strerror(err));
  }
  map_size_ = static_cast<size_t>(st.st_size);
  if (map_size_ > 0) {
    map_ = ::mmap(nullptr, map_size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map_ == MAP_FAILED) {
      const int err = errno;
      map_ = nullptr;
      ::close(fd);
      throw std::runtime_error(path + ": cannot mmap: " + std::strerror(err));
    }
  }
  ::close(fd);
  try {
    const auto* base = static_cast<const uint8_t*>(map_);
    Cursor in(path_, base, map_size_);
    if (map_size_ < 4 || std::memcmp(base, "GGUF", 4) != 0)
      in.fail("header", "bad magic (not a GGUF file: expected the bytes \"GGUF\" at offset 0)");
    in.read<uint32_t>("magic");
    version_ = in.read<uint32_t>("header version");
    if (version_ != 2 && version_ != 3) {
      if (version_ == 0x02000000 || version_ == 0x03000000)
        in.fail("header", "big-endian GGUF files are not supported");
      in.fail("header", "GGUF version " + std::to_string(version_) +
                            " is not supported (supported: 2 and 3)");
    }
    const uint64_t n_tensors = in.read<uint64_t>("header tensor count");
    const uint64_t n_kv = in.read<uint64_t>("header metadata count");
    // A metadata entry takes at least 8 + 4 + 1 bytes, a tensor info at least 8 + 4 + 8 + 4 + 8:
    // counts the file cannot hold are rejected before anything is allocated.
    if (n_kv > in.remaining() / 13)
      in.fail("header", "metadata count " + std::to_string(n_kv) + " cannot fit in the file");

    for (uint64_t k = 0; k < n_kv; ++k) {
      const std::string entry = "metadata entry " + std::to_string(k);
      std::string key = in.read_string(entry + " key");
      const std::string what = "metadata key \"" + key + "\"";
      const uint32_t type = in.read<uint32_t>(what + " (value type)");
      if (!valid_value_type(type))
        in.fail(what, "value type " + std::to_string(type) + " is not a GGUF value type");
      GgufValue value = in.read_value(static_cast<GgufType>(type), what, 0);
      if (!metadata_.emplace(key, std::move(value)).second) in.fail(what, "appears twice");
    }

    if (const GgufValue* a = find("general.alignment")) {
      if (!a->is_integer() || a->i <= 0 || (a->i & (a->i - 1)) != 0)
        in.fail("metadata key \"general.alignment\"", "must be a positive power of two");
      alignment_ = static_cast<uint64_t>(a->i);
    }

    if (n_tensors > in.remaining() / 32)
      in.fail("header", "tensor count " + std::to_string(n_tensors) + " cannot fit in the file");
    for (uint64_t t = 0; t < n_tensors; ++t) {
      GgufTensorInfo info;
      info.name = in.read_string("tensor info " + std::to_string(t) + " name");
      const std::string what = "tensor \"" + info.name + "\"";
      const uint32_t n_dims = in.read<uint32_t>(what + " (n_dims)");
      if (n_dims < 1 || n_dims > kMaxDims)
        in.fail(what, "n_dims " + std::to_string(n_dims) + " is outside 1.." + std::to_string(kMaxDims));
      int64_t elements = 1;
      for (uint32_t d = 0; d < n_dims; ++d) {
        const uint64_t dim = in.read<uint64_t>(what + " (dimension)");
        if (dim == 0 || dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
            static_cast<int64_t>(dim) > std::numeric_limits<int64_t>::max() / elements)
          in.fail(what, "dimension " + std::to_string(dim) + " is zero or oversized");
        elements *= static_cast<int64_t>(dim);
        info.dims.push_back(static_cast<int64_t>(dim));
      }
      info.type = in.read<uint32_t>(what + " (type)");
      info.offset = in.read<uint64_t>(what + " (data offset)");
      if (!type_info(info.type))
        in.fail(what, "unknown ggml type id " + std::to_string(info.type));
      int64_t block_elements = 0, block_bytes = 0;
      if (ggml_type_layout(info.type, block_elements, block_bytes)) {
        if (info.dims[0] % block_elements != 0)
          in.fail(what, "row length " + std::to_string(info.dims[0]) + " is not a multiple of the " +
                            ggml_type_name(info.type) + " block size " + std::to_string(block_elements));
        if (elements / block_elements > std::numeric_limits<int64_t>::max() / block_bytes)
          in.fail(what, "shape " + dims_text(info.dims) + " is oversized");
        info.bytes = static_cast<uint64_t>(elements / block_elements * block_bytes);
      }
      if (!tensor_index_.emplace(info.name, tensors_.size()).second) in.fail(what, "appears twice");
      tensors_.push_back(std::move(info));
    }

    // The data area starts at the next multiple of the alignment after the tensor infos.
    const uint64_t data_start = (in.pos() + alignment_ - 1) / alignment_ * alignment_;
    const uint64_t data_size = data_start <= map_size_ ? map_size_ - data_start : 0;
    if (data_start > map_size_ && !tensors_.empty())
      in.fail("data area", "starts at offset " + std::to_string(data_start) +
                               ", past the end of the file (" + std::to_string(map_size_) + " bytes)");
    data_ = base + std::min<uint64_t>(data_start, map_size_);

    std::vector<const GgufTensorInfo*> by_offset;
    for (const GgufTensorInfo& info : tensors_) {
      const std::string what = "tensor \"" + info.name + "\"";
      if (info.offset % alignment_ != 0)
        in.fail(what, "data offset " + std::to_string(info.offset) +
                          " is not a multiple of the alignment " + std::to_string(alignment_));
      if (info.offset > data_size || info.bytes > data_size - info.offset)
        in.fail(what, "data [" + std::to_string(info.offset) + ", " +
                          std::to_string(info.offset + info.bytes) +
                          ") runs past the end of the data area (" + std::to_string(data_size) +
                          " bytes; the file may be truncated)");
      if (info.bytes > 0) by_offset.push_back(&info);
    }
    std::sort(by_offset.begin(), by_offset.end(),
              [](const GgufTensorInfo* a, const GgufTensorInfo* b) { return a->offset < b->offset; });
    for (size_t i = 1; i < by_offset.size(); ++i) {
      const GgufTensorInfo& prev = *by_offset[i - 1];
      const GgufTensorInfo& cur = *by_offset[i];
      if (cur.offset < prev.offset + prev.bytes)
        in.fail("tensor \"" + cur.name + "\"",
                "data at " + std::to_string(cur.offset) + " overlaps tensor \"" + prev.name +
                    "\" at [" + std::to_string(prev.offset) + ", " +
                    std::to_string(prev.offset + prev.bytes) + ")");
    }
  } catch (...) {
    if (map_) ::munmap(map_, map_size_);
    map_ = nullptr;
    throw;
  }
}

GgufFile::~GgufFile() {
  if (map_) ::munmap(map_, map_size_);
}

const GgufValue* GgufFile::find(const std::string& key) const {
  auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

const GgufTensorInfo* GgufFile::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

namespace {
[[noreturn]] void wrong_type(const std::string& path, const std::string& key, const GgufValue& v,
                             const char* expected) {
  throw std::runtime_error(path + ": metadata key \"" + key + "\" has type " +
                           gguf_type_name(v.type) + ", expected " + expected);
}
}  // namespace

std::string GgufFile::get_string(const std::string& key, const std::string& fallback) const {
  const GgufValue* v = find(key);
  if (!v) return fallback;
  if (v->type != GgufType::string) wrong_type(path_, key, *v, "string");
  return v->str;
}

int64_t GgufFile::get_int(const std::string& key, int64_t fallback) const {
  const GgufValue* v = find(key);
  if (!v) return fallback;
  if (!v->is_integer()) wrong_type(path_, key, *v, "an integer");
  return v->i;
}

double GgufFile::get_float(const std::string& key, double fallback) const {
  const GgufValue* v = find(key);
  if (!v) return fallback;
  if (!v->is_number()) wrong_type(path_, key, *v, "a number");
  return v->f;
}

bool GgufFile::get_bool(const std::string& key, bool fallback) const {
  const GgufValue* v = find(key);
  if (!v) return fallback;
  if (v->type != GgufType::boolean) wrong_type(path_, key, *v, "bool");
  return v->i != 0;
}

std::vector<std::string> GgufFile::get_strings(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return {};
  if (v->type != GgufType::array || v->array_type != GgufType::string)
    wrong_type(path_, key, *v, "an array of strings");
  std::vector<std::string> out;
  out.reserve(v->array.size());
  for (const GgufValue& e : v->array) out.push_back(e.str);
  return out;
}

std::vector<double> GgufFile::get_numbers(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return {};
  GgufValue element;
  element.type = v->array_type;
  if (v->type != GgufType::array || !element.is_number())
    wrong_type(path_, key, *v, "an array of numbers");
  std::vector<double> out;
  out.reserve(v->array.size());
  for (const GgufValue& e : v->array) out.push_back(e.f);
  return out;
}

void GgufFile::read_f32(const GgufTensorInfo& tensor, float* out) const {
  if (!ggml_type_supported(tensor.type))
    throw std::runtime_error(path_ + ": tensor \"" + tensor.name + "\" has type " +
                             ggml_type_name(tensor.type) + " (ggml type id " +
                             std::to_string(tensor.type) +
                             "), which is not supported (supported: " + ggml_supported_types() + ")");
  ggml_dequantize(tensor.type, data_ + tensor.offset, tensor.elements(), out);
}

}  // namespace starattn
