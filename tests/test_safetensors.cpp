// safetensors checkpoints: round trips, a file written by another implementation, and rejection of damaged files.
#include <doctest/doctest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "io/safetensors.h"

using namespace unet;
using namespace unet::io;
namespace fs = std::filesystem;

namespace {
std::string temp_path(const std::string& name) {
  return (fs::temp_directory_path() / ("unet_st_" + std::to_string(::getpid()) + "_" + name)).string();
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string header_of(const std::string& json_text) {
  std::string b(8, '\0');
  for (int i = 0; i < 8; ++i) b[i] = static_cast<char>((json_text.size() >> (8 * i)) & 0xff);
  return b + json_text;
}
}  // namespace

TEST_CASE("tensors of every dtype and the metadata survive a write and read back bit for bit") {
  NamedTensors in{{"a.weight", Tensor::from_vector({2, 3}, {1, 2, 3, 4, 5, -6.5f})},
                  {"b.half", Tensor::from_vector({3}, {0.1f, -2, 65504}, DType::f16)},
                  {"c.bf16", Tensor::from_vector({1, 2}, {3.3f, -1e30f}, DType::bf16)},
                  {"d.int", Tensor::from_vector({2}, {-7, 123456}, DType::i32)},
                  {"e.bytes", Tensor::from_vector({4}, {0, 1, 254, 255}, DType::u8)},
                  {"f.empty", Tensor::empty({0, 4})}};
  std::string path = temp_path("roundtrip.safetensors");
  write_safetensors(path, in, {{"config", "{\"classes\": 3}"}, {"step", "12"}});
  SafetensorsContent out = read_safetensors(path);
  REQUIRE(out.tensors.size() == in.size());
  for (auto& [name, t] : in) {
    const Tensor& r = out.get(name);
    CHECK(r.shape() == t.shape());
    CHECK(r.dtype() == t.dtype());
    CHECK(std::memcmp(r.raw(), t.raw(), t.nbytes()) == 0);
  }
  CHECK(out.metadata.at("config") == "{\"classes\": 3}");
  CHECK(out.metadata.at("step") == "12");
  std::string bytes = read_bytes(path);
  uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  CHECK(header_len % 8 == 0);  // header padded: data starts 8-byte aligned
  CHECK(read_safetensors_metadata(path) == out.metadata);
}

TEST_CASE("read_safetensors_metadata reads the header's metadata only, and refuses a bad header as the reader does") {
  std::string path = temp_path("meta.safetensors");
  write_safetensors(path, {{"w", Tensor::full({64}, 1.f)}}, {{"step", "3"}});
  std::string bytes = read_bytes(path);
  write_bytes(path, bytes.substr(0, bytes.size() - 10));  // the data truncated, the header whole
  CHECK(read_safetensors_metadata(path) == Metadata{{"step", "3"}});
  write_bytes(path, header_of(R"({"__metadata__": {"step": 3}})"));
  CHECK_THROWS_WITH_AS(read_safetensors_metadata(path), doctest::Contains("metadata value 'step' is not a string"),
                       std::runtime_error);
  write_bytes(path, header_of("{not json"));
  CHECK_THROWS_WITH_AS(read_safetensors_metadata(path), doctest::Contains("header is not valid JSON"),
                       std::runtime_error);
  write_bytes(path, header_of("{}"));
  CHECK(read_safetensors_metadata(path).empty());
}

TEST_CASE("a file written by an independent Python writer reads with the right values") {
  SafetensorsContent c = read_safetensors(std::string(UNET_TEST_DATA_DIR) + "/fixture.safetensors");
  const Tensor& w = c.get("input_block.conv1.conv.weight");
  CHECK(w.shape() == Shape{2, 1, 3, 3, 3});
  auto wv = w.to_vector();
  for (size_t i = 0; i < wv.size(); ++i) CHECK(wv[i] == static_cast<float>(i) / 7.0f);
  CHECK(c.get("input_block.norm1.weight").to_vector() == std::vector<float>{1.5f, -0.25f});
  CHECK(c.get("input_block.norm1.weight").dtype() == DType::f16);
  CHECK(c.get("bf16_values").to_vector() == std::vector<float>{1.0f, -2.5f, 3.140625f});
  CHECK(c.get("labels").to_vector() == std::vector<float>{0, 1, 2, 3});
  CHECK(c.get("mask").to_vector() == std::vector<float>{0, 255, 7});
  CHECK(c.metadata.at("format") == "pt");
  CHECK(c.metadata.at("model") == "{\"name\": \"fixture\"}");
  CHECK_THROWS_WITH_AS(c.get("nope"),
                       (std::string(UNET_TEST_DATA_DIR) + "/fixture.safetensors: has no tensor 'nope'").c_str(),
                       std::runtime_error);
}

TEST_CASE("a truncated file is rejected with a message naming the file and the tensor") {
  std::string path = temp_path("trunc.safetensors");
  write_safetensors(path, {{"w", Tensor::full({64}, 1.f)}});
  std::string bytes = read_bytes(path);
  write_bytes(path, bytes.substr(0, bytes.size() - 10));
  std::string expected = path + ": invalid safetensors file: tensor 'w' ends at byte 256";
  CHECK_THROWS_WITH_AS(read_safetensors(path), doctest::Contains(expected.c_str()), std::runtime_error);
  write_bytes(path, bytes.substr(0, 5));
  CHECK_THROWS_WITH_AS(read_safetensors(path), doctest::Contains("shorter than its 8-byte header length"),
                       std::runtime_error);
}

TEST_CASE("malformed headers are rejected before anything is allocated") {
  std::string path = temp_path("bad.safetensors");
  write_bytes(path, header_of("{not json") + "xxxx");
  CHECK_THROWS_WITH_AS(read_safetensors(path), doctest::Contains("header is not valid JSON"), std::runtime_error);
  write_bytes(path, std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8) + "{}");
  CHECK_THROWS_WITH_AS(read_safetensors(path), doctest::Contains("exceeds the file size"), std::runtime_error);
  write_bytes(path,
              header_of(R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}})") + std::string(16, '\0'));
  CHECK_THROWS_WITH_AS(read_safetensors(path), doctest::Contains("data_offsets do not match dtype and shape"),
                       std::runtime_error);
  write_bytes(path,
              header_of(R"({"w": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}})") + std::string(8, '\0'));
  CHECK_THROWS_WITH_AS(read_safetensors(path), doctest::Contains("unsupported dtype F64"), std::runtime_error);
  write_bytes(path, header_of(R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                                  "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}})") +
                        std::string(8, '\0'));
  CHECK_THROWS_WITH_AS(read_safetensors(path), doctest::Contains("overlap"), std::runtime_error);
  CHECK_THROWS_WITH_AS(read_safetensors(temp_path("missing.safetensors")), doctest::Contains("cannot open checkpoint"),
                       std::runtime_error);
}

