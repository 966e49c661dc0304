// safetensors reader and writer.
#include "io/safetensors.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "io/atomic_file.h"
#include "io/json.h"

namespace unet::io {
namespace {

using json = nlohmann::json;

const char* st_dtype(DType t) {
  switch (t) {
    case DType::f32:
      return "F32";
    case DType::f16:
      return "F16";
    case DType::bf16:
      return "BF16";
    case DType::i32:
      return "I32";
    case DType::u8:
      return "U8";
  }
  return "?";
}

bool parse_dtype(const std::string& s, DType& t) {
  for (DType d : {DType::f32, DType::f16, DType::bf16, DType::i32, DType::u8})
    if (s == st_dtype(d)) return t = d, true;
  return false;
}

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw std::runtime_error(path + ": invalid safetensors file: " + what);
}

}  // namespace

const Tensor& SafetensorsContent::get(const std::string& name) const {
  for (auto& [n, t] : tensors)
    if (n == name) return t;
  throw std::runtime_error(path + ": has no tensor '" + name + "'");
}

void write_safetensors(const std::string& path, const NamedTensors& tensors, const Metadata& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  size_t offset = 0;
  for (auto& [name, t] : tensors) {
    if (name == "__metadata__" || header.contains(name))
      throw std::invalid_argument(path + ": duplicate or reserved tensor name '" + name + "'");
    header[name] = {
        {"dtype", st_dtype(t.dtype())}, {"shape", t.shape()}, {"data_offsets", {offset, offset + t.nbytes()}}};
    offset += t.nbytes();
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');  // keep the data 8-byte aligned, as the reference writer does
  std::string bytes(8, '\0');
  uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  bytes += h;
  bytes.reserve(bytes.size() + offset);
  for (auto& [name, t] : tensors) {
    const Tensor host = t.to(Device::cpu);  // device tensors (a model or optimizer state on cuda-emu) are copied
    bytes.append(static_cast<const char*>(host.raw()), host.nbytes());
  }
  write_file_atomically(path, bytes);
}

namespace {

// The file opened, its size and its JSON header, checked to be an object within the file (and at most 100 MiB).
struct Header {
  std::ifstream file;
  uint64_t file_size = 0, header_len = 0;
  json header;
};

Header read_header(const std::string& path) {
  if (std::string why = regular_file_problem(path); !why.empty())
    throw std::runtime_error(path + ": " + why + "; expected a safetensors file");
  Header h;
  h.file.open(path, std::ios::binary | std::ios::ate);
  if (!h.file) throw std::runtime_error(path + ": cannot open checkpoint");
  h.file_size = static_cast<uint64_t>(h.file.tellg());
  h.file.seekg(0);
  if (h.file_size < 8) fail(path, "shorter than its 8-byte header length");
  unsigned char len_bytes[8];
  h.file.read(reinterpret_cast<char*>(len_bytes), 8);
  for (int i = 0; i < 8; ++i) h.header_len |= static_cast<uint64_t>(len_bytes[i]) << (8 * i);
  if (h.header_len > h.file_size - 8 || h.header_len > (100u << 20))
    fail(path,
         "header length " + std::to_string(h.header_len) + " exceeds the file size " + std::to_string(h.file_size));
  std::string text(h.header_len, '\0');
  h.file.read(text.data(), static_cast<std::streamsize>(h.header_len));
  try {
    h.header = parse_json(text);
  } catch (const std::runtime_error& e) {
    fail(path, std::string("header is not valid JSON (") + e.what() + ")");
  }
  if (!h.header.is_object()) fail(path, "header is not a JSON object");
  return h;
}

Metadata parse_metadata(const std::string& path, const json& v) {
  if (!v.is_object()) fail(path, "__metadata__ is not an object");
  Metadata m;
  for (auto& [k, s] : v.items()) {
    if (!s.is_string()) fail(path, "metadata value '" + k + "' is not a string");
    m[k] = s.get<std::string>();
  }
  return m;
}

}  // namespace

Metadata read_safetensors_metadata(const std::string& path) {
  Header h = read_header(path);
  return h.header.contains("__metadata__") ? parse_metadata(path, h.header["__metadata__"]) : Metadata{};
}

SafetensorsContent read_safetensors(const std::string& path) {
  Header h = read_header(path);
  std::ifstream& f = h.file;
  const json& header = h.header;
  const uint64_t file_size = h.file_size, header_len = h.header_len;
  uint64_t data_size = file_size - 8 - header_len;

  SafetensorsContent out;
  out.path = path;
  struct Entry {
    std::string name;
    DType dtype;
    Shape shape;
    uint64_t begin, end;
  };
  std::vector<Entry> entries;
  for (auto& [name, v] : header.items()) {
    if (name == "__metadata__") {
      out.metadata = parse_metadata(path, v);
      continue;
    }
    Entry e{name, DType::f32, {}, 0, 0};
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets") ||
        !v["dtype"].is_string() || !v["shape"].is_array() || !v["data_offsets"].is_array() ||
        v["data_offsets"].size() != 2)
      fail(path, "tensor '" + name + "' lacks dtype, shape or data_offsets");
    if (!parse_dtype(v["dtype"].get<std::string>(), e.dtype))
      fail(path, "tensor '" + name + "' has unsupported dtype " + v["dtype"].get<std::string>() +
                     " (expected F32, F16, BF16, I32 or U8)");
    // The product of the extents is capped at 2^40 (4 TiB of f32) and checked before each multiplication, so a shape
    // like [2^40, 2^40] cannot wrap around to a small count (or 0) that its data_offsets would then match. Zero
    // extents count as 1 there: [0, 2^40, 2^40] is empty but its strides would still overflow.
    constexpr uint64_t kMaxElements = 1ull << 40;
    uint64_t extents = 1;
    bool empty = false;
    for (auto& d : v["shape"]) {
      if (!d.is_number_unsigned())
        fail(path, "tensor '" + name + "' has a bad shape " + v["shape"].dump() + " (expected non-negative integers)");
      uint64_t n = d.get<uint64_t>();
      if (n > 1 && extents > kMaxElements / n)
        fail(path, "tensor '" + name + "' has shape " + v["shape"].dump() + ", more than 2^40 elements");
      extents *= std::max<uint64_t>(n, 1);
      empty = empty || n == 0;
      e.shape.push_back(static_cast<int64_t>(n));
    }
    const uint64_t numel = empty ? 0 : extents;
    if (!v["data_offsets"][0].is_number_unsigned() || !v["data_offsets"][1].is_number_unsigned())
      fail(path, "tensor '" + name + "' has bad data_offsets " + v["data_offsets"].dump() +
                     " (expected two byte offsets [begin, end])");
    e.begin = v["data_offsets"][0].get<uint64_t>();
    e.end = v["data_offsets"][1].get<uint64_t>();
    if (e.end < e.begin || e.end - e.begin != numel * dtype_size(e.dtype))
      fail(path, "tensor '" + name + "': data_offsets do not match dtype and shape (" + v["data_offsets"].dump() +
                     " for " + v["dtype"].get<std::string>() + " " + v["shape"].dump() + ", which needs " +
                     std::to_string(numel * dtype_size(e.dtype)) + " bytes)");
    if (e.end > data_size)
      fail(path, "tensor '" + name + "' ends at byte " + std::to_string(e.end) + " but the data holds " +
                     std::to_string(data_size) + " bytes (truncated file?)");
    entries.push_back(e);
  }
  // Sorted by (begin, end), an empty tensor at the offset where the next one starts comes first and overlaps nothing.
  std::sort(entries.begin(), entries.end(),
            [](const Entry& a, const Entry& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
  for (size_t i = 1; i < entries.size(); ++i)
    if (entries[i].begin < entries[i - 1].end)
      fail(path, "tensors '" + entries[i - 1].name + "' (bytes " + std::to_string(entries[i - 1].begin) + " to " +
                     std::to_string(entries[i - 1].end) + ") and '" + entries[i].name + "' (bytes " +
                     std::to_string(entries[i].begin) + " to " + std::to_string(entries[i].end) + ") overlap");
  // As the format (and its reference reader) requires, the tensors fill the data section end to end: bytes that
  // belong to none (junk appended to a model, a gap) are a damaged or foreign file, not ignored.
  uint64_t covered = 0;
  for (const Entry& e : entries) {
    if (e.begin != covered)
      fail(path, "bytes " + std::to_string(covered) + " to " + std::to_string(e.begin) +
                     " of the data belong to no tensor (before '" + e.name +
                     "'); expected the tensors to fill the data section");
    covered = e.end;
  }
  if (covered != data_size)
    fail(path, std::to_string(data_size - covered) + " bytes after the last tensor's data (bytes " +
                   std::to_string(covered) + " to " + std::to_string(data_size) +
                   " of the data belong to no tensor); expected the file to end with its tensors");
  for (const Entry& e : entries) {
    Tensor t = Tensor::empty(e.shape, e.dtype);
    f.seekg(static_cast<std::streamoff>(8 + header_len + e.begin));
    f.read(static_cast<char*>(t.raw()), static_cast<std::streamsize>(e.end - e.begin));
    if (!f) fail(path, "cannot read the data of tensor '" + e.name + "'");
    out.tensors.emplace_back(e.name, t);
  }
  return out;
}

}  // namespace unet::io
