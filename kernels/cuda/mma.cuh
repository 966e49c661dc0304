// Tensor-core and async-copy leaf intrinsics (docs/emulator.md), the only place kernels meet them: under nvcc each
// wrapper is one inline PTX instruction (sm_80 and later); under the device emulator each is a warp collective that
// implements the PTX ISA's fragment layouts exactly, so a kernel built from them is checked on the CPU.
//
// Fragment layouts, for lane L of the warp, g = L >> 2 ("group"), t = L % 4 ("thread in group"). A 32-bit register
// holds two 16-bit values, the lower-numbered element in the low half.
//   mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32:  D (16x8) = A (16x16, row) * B (16x8, col) + C
//     A, 4 registers = a0..a7:  a_i at row g + 8 * ((i >> 1) & 1), column 2t + (i & 1) + 8 * (i >= 4)
//                               (a[0] = rows g, k 0..7; a[1] = rows g+8, k 0..7; a[2] = rows g, k 8..15; a[3] =
//                               g+8, 8..15)
//     B, 2 registers = b0..b3:  b_i at k = 2t + (i & 1) + 8 * (i >= 2), column n = g
//     C and D, 4 floats:        c_i at row g + 8 * (i >= 2), column 2t + (i & 1)
//   mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32:  D (16x8) = A (16x8, row) * B (8x8, col) + C, one 32-bit
//   register per tf32 element (an f32 bit pattern whose low 13 mantissa bits the tensor core ignores)
//     A, 4 registers a0..a3:    a_i at row g + 8 * (i & 1), column t + 4 * (i >= 2)
//     B, 2 registers b0, b1:    b_i at k = t + 4i, column n = g
//     C and D, 4 floats:        as for m16n8k16
//   cvt.rna.tf32.f32 (to_tf32): f32 rounded to tf32 (10 explicit mantissa bits), to nearest with ties away from zero,
//     the 13 low mantissa bits of the result zero; the result is the register an mma .tf32 operand takes.
//   ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: four 8x8 matrices of 16-bit values, row r of matrix j at the
//     16-byte-aligned shared address given by lane 8j + r; register j of lane L holds row L >> 2, columns 2(L & 3) and
//     2(L & 3) + 1 of matrix j, or with .trans of its transpose (elements (2(L & 3), L >> 2) and (2(L & 3) + 1, L >> 2)
//     of the matrix as stored).
//   cp.async.cg.shared.global, 16 bytes; cp.async.commit_group closes the group of copies this thread issued since
//     the last commit; cp.async.wait_group N waits until at most N of this thread's groups are still in flight. Other
//     threads see the data only after a barrier, as for any shared-memory store.
//
// Emulator specifics:
//   - mma computes each D element as C plus the sum of the 16 exact products (an f16 or bf16 product is exact in
//     f32), accumulated in double in k order and rounded once to f32. The ISA leaves the tensor core's internal order
//     and rounding unspecified, so a GPU may differ by a few f32 ulp of |C| + sum |a b|; dyadic inputs whose partial
//     sums are all exact in f32 give identical results everywhere.
//   - mma .tf32 likewise (products of tf32 values are exact in f32); it drops the 13 low mantissa bits of each A and B
//     register as the tensor core does, so an operand that was not converted behaves as if truncated.
//   - to_tf32 is the bit operation of cvt.rna (add half a tf32 ulp to the magnitude, clear the 13 low bits; an
//     overflow rounds to infinity); NaN and infinity pass through.
//   - ldmatrix reads the 32 rows when the last lane of the warp arrives, as one warp-wide instruction would; a row
//     address that is not 16-byte aligned is a KernelError. Whether the address is in shared memory is not checked.
//   - cp_async copies at once (addresses must be 16-byte aligned); commit and wait are then no-ops. A kernel that reads
//     the destination before the wait, or another thread's data without a barrier, is wrong on a GPU yet passes here:
//     schedule fuzzing does not catch that race.
//   - mma and ldmatrix are .sync.aligned: every lane of the warp must call them (a rendezvous of the full warp).
#pragma once
#include <cstdint>
#include <type_traits>