TEST_CASE("a key that appears twice in one object of the header is rejected, naming it") {
  std::string path = temp_path("dup.safetensors");
  // Two entries for one tensor: nlohmann would keep the second, other readers the first.
  write_bytes(path, header_of(R"({"w": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
                                  "w": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]}})") +
                        std::string(4, '\0'));
  CHECK_THROWS_WITH_AS(
      read_safetensors(path),
      (path + ": invalid safetensors file: header is not valid JSON (the key \"w\" appears twice in one object)")
          .c_str(),
      std::runtime_error);
  // Inside a tensor's entry and inside the metadata too; the same key in two different objects is fine.
  write_bytes(path, header_of(R"({"w": {"dtype": "U8", "shape": [2], "shape": [1], "data_offsets": [0, 2]}})") +
                        std::string(2, '\0'));
  CHECK_THROWS_WITH_AS(read_safetensors(path), doctest::Contains("the key \"shape\" appears twice"),
                       std::runtime_error);
  write_bytes(path, header_of(R"({"__metadata__": {"format": "a", "format": "b"}})"));
  CHECK_THROWS_WITH_AS(read_safetensors(path), doctest::Contains("the key \"format\" appears twice"),
                       std::runtime_error);
  write_bytes(path, header_of(R"({"__metadata__": {"shape": "x"}, "w": {"dtype": "U8", "shape": [2],
                                  "data_offsets": [0, 2]}})") +
                        std::string(2, '\7'));
  CHECK(read_safetensors(path).get("w").to_vector() == std::vector<float>{7.f, 7.f});
}

TEST_CASE("writing into a missing directory fails without leaving a file behind") {
  std::string dir = temp_path("no_such_dir");
  CHECK_THROWS_AS(write_safetensors(dir + "/x.safetensors", {{"w", Tensor::full({2}, 1.f)}}), std::runtime_error);
  CHECK_FALSE(fs::exists(dir));
}

TEST_CASE("a shape whose element count overflows is rejected, however its data_offsets are set") {
  std::string path = temp_path("overflow.safetensors");
  // 2^40 x 2^40 elements wrap around to 0 in 64 bits: without the check, data_offsets [0, 0] would match.
  write_bytes(path,
              header_of(R"({"w": {"dtype": "F32", "shape": [1099511627776, 1099511627776], "data_offsets": [0, 0]}})"));
  CHECK_THROWS_WITH_AS(read_safetensors(path),
                       (path + ": invalid safetensors file: tensor 'w' has shape [1099511627776,1099511627776], more "
                               "than 2^40 elements")
                           .c_str(),
                       std::runtime_error);
  write_bytes(path,
              header_of(R"({"w": {"dtype": "U8", "shape": [0, 4294967296, 4294967296], "data_offsets": [0, 0]}})"));
  CHECK_THROWS_WITH_AS(read_safetensors(path), doctest::Contains("more than 2^40 elements"), std::runtime_error);
  write_bytes(path, header_of(R"({"w": {"dtype": "U8", "shape": [2, -3], "data_offsets": [0, 0]}})"));
  CHECK_THROWS_WITH_AS(read_safetensors(path),
                       (path + ": invalid safetensors file: tensor 'w' has a bad shape [2,-3] (expected non-negative "
                               "integers)")
                           .c_str(),
                       std::runtime_error);
}

