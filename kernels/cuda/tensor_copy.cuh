// Hopper tensor copies (TMA, docs/emulator.md "mbarrier and asynchronous copies"): a tensor map that describes a
// tiled view of a global tensor (host side, cuTensorMapEncodeTiled's parameters) and cp.async.bulk.tensor, which
// copies one box of it into shared memory and completes on an mbarrier (kernels/cuda/async_copy.cuh). Under nvcc the
// map is the driver's CUtensorMap, encoded through the runtime's driver entry point (no link to libcuda) and passed to
// the kernel as a `const __grid_constant__ TensorMap` parameter; each copy is one inline PTX instruction (sm_90). Under
// the emulator the map is our own struct holding the same parameters, and the copy is an emulated asynchronous copy
// that lands late, as the bulk copies do.
//
// Semantics of the tile mode (PTX ISA "Tensor copy", CUDA driver API cuTensorMapEncodeTiled), interleave none:
//   - Tensor: rank r in 1..5, dims[0..r-1] elements (dims[0] contiguous), strides[0..r-2] the byte strides of dims
//     1..r-1 (multiples of 16, below 2^40), base address 16-byte aligned.
//   - Box: box[d] in 1..256 elements along dim d, box[0] * element size a multiple of 16 bytes; element strides
//     e[d] in 1..8 (e[0] is ignored: dim 0 is always read densely). Along dim d >= 1 the copy takes
//     n_d = ceil(box[d] / e[d]) elements, at coordinates c_d + k e[d]; along dim 0, n_0 = box[0] at c_0 + k.
//   - The copy with start coordinates c (signed 32-bit; they may lie outside the tensor) writes the n_0 x ... x
//     n_{r-1} elements densely to shared memory, dim 0 fastest, at the destination (128-byte aligned). Elements
//     outside the tensor (any coordinate < 0 or >= dims[d]) are written as zeros (OOB fill none). The copy completes
//     n_0 ... n_{r-1} * element size bytes on the mbarrier, out-of-bounds elements included.
//   - Swizzle (applied to the shared-memory byte address A of every 16-byte chunk written): 32B, 64B and 128B XOR the
//     chunk-index bits A[4 .. 4+b) with A[7 .. 7+b), b = 1, 2, 3 (CUTLASS's Swizzle<b, 4, 3> on byte addresses): in a
//     1024-byte aligned buffer of 128-byte rows, 128B puts 16-byte chunk j of row i at chunk j ^ (i % 8). The pattern
//     repeats every 256, 512, 1024 bytes, so buffers are aligned to that for it to be relative to the buffer.
//     The driver requires box[0] * element size <= the swizzle span; the emulator supports only equality (the layout
//     of a narrower box is not documented) and rejects the rest.
//
// Emulator specifics: the map is validated when it is made (std::invalid_argument for what the driver would refuse
// with CUDA_ERROR_INVALID_VALUE, or what the emulator does not support: packed 4- and 6-bit types, swizzles with
// 32-byte or 64-byte atoms); the copy reads global memory when it lands.
#pragma once
#include <cuda.h>  // CUtensorMap and its enums (types only: nothing of the driver is linked)

#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/cuda/async_copy.cuh"

#if !UNET_EMULATED
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled
#endif

