// safetensors: validated read-only mmap reader, writer, sharded model directories, and the
// half-precision conversions.
#include "runtime/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

// Tensor bytes are little-endian on disk and are read with memcpy.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors reader assumes little-endian");

namespace starattn {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr uint64_t kLengthBytes = 8;  // the little-endian header length at the file start

size_t element_bytes(StDType t) { return t == StDType::f32 ? 4 : 2; }

const char* dtype_tag(StDType t) {
  switch (t) {
    case StDType::f32: return "F32";
    case StDType::f16: return "F16";
    case StDType::bf16: return "BF16";
  }
  return "?";
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

[[noreturn]] void fail_tensor(const std::string& path, const std::string& name,
                              const std::string& problem) {
  throw std::runtime_error(path + ": tensor \"" + name + "\": " + problem);
}

std::string excerpt(const json& v) {
  std::string text = v.dump();
  return text.size() > 40 ? text.substr(0, 37) + "..." : text;
}

// One header entry, checked against the size of the data area.
SafetensorInfo parse_entry(const std::string& path, const std::string& name, const json& entry,
                           uint64_t data_size) {
  if (!entry.is_object()) fail_tensor(path, name, "header entry is not an object: " + excerpt(entry));
  for (const char* key : {"dtype", "shape", "data_offsets"})
    if (!entry.contains(key)) fail_tensor(path, name, std::string("header entry has no ") + key);

  SafetensorInfo info;
  info.name = name;
  const json& dtype = entry["dtype"];
  if (!dtype.is_string()) fail_tensor(path, name, "dtype is not a string: " + excerpt(dtype));
  const std::string tag = dtype.get<std::string>();
  if (tag == "F32")
    info.dtype = StDType::f32;
  else if (tag == "F16")
    info.dtype = StDType::f16;
  else if (tag == "BF16")
    info.dtype = StDType::bf16;
  else
    fail_tensor(path, name, "dtype \"" + tag + "\" is not supported (supported: F32, F16, BF16)");

  const json& shape = entry["shape"];
  if (!shape.is_array()) fail_tensor(path, name, "shape is not an array: " + excerpt(shape));
  int64_t elements = 1;
  for (const json& d : shape) {
    if (!d.is_number_integer())
      fail_tensor(path, name, "shape " + excerpt(shape) + " has a non-integer dimension");
    if (d.is_number_unsigned() &&
        d.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail_tensor(path, name, "shape " + excerpt(shape) + " is oversized");
    const int64_t dim = d.get<int64_t>();
    if (dim < 0) fail_tensor(path, name, "shape " + excerpt(shape) + " has a negative dimension");
    if (dim != 0 && elements > std::numeric_limits<int64_t>::max() / dim)
      fail_tensor(path, name, "shape " + excerpt(shape) + " is oversized (element count overflows)");
    elements *= dim;
    info.shape.push_back(dim);
  }
  const auto bytes_per = static_cast<int64_t>(element_bytes(info.dtype));
  if (elements > std::numeric_limits<int64_t>::max() / bytes_per)
    fail_tensor(path, name, "shape " + excerpt(shape) + " is oversized (byte size overflows)");
  const auto needed = static_cast<uint64_t>(elements * bytes_per);

  const json& offsets = entry["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
      !offsets[1].is_number_unsigned())
    fail_tensor(path, name,
                "data_offsets must be two non-negative integers [begin, end], got " +
                    excerpt(offsets));
  info.begin = offsets[0].get<uint64_t>();
  info.end = offsets[1].get<uint64_t>();
  if (info.begin > info.end)
    fail_tensor(path, name, "data_offsets [" + std::to_string(info.begin) + ", " +
                                std::to_string(info.end) + "] have begin > end");
  if (info.end > data_size)
    fail_tensor(path, name, "data_offsets [" + std::to_string(info.begin) + ", " +
                                std::to_string(info.end) + "] run past the end of the data area (" +
                                std::to_string(data_size) + " bytes)");
  if (info.end - info.begin != needed)
    fail_tensor(path, name, "data_offsets [" + std::to_string(info.begin) + ", " +
                                std::to_string(info.end) + "] span " +
                                std::to_string(info.end - info.begin) + " bytes but shape " +
                                shape_text(info.shape) + " of " + tag + " needs " +
                                std::to_string(needed) + " bytes");
  return info;
}

// Two tensors sharing bytes means a corrupt (or hostile) file; empty tensors share nothing.
void check_no_overlap(const std::string& path, const std::map<std::string, SafetensorInfo>& all) {
  std::vector<const SafetensorInfo*> by_offset;
  for (const auto& [name, info] : all)
    if (info.end > info.begin) by_offset.push_back(&info);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const SafetensorInfo* a, const SafetensorInfo* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const SafetensorInfo& prev = *by_offset[i - 1];
    const SafetensorInfo& cur = *by_offset[i];
    if (cur.begin < prev.end)
      fail_tensor(path, cur.name, "data_offsets [" + std::to_string(cur.begin) + ", " +
                                      std::to_string(cur.end) + "] overlap tensor \"" + prev.name +
                                      "\" at [" + std::to_string(prev.begin) + ", " +
                                      std::to_string(prev.end) + "]");
  }
}

json parse_header(const std::string& path, const char* begin, const char* end) {
  // nlohmann keeps the last of duplicate keys silently; a duplicated tensor name is corruption.
  std::set<std::string> seen;
  std::string duplicate;
  auto on_event = [&](int depth, json::parse_event_t event, json& parsed) {
    if (depth == 1 && event == json::parse_event_t::key && duplicate.empty() &&
        !seen.insert(parsed.get<std::string>()).second)
      duplicate = parsed.get<std::string>();
    return true;
  };
  json header;
  try {
    header = json::parse(begin, end, on_event);
  } catch (const json::parse_error& e) {
    throw std::runtime_error(path + ": header is not valid JSON: " + e.what());
  }
  if (!header.is_object())
    throw std::runtime_error(path + ": header is a JSON " + header.type_name() +
                             ", expected an object of tensors");
  if (!duplicate.empty()) fail_tensor(path, duplicate, "appears twice in the header");
  return header;
}

}  // namespace

int64_t SafetensorInfo::elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error("cannot open " + path + ": " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw std::runtime_error(path + ": not a regular file");
  }
  const auto file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < kLengthBytes) {
    ::close(fd);
    throw std::runtime_error(path + ": file is " + std::to_string(file_size) +
                             " bytes, shorter than the 8-byte header length");
  }
  void* map = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (map == MAP_FAILED)
    throw std::runtime_error("cannot mmap " + path + ": " + std::strerror(map_errno));
  map_ = map;
  map_size_ = file_size;

  try {
    const auto* bytes = static_cast<const uint8_t*>(map_);
    uint64_t header_size = 0;
    std::memcpy(&header_size, bytes, kLengthBytes);
    if (header_size > file_size - kLengthBytes)
      throw std::runtime_error(path + ": header length " + std::to_string(header_size) +
                               " runs past the end of the file (" + std::to_string(file_size) +
                               " bytes)");
    const auto* header_begin = reinterpret_cast<const char*>(bytes + kLengthBytes);
    const json header = parse_header(path, header_begin, header_begin + header_size);
    data_ = bytes + kLengthBytes + header_size;
    const uint64_t data_size = file_size - kLengthBytes - header_size;
    for (const auto& [name, entry] : header.items()) {
      if (name == "__metadata__") continue;
      tensors_.emplace(name, parse_entry(path, name, entry, data_size));
    }
    check_no_overlap(path, tensors_);
  } catch (...) {
    ::munmap(map_, map_size_);
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, map_size_);
}

const SafetensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

void SafetensorsFile::read_f32(const std::string& name, float* out) const {
  const SafetensorInfo* info = find(name);
  if (!info) throw std::runtime_error(path_ + ": no tensor \"" + name + "\"");
  const uint8_t* src = data_ + info->begin;
  const int64_t n = info->elements();
  if (info->dtype == StDType::f32) {
    std::memcpy(out, src, static_cast<size_t>(n) * sizeof(float));
    return;
  }
  const bool bf16 = info->dtype == StDType::bf16;
  for (int64_t i = 0; i < n; ++i) {
    uint16_t v;
    std::memcpy(&v, src + 2 * i, 2);  // the data area need not be 2-byte aligned
    out[i] = bf16 ? bf16_to_f32(v) : f16_to_f32(v);
  }
}

// ---- writing ----

void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                       StDType dtype) {
  nlohmann::ordered_json header;
  // transformers refuses safetensors whose metadata lacks a known "format".
  header["__metadata__"] = {{"format", "pt"}};
  uint64_t offset = 0;
  std::set<std::string> names;
  for (const NamedTensor& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__")
      fail_tensor(path, t.name, "is not a valid tensor name");
    if (!names.insert(t.name).second) fail_tensor(path, t.name, "is given twice");
    int64_t n = 1;
    for (int64_t d : t.shape) {
      if (d < 0) fail_tensor(path, t.name, "shape " + shape_text(t.shape) + " is negative");
      n *= d;
    }
    if (static_cast<uint64_t>(n) != t.data.size())
      fail_tensor(path, t.name, "shape " + shape_text(t.shape) + " needs " + std::to_string(n) +
                                    " values but " + std::to_string(t.data.size()) + " are given");
    const uint64_t bytes = static_cast<uint64_t>(n) * element_bytes(dtype);
    header[t.name] = {{"dtype", dtype_tag(dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  // Pad with spaces so the data area starts 8-byte aligned, as the reference writer does.
  text.append((kLengthBytes - (kLengthBytes + text.size()) % kLengthBytes) % kLengthBytes, ' ');

  // Write beside the target and rename, so a reader never sees (or has mapped) a half file.
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw std::runtime_error("cannot create " + tmp + ": " + std::strerror(errno));
    const uint64_t header_size = text.size();
    out.write(reinterpret_cast<const char*>(&header_size), kLengthBytes);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    std::vector<uint16_t> half;
    for (const NamedTensor& t : tensors) {
      if (dtype == StDType::f32) {
        out.write(reinterpret_cast<const char*>(t.data.data()),
                  static_cast<std::streamsize>(t.data.size() * sizeof(float)));
        continue;
      }
      half.resize(t.data.size());
      for (size_t i = 0; i < t.data.size(); ++i)
        half[i] = dtype == StDType::bf16 ? f32_to_bf16(t.data[i]) : f32_to_f16(t.data[i]);
      out.write(reinterpret_cast<const char*>(half.data()),
                static_cast<std::streamsize>(half.size() * sizeof(uint16_t)));
    }
    out.close();
    if (!out) {
      std::error_code ignored;
      fs::remove(tmp, ignored);
      throw std::runtime_error("cannot write " + tmp);
    }
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) throw std::runtime_error("cannot rename " + tmp + " to " + path + ": " + ec.message());
}

// ---- model directories ----

namespace {

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

SafetensorsWeights::SafetensorsWeights(const std::string& dir) : dir_(dir) {
  const fs::path index_path = fs::path(dir) / "model.safetensors.index.json";
  const fs::path single_path = fs::path(dir) / "model.safetensors";
  if (fs::exists(index_path)) {
    const std::string where = index_path.string();
    json index;
    try {
      index = json::parse(read_text(where));
    } catch (const json::parse_error& e) {
      throw std::runtime_error(where + ": not valid JSON: " + e.what());
    }
    if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
      throw std::runtime_error(where + ": has no \"weight_map\" object");
    // Shards in name order, each opened (and validated) once.
    std::map<std::string, std::vector<std::string>> by_shard;
    for (const auto& [name, shard] : index["weight_map"].items()) {
      if (!shard.is_string())
        fail_tensor(where, name, "weight_map entry is not a file name: " + excerpt(shard));
      const std::string file = shard.get<std::string>();
      // Shards live in the model directory itself; refuse paths that would leave it.
      if (file.empty() || file.find('/') != std::string::npos || file == "..")
        fail_tensor(where, name, "shard \"" + file + "\" is not a plain file name");
      by_shard[file].push_back(name);
    }
    for (const auto& [shard, names] : by_shard) {
      const fs::path shard_path = fs::path(dir) / shard;
      if (!fs::exists(shard_path))
        throw std::runtime_error(dir + ": shard \"" + shard +
                                 "\" named in model.safetensors.index.json (for tensor \"" +
                                 names.front() + "\") does not exist");
      files_.push_back(std::make_unique<SafetensorsFile>(shard_path.string()));
      const SafetensorsFile* file = files_.back().get();
      for (const std::string& name : names) {
        if (!file->find(name))
          throw std::runtime_error(dir + ": model.safetensors.index.json puts tensor \"" + name +
                                   "\" in shard \"" + shard + "\", which does not contain it");
        index_[name] = file;
      }
    }
  } else if (fs::exists(single_path)) {
    files_.push_back(std::make_unique<SafetensorsFile>(single_path.string()));
    for (const auto& entry : files_.back()->tensors()) index_[entry.first] = files_.back().get();
  } else {
    throw std::runtime_error("no model.safetensors or model.safetensors.index.json in " + dir);
  }
}

const SafetensorInfo& SafetensorsWeights::info(const std::string& name,
                                               const SafetensorsFile** file) const {
  auto it = index_.find(name);
  if (it == index_.end()) throw std::runtime_error(dir_ + ": no tensor \"" + name + "\"");
  if (file) *file = it->second;
  return *it->second->find(name);
}

bool SafetensorsWeights::has(const std::string& name) const { return index_.count(name) != 0; }

std::vector<int64_t> SafetensorsWeights::shape(const std::string& name) const {
  return info(name, nullptr).shape;
}

void SafetensorsWeights::read_f32(const std::string& name, float* out) const {
  const SafetensorsFile* file = nullptr;
  info(name, &file);
  file->read_f32(name, out);
}

std::string SafetensorsWeights::describe() const { return dir_; }

// ---- conversions ----

float bf16_to_f32(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t f32_to_bf16(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  // Truncating a NaN could clear every mantissa bit left and turn it into infinity: keep it
  // a (quiet) NaN with its sign.
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  // Round to nearest, ties to even; a carry out of the mantissa correctly bumps the exponent
  // (up to infinity for values beyond the largest bf16).
  const uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

float f16_to_f32(uint16_t v) {
  const uint32_t sign = static_cast<uint32_t>(v & 0x8000u) << 16;
  const uint32_t exponent = (v >> 10) & 0x1fu;
  uint32_t mantissa = v & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);  // inf, or NaN keeping its payload
  } else if (exponent != 0) {
    bits = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;  // signed zero
  } else {
    // Subnormal m * 2^-24: shift the leading one up to the implicit position; every f16
    // subnormal is a normal float.
    int e = 127 - 15 + 1;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --e;
    }
    bits = sign | (static_cast<uint32_t>(e) << 23) | ((mantissa & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t f32_to_f16(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  const auto sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u)  // NaN: quiet, keep the top payload bits
    return static_cast<uint16_t>(sign | 0x7e00u | ((magnitude >> 13) & 0x3ffu));
  if (magnitude == 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u);

  const int exponent = static_cast<int>(magnitude >> 23) - 127 + 15;  // f16-biased
  const uint32_t mantissa = magnitude & 0x7fffffu;
  if (exponent >= 0x1f) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow to inf
  if (exponent >= 1) {
    uint32_t h = (static_cast<uint32_t>(exponent) << 10) | (mantissa >> 13);
    const uint32_t rest = mantissa & 0x1fffu;
    // Ties to even; a carry may roll into the exponent, reaching inf past 65504 as it should.
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  // Subnormal result in units of 2^-24. Below 2^-25 (shift > 24) everything rounds to zero.
  const int shift = 14 - exponent;
  if (shift > 24) return sign;
  const uint32_t full = mantissa | 0x800000u;  // the implicit leading one
  uint32_t h = full >> shift;
  const uint32_t rest = full & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1);
  if (rest > half || (rest == half && (h & 1u))) ++h;  // may become the smallest normal
  return static_cast<uint16_t>(sign | h);
}

}  // namespace starattn
