// Per-kernel GPU resources without a GPU (docs/emulator.md, "What it cannot tell"): the ptxas report that
// the build writes for every kernels/cuda/*.cu (build/cuda_objects/NAME.ptxas.txt, nvcc -Xptxas -v for sm_80 and
// sm_90), the threads per block that __launch_bounds__ put into the compiled object, and the theoretical occupancy
// those resources allow on A100 (sm_80) and H100 (sm_90), computed with the CUDA occupancy formulas.
// Used by bench/kernel_report.cpp; tested by tests/test_kernel_report.cpp.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace unet::bench {

// One function of one architecture as ptxas reports it. Entry functions (kernels) carry registers and shared memory;
// non-inlined device functions only have a "Function properties" line (stack and spills), with is_entry false.
struct PtxasFunction {
  std::string mangled;
  int sm = 0;  // 80 for sm_80, 90 for sm_90 / sm_90a
  bool is_entry = true;
  int registers = 0;
  int barriers = 0;
  int64_t stack_bytes = 0;
  int64_t spill_store_bytes = 0;
  int64_t spill_load_bytes = 0;
  int64_t static_smem_bytes = 0;
  bool spills() const { return spill_store_bytes > 0 || spill_load_bytes > 0; }
};

// Parses the text ptxas -v writes (several architectures may follow one another). Lines it does not know are skipped;
// a register or property line outside any function throws std::runtime_error naming `source` and the line number.
std::vector<PtxasFunction> parse_ptxas_report(std::string_view text, const std::string& source = "ptxas report");

// The maximum threads per block (x * y * z of __launch_bounds__ / .maxntid) of every kernel in an object that nvcc
// wrote: the host object's fat binary embeds one CUDA ELF (cubin) per architecture, whose ".nv.info.<kernel>"
// sections hold attribute records; EIATTR_MAX_THREADS (0x05) carries the three bounds. Kernels without launch bounds
// are absent. Key: (mangled name, sm). Truncated or malformed ELF data is skipped, never read out of bounds.
std::map<std::pair<std::string, int>, int> parse_launch_bounds(std::string_view object_bytes);

// The kernel's name as people read it: demangled, without namespaces of ours, return type and parameter list,
// e.g. "_ZN4unet7kernels4cuda12_GLOBAL__N_111norm_kernelIfEEvPKfPfi" -> "norm_kernel<float>".
std::string short_kernel_name(const std::string& mangled);

// Per-architecture limits that decide occupancy (CUDA C++ Programming Guide, "Technical Specifications per Compute
// Capability"; the CUDA occupancy calculator's allocation granularities; A100 / H100 SXM device properties).
struct GpuLimits {
  const char* gpu;  // "A100", "H100"
  int sm;
  int warp_size = 32;
  int max_threads_per_block = 1024;
  int max_warps_per_sm = 64;
  int max_blocks_per_sm = 32;
  int registers_per_sm = 65536;
  int registers_per_block = 65536;
  int max_registers_per_thread = 255;
  int register_allocation_unit = 256;  // registers per warp are rounded up to this
  int sub_partitions = 4;              // the register file is split over 4 schedulers; warps fill each part
  int64_t smem_per_sm = 0;             // largest shared-memory carveout
  int64_t smem_per_block_optin = 0;    // largest per-block request (opt-in above 48 KiB)
  int smem_allocation_unit = 128;
  int smem_reserved_per_block = 1024;  // the driver's per-block reservation (sm_80 and later)
};

// Limits of sm_80 (A100) and sm_90 (H100); std::invalid_argument for another architecture.
const GpuLimits& gpu_limits(int sm);

struct Occupancy {
  int blocks_by_warps = 0, blocks_by_registers = 0, blocks_by_smem = 0, blocks_by_blocks = 0;
  int blocks_per_sm = 0;  // the smallest of the four
  int active_warps = 0;   // blocks_per_sm * warps per block
  int max_warps = 0;
  double fraction() const { return max_warps ? double(active_warps) / max_warps : 0; }
  std::string limiter;  // "registers", "shared memory", "warps", "blocks" (tied limits joined with '+'), or why 0
};

// Theoretical occupancy of a block of `threads` threads using `registers` per thread and `smem_bytes` of shared
// memory (static + dynamic) per block. A block that cannot launch gives blocks_per_sm 0 and the reason in limiter.
Occupancy theoretical_occupancy(const GpuLimits& g, int threads, int registers, int64_t smem_bytes);

}  // namespace unet::bench