namespace unet::kernels::cuda {

#if !UNET_EMULATED

using TensorMap = CUtensorMap;

// cuTensorMapEncodeTiled with interleave none, L2 promotion of 128 bytes and zero fill; `strides` has rank - 1
// entries. Throws std::runtime_error if the driver refuses the parameters.
inline TensorMap make_tensor_map(CUtensorMapDataType type, uint32_t rank, const void* global, const uint64_t* dims,
                                 const uint64_t* strides, const uint32_t* box, const uint32_t* element_strides,
                                 CUtensorMapSwizzle swizzle) {
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    const cudaError_t e =
        cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found);
    if (e != cudaSuccess || found != cudaDriverEntryPointSuccess || !fn)
      throw std::runtime_error("make_tensor_map: the driver has no cuTensorMapEncodeTiled (CUDA 12 or later needed)");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  TensorMap map;
  const CUresult r = encode(&map, type, rank, const_cast<void*>(global), dims, strides, box, element_strides,
                            CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                            CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    throw std::runtime_error("make_tensor_map: cuTensorMapEncodeTiled failed with CUresult " + std::to_string(r));
  return map;
}

// Starts copying the box at coordinates c (Rank of them, dim 0 first) of `map` into shared memory at smem_dst
// (128-byte aligned); when done, complete_tx(box bytes) on `bar`. `map` is the kernel's __grid_constant__ parameter.
template <int Rank>
__device__ __forceinline__ void cp_async_bulk_tensor_global_to_shared(void* smem_dst, const TensorMap& map,
                                                                      const int32_t (&c)[Rank], uint64_t* bar) {
  static_assert(Rank >= 1 && Rank <= 5, "cp.async.bulk.tensor: rank 1 to 5");
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
  const unsigned dst = smem_address(smem_dst), b = smem_address(bar);
  const uint64_t m = reinterpret_cast<uint64_t>(&map);
  // The instruction for `dims` ("2d") with the coordinate operands `coords` ("%3, %4").
#define UNET_TENSOR_LOAD(dims, coords) \
  "cp.async.bulk.tensor." dims ".shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {" coords "}], [%2];"
  if constexpr (Rank == 1) {
    asm volatile(UNET_TENSOR_LOAD("1d", "%3") : : "r"(dst), "l"(m), "r"(b), "r"(c[0]) : "memory");
  } else if constexpr (Rank == 2) {
    asm volatile(UNET_TENSOR_LOAD("2d", "%3, %4") : : "r"(dst), "l"(m), "r"(b), "r"(c[0]), "r"(c[1]) : "memory");
  } else if constexpr (Rank == 3) {
    asm volatile(UNET_TENSOR_LOAD("3d", "%3, %4, %5")
                 :
                 : "r"(dst), "l"(m), "r"(b), "r"(c[0]), "r"(c[1]), "r"(c[2])
                 : "memory");
  } else if constexpr (Rank == 4) {
    asm volatile(UNET_TENSOR_LOAD("4d", "%3, %4, %5, %6")
                 :
                 : "r"(dst), "l"(m), "r"(b), "r"(c[0]), "r"(c[1]), "r"(c[2]), "r"(c[3])
                 : "memory");
  } else {
    asm volatile(UNET_TENSOR_LOAD("5d", "%3, %4, %5, %6, %7")
                 :
                 : "r"(dst), "l"(m), "r"(b), "r"(c[0]), "r"(c[1]), "r"(c[2]), "r"(c[3]), "r"(c[4])
                 : "memory");
  }
#undef UNET_TENSOR_LOAD
#else
  __trap();
#endif
}

#else  // the device emulator

// The emulator's tensor map: cuTensorMapEncodeTiled's parameters, checked (make_tensor_map).
struct TensorMap {
  const unsigned char* global;
  uint32_t rank, element_bytes;
  uint64_t dims[5], strides[5];  // strides in bytes, strides[0] = element_bytes
  uint32_t box[5], element_strides[5];
  CUtensorMapSwizzle swizzle;
};

namespace tensor_emu {
inline uint32_t element_bytes(CUtensorMapDataType type) {
  switch (type) {
    case CU_TENSOR_MAP_DATA_TYPE_UINT8:
      return 1;
    case CU_TENSOR_MAP_DATA_TYPE_UINT16:
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT16:
    case CU_TENSOR_MAP_DATA_TYPE_BFLOAT16:
      return 2;
    case CU_TENSOR_MAP_DATA_TYPE_UINT32:
    case CU_TENSOR_MAP_DATA_TYPE_INT32:
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT32:
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT32_FTZ:
    case CU_TENSOR_MAP_DATA_TYPE_TFLOAT32:
    case CU_TENSOR_MAP_DATA_TYPE_TFLOAT32_FTZ:
      return 4;
    case CU_TENSOR_MAP_DATA_TYPE_UINT64:
    case CU_TENSOR_MAP_DATA_TYPE_INT64:
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT64:
      return 8;
    default:
      return 0;  // the packed 4- and 6-bit types: not emulated
  }
}
// The span of a swizzle mode in bytes (0: none), or -1 for the modes the emulator does not support.
inline int swizzle_span(CUtensorMapSwizzle s) {
  switch (s) {
    case CU_TENSOR_MAP_SWIZZLE_NONE:
      return 0;
    case CU_TENSOR_MAP_SWIZZLE_32B:
      return 32;
    case CU_TENSOR_MAP_SWIZZLE_64B:
      return 64;
    case CU_TENSOR_MAP_SWIZZLE_128B:
      return 128;
    default:
      return -1;
  }
}
// The shared-memory byte address the swizzle moves address a to (see the header comment).
inline uintptr_t swizzle(uintptr_t a, int span) {
  const uintptr_t mask = span > 0 ? static_cast<uintptr_t>(span / 16 - 1) : 0;  // 1, 3 or 7 chunk-index bits
  return a ^ (((a >> 7) & mask) << 4);
}
}  // namespace tensor_emu

// cuTensorMapEncodeTiled's checks and our own struct; throws std::invalid_argument where the driver would return
// CUDA_ERROR_INVALID_VALUE (or the emulator does not support the parameters).
inline TensorMap make_tensor_map(CUtensorMapDataType type, uint32_t rank, const void* global, const uint64_t* dims,
                                 const uint64_t* strides, const uint32_t* box, const uint32_t* element_strides,
                                 CUtensorMapSwizzle swizzle) {
  auto require = [](bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument("make_tensor_map: " + what);
  };
  TensorMap m{};
  m.element_bytes = tensor_emu::element_bytes(type);
  require(m.element_bytes != 0, "data type " + std::to_string(type) + " is not emulated (packed 4- or 6-bit)");
  require(rank >= 1 && rank <= 5, "rank " + std::to_string(rank) + " is not in 1..5");
  require(reinterpret_cast<uintptr_t>(global) % 16 == 0, "the global address is not 16-byte aligned");
  const int span = tensor_emu::swizzle_span(swizzle);
  require(span >= 0, "swizzle mode " + std::to_string(swizzle) + " is not emulated (32- or 64-byte atoms)");
  m.global = static_cast<const unsigned char*>(global);
  m.rank = rank;
  m.swizzle = swizzle;
  for (uint32_t d = 0; d < rank; ++d) {
    const std::string dim = " of dim " + std::to_string(d);
    require(dims[d] >= 1 && dims[d] <= (uint64_t{1} << 32), "size " + std::to_string(dims[d]) + dim);
    require(box[d] >= 1 && box[d] <= 256, "box size " + std::to_string(box[d]) + dim + " is not in 1..256");
    require(element_strides[d] >= 1 && element_strides[d] <= 8,
            "element stride " + std::to_string(element_strides[d]) + dim + " is not in 1..8");
    m.dims[d] = dims[d];
    m.box[d] = box[d];
    m.element_strides[d] = d == 0 ? 1 : element_strides[d];  // ignored for dim 0
    m.strides[d] = d == 0 ? m.element_bytes : strides[d - 1];
    if (d > 0)
      require(m.strides[d] % 16 == 0 && m.strides[d] < (uint64_t{1} << 40),
              "stride " + std::to_string(m.strides[d]) + dim + " is not a multiple of 16 below 2^40");
  }
  const uint32_t inner = box[0] * m.element_bytes;
  require(inner % 16 == 0, "the box's inner dimension (" + std::to_string(inner) + " bytes) is not a multiple of 16");
  require(span == 0 || inner <= static_cast<uint32_t>(span),
          "the box's inner dimension (" + std::to_string(inner) + " bytes) exceeds the swizzle span");
  require(span == 0 || inner == static_cast<uint32_t>(span), "the box's inner dimension (" + std::to_string(inner) +
                                                                 " bytes) is narrower than the swizzle span: the "
                                                                 "emulator does not know that layout");
  return m;
}

template <int Rank>
void cp_async_bulk_tensor_global_to_shared(void* smem_dst, const TensorMap& map, const int32_t (&c)[Rank],
                                           uint64_t* bar,
                                           const std::source_location& site = std::source_location::current()) {
  static_assert(Rank >= 1 && Rank <= 5, "cp.async.bulk.tensor: rank 1 to 5");
  if (map.rank != Rank)
    ::unet::emu::detail::fail("cp.async.bulk.tensor." + std::to_string(Rank) + "d with a tensor map of rank " +
                              std::to_string(map.rank));
  async_emu::check_aligned(smem_dst, 128, "cp.async.bulk.tensor destination");
  const int span = tensor_emu::swizzle_span(map.swizzle);
  uint64_t n[5] = {1, 1, 1, 1, 1}, elements = 1;
  for (int d = 0; d < Rank; ++d) {
    n[d] = (map.box[d] + map.element_strides[d] - 1) / map.element_strides[d];
    elements *= n[d];
  }
  const uint64_t bytes = elements * map.element_bytes;
  if (bytes > 227 * 1024)
    ::unet::emu::detail::fail("cp.async.bulk.tensor: a box of " + std::to_string(bytes) +
                              " bytes exceeds shared memory (227 KiB)");
  int64_t start[5] = {0, 0, 0, 0, 0};
  for (int d = 0; d < Rank; ++d) start[d] = c[d];
  auto land = [=, dst = reinterpret_cast<uintptr_t>(smem_dst)] {
    const uint32_t eb = map.element_bytes;
    uint64_t i[5] = {0, 0, 0, 0, 0};  // the element's index in the box, dim 0 fastest
    for (uint64_t e = 0; e < elements; ++e) {
      bool inside = true;
      uint64_t offset = 0;
      for (int d = 0; d < Rank; ++d) {
        const int64_t g = start[d] + static_cast<int64_t>(i[d] * map.element_strides[d]);
        inside = inside && g >= 0 && static_cast<uint64_t>(g) < map.dims[d];
        offset += inside ? static_cast<uint64_t>(g) * map.strides[d] : 0;
      }
      void* to = reinterpret_cast<void*>(tensor_emu::swizzle(dst + e * eb, span));
      if (inside)
        std::memcpy(to, map.global + offset, eb);
      else
        std::memset(to, 0, eb);
      for (int d = 0; d < Rank && ++i[d] == n[d]; ++d) i[d] = 0;
    }
    ::unet::emu::detail::async_proxy_wrote(reinterpret_cast<void*>(dst), bytes);
  };
  ::unet::emu::detail::async_copy(land, bar, static_cast<unsigned>(bytes), site);
}

#endif

}  // namespace unet::kernels::cuda
