// Tensor copies (kernels/cuda/tensor_copy.cuh) under the device emulator: boxes of rank 1 to 5 copied into shared
// memory against hand-computed layouts, with out-of-bounds zeros, element strides and the 32B, 64B and 128B
// swizzles, and the tensor-map parameters cuTensorMapEncodeTiled refuses.
#include <doctest/doctest.h>

#include <cstring>
#include <stdexcept>
#include <vector>

#include "tests/emu_tensor_kernels.cuh"
#include "tests/emu_test_util.h"

namespace {

using emu_tensor_test::Coords;
using unet::kernels::cuda::launch;
using unet::kernels::cuda::make_tensor_map;
using unet::kernels::cuda::TensorMap;

// Copies the box of `map` at `at` (expecting `bytes`) under every schedule and returns the shared-memory bytes as T.
template <class T, int Rank>
std::vector<T> copy_box(const TensorMap& map, Coords at, unsigned bytes) {
  const std::vector<unsigned char> raw = unet::test::under_every_schedule([&] {
    std::vector<unsigned char> out(bytes, 0xCD);
    launch(emu_tensor_test::tensor_box<Rank>, dim3(1), dim3(32), 0, nullptr, map, at, bytes, out.data());
    return out;
  });
  std::vector<T> v(bytes / sizeof(T));
  std::memcpy(v.data(), raw.data(), bytes);
  return v;
}

// A rows x cols f32 matrix (row stride cols * 4 bytes), element (r, c) = 100 r + c + 1, and its 2D tensor map.
struct Matrix {
  std::vector<float> v;
  TensorMap map;
  Matrix(int rows, int cols, uint32_t box_cols, uint32_t box_rows, CUtensorMapSwizzle swizzle) : v(rows * cols) {
    for (int r = 0; r < rows; ++r)
      for (int c = 0; c < cols; ++c) v[r * cols + c] = 100.0f * r + c + 1;
    const uint64_t dims[2] = {uint64_t(cols), uint64_t(rows)}, strides[1] = {uint64_t(cols) * 4};
    const uint32_t box[2] = {box_cols, box_rows}, element_strides[2] = {1, 1};
    map = make_tensor_map(CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 2, v.data(), dims, strides, box, element_strides, swizzle);
  }
};

// A rows x cols matrix of 16-bit values (r * cols + c) as the given data type, and its 2D tensor map of full rows.
struct Matrix16 {
  std::vector<uint16_t> v;
  TensorMap map;
  Matrix16(int rows, int cols, CUtensorMapDataType type, CUtensorMapSwizzle swizzle) : v(rows * cols) {
    for (int i = 0; i < rows * cols; ++i) v[i] = static_cast<uint16_t>(i);
    const uint64_t dims[2] = {uint64_t(cols), uint64_t(rows)}, strides[1] = {uint64_t(cols) * 2};
    const uint32_t box[2] = {uint32_t(cols), uint32_t(rows)}, element_strides[2] = {1, 1};
    map = make_tensor_map(type, 2, v.data(), dims, strides, box, element_strides, swizzle);
  }
};

}  // namespace

TEST_CASE("a 2D box reaching past the tensor's end gets zeros there, and completes all its bytes") {
  const Matrix m(10, 12, 8, 4, CU_TENSOR_MAP_SWIZZLE_NONE);
  // Rows 8..11, columns 6..13 of a 10 x 12 matrix: rows 10 and 11 and columns 12 and 13 are outside.
  const std::vector<float> want = {807, 808, 809, 810, 811, 812, 0, 0,  //
                                   907, 908, 909, 910, 911, 912, 0, 0,  //
                                   0,   0,   0,   0,   0,   0,   0, 0,  //
                                   0,   0,   0,   0,   0,   0,   0, 0};
  CHECK(copy_box<float, 2>(m.map, Coords{{6, 8}}, 8 * 4 * 4) == want);
}

TEST_CASE("a 2D box at negative coordinates gets zeros before the tensor's start") {
  const Matrix m(10, 12, 8, 4, CU_TENSOR_MAP_SWIZZLE_NONE);
  // Rows -1..2, columns -3..4.
  const std::vector<float> want = {0, 0, 0, 0,   0,   0,   0,   0,    //
                                   0, 0, 0, 1,   2,   3,   4,   5,    //
                                   0, 0, 0, 101, 102, 103, 104, 105,  //
                                   0, 0, 0, 201, 202, 203, 204, 205};
  CHECK(copy_box<float, 2>(m.map, Coords{{-3, -1}}, 8 * 4 * 4) == want);
}