#include "kernels/cuda/cuda_compat.cuh"

#if UNET_EMULATED
#include <cstring>
#include <source_location>
#include <string>
#endif

namespace unet::kernels::cuda {

#if !UNET_EMULATED

// d = a * b + c on the tensor cores; T is __half or __nv_bfloat16 (the type of A and B). d may be c.
template <class T>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                             const float (&c)[4]) {
  static_assert(std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>, "mma_m16n8k16: f16 or bf16 inputs");
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
  }
}

// d = a * b + c on the tensor cores, A and B tf32 (registers from to_tf32). d may be c.
__device__ __forceinline__ void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                                 const float (&c)[4]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%10, %11, %12, %13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
}

// f32 rounded to tf32 (nearest, ties away from zero), as the register an mma .tf32 operand takes.
__device__ __forceinline__ uint32_t to_tf32(float f) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(f));
  return r;
}

// Four 8x8 b16 matrices from shared memory; `row` is this lane's row address (lane 8j + r: row r of matrix j).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}
// The same, each matrix transposed.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

// Starts copying 16 bytes from global to shared memory (both 16-byte aligned), bypassing L1.
__device__ __forceinline__ void cp_async(void* smem_dst, const void* gmem_src) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem_src) : "memory");
}
// Closes the group of this thread's copies started since the last commit.
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
// Waits until at most N of this thread's committed groups are still in flight (N = 0: all done).
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  static_assert(N >= 0, "cp_async_wait: N >= 0");
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

#else  // the device emulator

namespace mma_emu {
constexpr unsigned kFullWarp = 0xffffffffu;

template <class T>
float to_float(uint16_t bits) {
  if constexpr (std::is_same_v<T, __half>) {
    __half_raw raw;
    raw.x = bits;
    return __half2float(__half(raw));
  } else {
    __nv_bfloat16_raw raw;
    raw.x = bits;
    return __bfloat162float(__nv_bfloat16(raw));
  }
}
inline uint16_t half_of(uint32_t reg, int i) {
  return static_cast<uint16_t>(reg >> (16 * i));
}
inline void check_aligned(const void* p, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0)
    ::unet::emu::detail::fail(std::string(what) + ": address " + std::to_string(reinterpret_cast<uintptr_t>(p)) +
                              " is not 16-byte aligned");
}
// Rows 0..31 as the lanes addressed them, read when the whole warp has arrived.
inline void gather_rows(uint16_t (&rows)[32][8], const void* row, const std::source_location& site) {
  check_aligned(row, "ldmatrix");
  ::unet::emu::detail::warp_all_gather(kFullWarp, row, rows, sizeof rows[0], site);
}
}  // namespace mma_emu

template <class T>
void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4],
                  const std::source_location& site = std::source_location::current()) {
  static_assert(std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>, "mma_m16n8k16: f16 or bf16 inputs");
  struct Operands {
    uint32_t a[4], b[2];
  };
  const Operands mine{{a[0], a[1], a[2], a[3]}, {b[0], b[1]}};
  Operands all[32] = {};
  ::unet::emu::detail::warp_all_gather(mma_emu::kFullWarp, &mine, all, sizeof mine, site);
  // Element (row, k) of A and (k, n) of B, found through the fragment layouts in the header comment.
  auto A = [&all](int row, int k) {
    const Operands& o = all[(row % 8) * 4 + (k % 8) / 2];
    return mma_emu::to_float<T>(mma_emu::half_of(o.a[(row >= 8) + 2 * (k >= 8)], k & 1));
  };
  auto B = [&all](int k, int n) {
    const Operands& o = all[n * 4 + (k % 8) / 2];
    return mma_emu::to_float<T>(mma_emu::half_of(o.b[k >= 8], k & 1));
  };
  const int lane = ::unet::emu::detail::current->lane, g = lane >> 2, t = lane & 3;
  float out[4];
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i >= 2), col = 2 * t + (i & 1);
    double sum = c[i];
    for (int k = 0; k < 16; ++k) sum += static_cast<double>(A(row, k)) * static_cast<double>(B(k, col));
    out[i] = static_cast<float>(sum);
  }
  for (int i = 0; i < 4; ++i) d[i] = out[i];  // after reading c: d may be c
}