TEST_CASE("data_offsets that disagree with dtype and shape are rejected with both sizes") {
  std::string path = temp_path("mismatch.safetensors");
  write_bytes(path,
              header_of(R"({"w": {"dtype": "F16", "shape": [2, 3], "data_offsets": [0, 6]}})") + std::string(16, '\0'));
  CHECK_THROWS_WITH_AS(read_safetensors(path),
                       (path + ": invalid safetensors file: tensor 'w': data_offsets do not match dtype and shape "
                               "([0,6] for F16 [2,3], which needs 12 bytes)")
                           .c_str(),
                       std::runtime_error);
  write_bytes(path,
              header_of(R"({"w": {"dtype": "U8", "shape": [0], "data_offsets": [8, 4]}})") + std::string(16, '\0'));
  CHECK_THROWS_WITH_AS(read_safetensors(path), doctest::Contains("data_offsets do not match dtype and shape ([8,4]"),
                       std::runtime_error);
  write_bytes(path,
              header_of(R"({"w": {"dtype": "U8", "shape": [2], "data_offsets": [0, -2]}})") + std::string(16, '\0'));
  CHECK_THROWS_WITH_AS(read_safetensors(path), doctest::Contains("tensor 'w' has bad data_offsets [0,-2]"),
                       std::runtime_error);
}

TEST_CASE("a tensor whose data_offsets lie beyond the file is rejected") {
  std::string path = temp_path("beyond.safetensors");
  write_bytes(path,
              header_of(R"({"w": {"dtype": "U8", "shape": [4], "data_offsets": [100, 104]}})") + std::string(16, '\0'));
  CHECK_THROWS_WITH_AS(read_safetensors(path),
                       (path + ": invalid safetensors file: tensor 'w' ends at byte 104 but the data holds 16 bytes "
                               "(truncated file?)")
                           .c_str(),
                       std::runtime_error);
}

TEST_CASE("overlapping tensors are rejected naming both and their byte ranges") {
  std::string path = temp_path("overlap.safetensors");
  write_bytes(path, header_of(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                  "b": {"dtype": "U8", "shape": [4], "data_offsets": [8, 12]},
                                  "c": {"dtype": "I32", "shape": [1], "data_offsets": [10, 14]}})") +
                        std::string(16, '\0'));
  CHECK_THROWS_WITH_AS(read_safetensors(path),
                       (path + ": invalid safetensors file: tensors 'b' (bytes 8 to 12) and 'c' (bytes 10 to 14) "
                               "overlap")
                           .c_str(),
                       std::runtime_error);
}

TEST_CASE("an empty tensor at the offset where another begins is not an overlap") {
  std::string path = temp_path("empty_at_start.safetensors");
  // Listed (and, by name, ordered) so that the empty tensor would sort after the full one if only begins were compared.
  write_bytes(path, header_of(R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                                  "b": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]},
                                  "c": {"dtype": "U8", "shape": [0, 3], "data_offsets": [4, 4]}})") +
                        std::string("\x01\x02\x03\x04", 4));
  SafetensorsContent c = read_safetensors(path);
  CHECK(c.get("a").to_vector() == std::vector<float>{1, 2, 3, 4});
  CHECK(c.get("b").numel() == 0);
  CHECK(c.get("c").shape() == Shape{0, 3});
}

TEST_CASE("data bytes that belong to no tensor (a gap, junk after the last tensor) are rejected, as the format says") {
  std::string path = temp_path("junk.safetensors");
  write_bytes(path, header_of(R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}})") +
                        std::string("\x01\x02\x03\x04junk", 8));
  CHECK_THROWS_WITH_AS(read_safetensors(path),
                       (path + ": invalid safetensors file: 4 bytes after the last tensor's data (bytes 4 to 8 of the "
                               "data belong to no tensor); expected the file to end with its tensors")
                           .c_str(),
                       std::runtime_error);
  write_bytes(path, header_of(R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                                  "b": {"dtype": "U8", "shape": [2], "data_offsets": [6, 8]}})") +
                        std::string(8, '\0'));
  CHECK_THROWS_WITH_AS(read_safetensors(path),
                       (path + ": invalid safetensors file: bytes 4 to 6 of the data belong to no tensor (before 'b'); "
                               "expected the tensors to fill the data section")
                           .c_str(),
                       std::runtime_error);
}