TEST_CASE("a 1D box of bytes over the end of the tensor") {
  std::vector<uint8_t> v(112);
  for (int i = 0; i < 112; ++i) v[i] = static_cast<uint8_t>(i + 1);
  const uint64_t dims[1] = {100};
  const uint32_t box[1] = {32}, element_strides[1] = {1};
  const TensorMap map = make_tensor_map(CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, v.data(), dims, nullptr, box, element_strides,
                                        CU_TENSOR_MAP_SWIZZLE_NONE);
  std::vector<uint8_t> want(32, 0);
  for (int i = 0; i < 20; ++i) want[i] = static_cast<uint8_t>(81 + i);  // elements 80..99, then 12 zeros
  CHECK(copy_box<uint8_t, 1>(map, Coords{{80}}, 32) == want);
}

TEST_CASE("a 5D box with an element stride of 2 takes every other index of that dim, packed densely") {
  // A dense f32 tensor of dims (4, 3, 5, 2, 3), element = linear index + 1; box (4, 2, 3, 1, 2) with element strides
  // (1, 1, 2, 1, 1): ceil(3 / 2) = 2 elements along dim 2, so 4 * 2 * 2 * 1 * 2 = 32 elements.
  const uint64_t dims[5] = {4, 3, 5, 2, 3}, strides[4] = {16, 48, 240, 480};
  std::vector<float> v(4 * 3 * 5 * 2 * 3);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i + 1);
  const uint32_t box[5] = {4, 2, 3, 1, 2}, element_strides[5] = {1, 1, 2, 1, 1};
  const TensorMap map = make_tensor_map(CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 5, v.data(), dims, strides, box,
                                        element_strides, CU_TENSOR_MAP_SWIZZLE_NONE);
  SUBCASE("inside the tensor") {
    const std::vector<float> got = copy_box<float, 5>(map, Coords{{0, 1, 1, 1, 1}}, 32 * 4);
    // Box element (i0, i1, i2, 0, i4) is tensor element (i0, 1 + i1, 1 + 2 i2, 1, 1 + i4).
    for (int i4 = 0; i4 < 2; ++i4)
      for (int i2 = 0; i2 < 2; ++i2)
        for (int i1 = 0; i1 < 2; ++i1)
          for (int i0 = 0; i0 < 4; ++i0) {
            const int box_index = i0 + 4 * (i1 + 2 * (i2 + 2 * i4));
            const int tensor_index = i0 + 4 * ((1 + i1) + 3 * ((1 + 2 * i2) + 5 * (1 + 2 * (1 + i4))));
            CAPTURE(box_index);
            CHECK(got[box_index] == tensor_index + 1);
          }
    CHECK(got[29] == 346);  // (1, 2, 3, 1, 2): 1 + 2 * 4 + 3 * 12 + 1 * 60 + 2 * 120, plus one
  }
  SUBCASE("reaching past the ends of dims 1, 2 and 4") {
    // Start (0, 2, 3, 1, 2): dim 1 takes 2 and 3 (outside), dim 2 takes 3 and 5 (outside), dim 4 takes 2 and 3
    // (outside): only the first row, tensor elements (0..3, 2, 3, 1, 2), is inside.
    std::vector<float> want(32, 0.0f);
    for (int i0 = 0; i0 < 4; ++i0) want[i0] = 345.0f + i0;
    CHECK(copy_box<float, 5>(map, Coords{{0, 2, 3, 1, 2}}, 32 * 4) == want);
  }
}

TEST_CASE("the 128B swizzle puts 16-byte chunk j of row r at chunk j ^ (r % 8) of the 128-byte row") {
  const Matrix16 m(8, 64, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, CU_TENSOR_MAP_SWIZZLE_128B);
  const std::vector<uint16_t> got = copy_box<uint16_t, 2>(m.map, Coords{{0, 0}}, 8 * 128);
  CHECK(got[0] == 0);      // row 0 is not moved
  CHECK(got[64] == 72);    // row 1: chunk 0 holds chunk 1 (elements 8..15 of the row)
  CHECK(got[72] == 64);    // and chunk 1 holds chunk 0
  CHECK(got[201] == 209);  // row 3, chunk 1, element 1 holds chunk 1 ^ 3 = 2, element 1: 3 * 64 + 16 + 1
  for (int h = 0; h < 8 * 64; ++h) {
    const int r = h / 64, chunk = h % 64 / 8, within = h % 8;
    CAPTURE(h);
    CHECK(got[h] == r * 64 + (chunk ^ (r % 8)) * 8 + within);
  }
}