// Round half a tf32 ulp away from zero on the magnitude, then clear the 13 bits tf32 lacks (see the header comment).
inline uint32_t to_tf32(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  if ((bits & 0x7f800000u) == 0x7f800000u) return bits;  // infinity or NaN
  return (bits + 0x1000u) & ~0x1fffu;                    // a carry into the exponent is the correct rounding
}

inline void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4],
                             const std::source_location& site = std::source_location::current()) {
  struct Operands {
    uint32_t a[4], b[2];
  };
  const Operands mine{{a[0], a[1], a[2], a[3]}, {b[0], b[1]}};
  Operands all[32] = {};
  ::unet::emu::detail::warp_all_gather(mma_emu::kFullWarp, &mine, all, sizeof mine, site);
  auto as_tf32 = [](uint32_t reg) {  // the tensor core reads only the 19 high bits
    reg &= ~0x1fffu;
    float f;
    std::memcpy(&f, &reg, sizeof f);
    return f;
  };
  // Element (row, k) of A and (k, n) of B, through the .tf32 fragment layouts in the header comment.
  auto A = [&](int row, int k) { return as_tf32(all[(row % 8) * 4 + k % 4].a[(row >= 8) + 2 * (k >= 4)]); };
  auto B = [&](int k, int n) { return as_tf32(all[n * 4 + k % 4].b[k >= 4]); };
  const int lane = ::unet::emu::detail::current->lane, g = lane >> 2, t = lane & 3;
  float out[4];
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i >= 2), col = 2 * t + (i & 1);
    double sum = c[i];
    for (int k = 0; k < 8; ++k) sum += static_cast<double>(A(row, k)) * static_cast<double>(B(k, col));
    out[i] = static_cast<float>(sum);
  }
  for (int i = 0; i < 4; ++i) d[i] = out[i];  // after reading c: d may be c
}

inline void ldmatrix_x4(uint32_t (&r)[4], const void* row,
                        const std::source_location& site = std::source_location::current()) {
  uint16_t rows[32][8];
  mma_emu::gather_rows(rows, row, site);
  const int lane = ::unet::emu::detail::current->lane;
  for (int j = 0; j < 4; ++j) {
    const uint16_t* src = rows[8 * j + (lane >> 2)] + 2 * (lane & 3);
    r[j] = src[0] | static_cast<uint32_t>(src[1]) << 16;
  }
}

inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row,
                              const std::source_location& site = std::source_location::current()) {
  uint16_t rows[32][8];
  mma_emu::gather_rows(rows, row, site);
  const int lane = ::unet::emu::detail::current->lane;
  for (int j = 0; j < 4; ++j) {
    const int stored_row = 8 * j + 2 * (lane & 3), stored_col = lane >> 2;
    r[j] = rows[stored_row][stored_col] | static_cast<uint32_t>(rows[stored_row + 1][stored_col]) << 16;
  }
}

// Copies at once (see the header comment); commit and wait have nothing left to do.
inline void cp_async(void* smem_dst, const void* gmem_src) {
  mma_emu::check_aligned(smem_dst, "cp_async destination");
  mma_emu::check_aligned(gmem_src, "cp_async source");
  std::memcpy(smem_dst, gmem_src, 16);
}
inline void cp_async_commit() {}
template <int N>
void cp_async_wait() {
  static_assert(N >= 0, "cp_async_wait: N >= 0");
}

#endif

}  // namespace unet::kernels::cuda