TEST_CASE("the 64B swizzle XORs the 16-byte chunk of a 64-byte row with (r / 2) % 4") {
  // 64-byte rows: two share a 128-byte line, so the row-bits of the address (bits 7, 8) are r / 2.
  Matrix m(8, 16, 16, 8, CU_TENSOR_MAP_SWIZZLE_64B);
  const std::vector<float> got = copy_box<float, 2>(m.map, Coords{{0, 0}}, 8 * 64);
  CHECK(got[32] == 205);  // row 2, chunk 0 holds chunk 1: columns 4..7, value 100 * 2 + 4 + 1
  for (int f = 0; f < 8 * 16; ++f) {
    const int r = f / 16, chunk = f % 16 / 4, within = f % 4;
    CAPTURE(f);
    CHECK(got[f] == 100.0f * r + ((chunk ^ (r / 2 % 4)) * 4 + within) + 1);
  }
}

TEST_CASE("the 32B swizzle swaps the two 16-byte chunks of a 32-byte row when (r / 4) is odd (bf16)") {
  const Matrix16 m(8, 16, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, CU_TENSOR_MAP_SWIZZLE_32B);
  const std::vector<uint16_t> got = copy_box<uint16_t, 2>(m.map, Coords{{0, 0}}, 8 * 32);
  CHECK(got[48] == 48);  // row 3: unchanged
  CHECK(got[64] == 72);  // row 4: chunk 0 holds chunk 1
  for (int h = 0; h < 8 * 16; ++h) {
    const int r = h / 16, chunk = h % 16 / 8, within = h % 8;
    CAPTURE(h);
    CHECK(got[h] == r * 16 + (chunk ^ (r / 4 % 2)) * 8 + within);
  }
}

TEST_CASE("make_tensor_map refuses what cuTensorMapEncodeTiled refuses") {
  std::vector<float> v(64 * 64);
  const uint64_t dims[2] = {64, 64}, good_strides[1] = {256}, bad_strides[1] = {200};
  const uint32_t box[2] = {32, 8}, ones[2] = {1, 1};
  auto make = [&](uint32_t rank, const void* global, const uint64_t* strides, const uint32_t* b, const uint32_t* e,
                  CUtensorMapSwizzle s) {
    return make_tensor_map(CU_TENSOR_MAP_DATA_TYPE_FLOAT32, rank, global, dims, strides, b, e, s);
  };
  CHECK_NOTHROW(make(2, v.data(), good_strides, box, ones, CU_TENSOR_MAP_SWIZZLE_128B));
  CHECK_THROWS_AS(make(6, v.data(), good_strides, box, ones, CU_TENSOR_MAP_SWIZZLE_NONE), std::invalid_argument);
  CHECK_THROWS_AS(make(2, v.data() + 1, good_strides, box, ones, CU_TENSOR_MAP_SWIZZLE_NONE),
                  std::invalid_argument);  // base not 16-byte aligned
  CHECK_THROWS_AS(make(2, v.data(), bad_strides, box, ones, CU_TENSOR_MAP_SWIZZLE_NONE), std::invalid_argument);
  const uint32_t narrow[2] = {2, 8}, wide[2] = {64, 8}, huge[2] = {32, 257}, nine[2] = {1, 9};
  CHECK_THROWS_AS(make(2, v.data(), good_strides, narrow, ones, CU_TENSOR_MAP_SWIZZLE_NONE),
                  std::invalid_argument);  // 8 bytes: not a multiple of 16
  CHECK_THROWS_AS(make(2, v.data(), good_strides, wide, ones, CU_TENSOR_MAP_SWIZZLE_128B),
                  std::invalid_argument);  // 256 bytes exceed the 128-byte span
  CHECK_THROWS_AS(make(2, v.data(), good_strides, huge, ones, CU_TENSOR_MAP_SWIZZLE_NONE), std::invalid_argument);
  CHECK_THROWS_AS(make(2, v.data(), good_strides, box, nine, CU_TENSOR_MAP_SWIZZLE_NONE), std::invalid_argument);
  // Valid for the driver, but the layout of a box narrower than the swizzle span is not emulated.
  const uint32_t box32b[2] = {8, 8};  // 32 bytes wide
  CHECK_NOTHROW(make(2, v.data(), good_strides, box32b, ones, CU_TENSOR_MAP_SWIZZLE_32B));
  CHECK_THROWS_AS(make(2, v.data(), good_strides, box32b, ones, CU_TENSOR_MAP_SWIZZLE_64B), std::invalid_argument);
}
