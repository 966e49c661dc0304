// bench/lib/kernel_resources: the ptxas report parser and the launch-bounds reader on real nvcc output committed in
// tests/golden (kernel_report_sample.cu, .ptxas.txt and .o, CUDA 13, sm_80 + sm_90), kernel name shortening, and the
// occupancy calculator against cases computed by hand from the CUDA occupancy formulas (register allocation per warp
// in units of 256 and per sub-partition, shared memory in units of 128 plus 1 KiB reserved per block, 64 warps and
// 32 blocks per SM; A100 164 KiB and H100 228 KiB of shared memory per SM).
#include <doctest/doctest.h>

#include <fstream>
#include <sstream>

#include "bench/lib/kernel_resources.h"
#include "tests/test_util.h"

using namespace unet::bench;

namespace {

std::string golden(const std::string& name) {
  std::ifstream f(std::string(UNET_TEST_DATA_DIR) + "/" + name, std::ios::binary);
  REQUIRE_MESSAGE(f.good(), "missing tests/golden/" << name);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

const PtxasFunction* find(const std::vector<PtxasFunction>& fns, const std::string& mangled, int sm) {
  for (const PtxasFunction& f : fns)
    if (f.mangled == mangled && f.sm == sm) return &f;
  return nullptr;
}

}  // namespace

TEST_CASE("the ptxas report of the sample gives registers, barriers, shared memory and spills per kernel and arch") {
  const std::vector<PtxasFunction> fns = parse_ptxas_report(golden("kernel_report_sample.ptxas.txt"));
  CHECK(fns.size() == 6);  // 3 kernels x 2 architectures
  for (int sm : {80, 90}) {
    const PtxasFunction* copy = find(fns, "_Z11staged_copyPf", sm);
    REQUIRE(copy);
    CHECK(copy->is_entry);
    CHECK(copy->registers == 10);
    CHECK(copy->barriers == 1);
    CHECK(copy->static_smem_bytes == 1200);  // 300 floats
    CHECK_FALSE(copy->spills());
    const PtxasFunction* scale = find(fns, "_ZN6sample5scaleILi3EEEvPfi", sm);
    REQUIRE(scale);
    CHECK(scale->registers == 32);
    CHECK(scale->static_smem_bytes == 0);
    const PtxasFunction* pressure = find(fns, "_Z8pressurePKfPfi", sm);
    REQUIRE(pressure);
    CHECK(pressure->registers == 32);
    CHECK(pressure->stack_bytes == 272);
    CHECK(pressure->spills());
  }
  CHECK(find(fns, "_Z8pressurePKfPfi", 80)->spill_store_bytes == 532);
  CHECK(find(fns, "_Z8pressurePKfPfi", 80)->spill_load_bytes == 556);
  CHECK(find(fns, "_Z8pressurePKfPfi", 90)->spill_store_bytes == 540);
}

TEST_CASE("a non-inlined device function is reported apart, with its spills; sm_90a counts as sm_90") {
  const char* text =
      "ptxas info    : Compiling entry function '_Z1kPf' for 'sm_90a'\n"
      "ptxas info    : Function properties for _Z6helperv\n"
      "    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads\n"
      "ptxas info    : Function properties for _Z1kPf\n"
      "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
      "ptxas info    : Used 40 registers, used 0 barriers, 2048 bytes smem, 360 bytes cmem[0]\n";
  const std::vector<PtxasFunction> fns = parse_ptxas_report(text);
  REQUIRE(fns.size() == 2);
  CHECK(fns[0].mangled == "_Z1kPf");
  CHECK(fns[0].sm == 90);
  CHECK(fns[0].registers == 40);
  CHECK(fns[0].static_smem_bytes == 2048);
  CHECK_FALSE(fns[0].spills());
  CHECK(fns[1].mangled == "_Z6helperv");
  CHECK_FALSE(fns[1].is_entry);
  CHECK(fns[1].sm == 90);
  CHECK(fns[1].spills());
}

TEST_CASE("a register line outside any kernel is an error naming the source and line") {
  CHECK_THROWS_WITH_AS(parse_ptxas_report("ptxas info    : 0 bytes gmem\nptxas info    : Used 8 registers\n", "x.txt"),
                       doctest::Contains("x.txt:2"), std::runtime_error);
  CHECK(parse_ptxas_report("").empty());
}

TEST_CASE("launch bounds are read from the cubins in the object, per architecture; unbounded kernels are absent") {
  const auto bounds = parse_launch_bounds(golden("kernel_report_sample.o"));
  CHECK(bounds.size() == 4);
  for (int sm : {80, 90}) {
    CHECK(bounds.at({"_Z11staged_copyPf", sm}) == 256);
    CHECK(bounds.at({"_Z8pressurePKfPfi", sm}) == 1024);
    CHECK(bounds.count({"_ZN6sample5scaleILi3EEEvPfi", sm}) == 0);
  }
}

TEST_CASE("truncated or foreign bytes give no launch bounds and are never read past their end") {
  const std::string object = golden("kernel_report_sample.o");
  for (size_t cut : {size_t(0), size_t(5), size_t(100), object.size() / 3, object.size() / 2, object.size() - 7})
    CHECK_NOTHROW(parse_launch_bounds(std::string_view(object).substr(0, cut)));
  CHECK(parse_launch_bounds("\x7f"
                            "ELF garbage")
            .empty());
}

TEST_CASE("kernel names are demangled without our namespaces, return type and parameters") {
  CHECK(short_kernel_name("_Z11staged_copyPf") == "staged_copy");
  CHECK(short_kernel_name("_ZN6sample5scaleILi3EEEvPfi") == "sample::scale<3>");
  CHECK(short_kernel_name("_ZN4unet7kernels4cuda12_GLOBAL__N_111norm_kernelIfEEvPKfPfi") == "norm_kernel<float>");
  CHECK(short_kernel_name("plain_c_kernel") == "plain_c_kernel");
}

TEST_CASE("occupancy: 256 threads at 32 registers fill the SM, limited by warps and registers alike") {
  const Occupancy o = theoretical_occupancy(gpu_limits(80), 256, 32, 0);
  // 32 x 32 = 1024 registers per warp; 16384 per sub-partition -> 16 warps each, 64 per SM = 8 blocks of 8 warps.
  CHECK(o.blocks_by_warps == 8);
  CHECK(o.blocks_by_registers == 8);
  CHECK(o.blocks_by_smem == 164);  // 1 KiB reserved per block
  CHECK(o.blocks_per_sm == 8);
  CHECK(o.active_warps == 64);
  CHECK(o.fraction() == 1.0);
  CHECK(o.limiter == "registers+warps");
}

TEST_CASE("occupancy: registers limit at 64 and at 40 per thread, rounded to 256 per warp") {
  Occupancy o = theoretical_occupancy(gpu_limits(80), 256, 64, 0);  // 2048 per warp -> 8 warps per part -> 4 blocks
  CHECK(o.blocks_per_sm == 4);
  CHECK(o.active_warps == 32);
  CHECK(o.limiter == "registers");
  o = theoretical_occupancy(gpu_limits(90), 256, 40, 0);  // 1280 per warp -> 12 warps per part = 48 -> 6 blocks
  CHECK(o.blocks_per_sm == 6);
  CHECK(o.fraction() == 0.75);
  o = theoretical_occupancy(gpu_limits(80), 128, 255, 0);  // 8160 -> 8192 per warp -> 2 warps per part = 8 warps
  CHECK(o.blocks_per_sm == 2);
  CHECK(o.fraction() == 0.125);
}

TEST_CASE("occupancy: shared memory limits by the block's bytes plus the reservation, per architecture") {
  // 48 KiB + 1 KiB = 50176 bytes per block: 167936 / 50176 = 3 blocks on A100, 233472 / 50176 = 4 on H100.
  Occupancy a = theoretical_occupancy(gpu_limits(80), 128, 32, 48 * 1024);
  CHECK(a.blocks_per_sm == 3);
  CHECK(a.active_warps == 12);
  CHECK(a.limiter == "shared memory");
  Occupancy h = theoretical_occupancy(gpu_limits(90), 128, 32, 48 * 1024);
  CHECK(h.blocks_per_sm == 4);
  CHECK(h.fraction() == 0.25);
  // 100 bytes round up with the reservation to 1152: 167936 / 1152 = 145, more than the block limit.
  CHECK(theoretical_occupancy(gpu_limits(80), 32, 16, 100).blocks_by_smem == 145);
}

TEST_CASE("occupancy: small blocks hit the 32-block limit; odd warp counts leave warps unused") {
  Occupancy o = theoretical_occupancy(gpu_limits(80), 32, 16, 0);
  CHECK(o.blocks_per_sm == 32);
  CHECK(o.active_warps == 32);
  CHECK(o.limiter == "blocks");
  o = theoretical_occupancy(gpu_limits(90), 96, 32, 0);  // 3 warps: 21 blocks = 63 warps
  CHECK(o.blocks_per_sm == 21);
  CHECK(o.active_warps == 63);
}

TEST_CASE("occupancy: a block that cannot launch gives zero blocks and says why") {
  // 1024 threads x 128 registers = 131072 registers per block, twice the 65536 a block may have.
  Occupancy o = theoretical_occupancy(gpu_limits(80), 1024, 128, 0);
  CHECK(o.blocks_per_sm == 0);
  CHECK(o.limiter.find("registers per block") != std::string::npos);
  CHECK(theoretical_occupancy(gpu_limits(80), 2048, 32, 0).limiter.find("threads per block") != std::string::npos);
  CHECK(theoretical_occupancy(gpu_limits(80), 128, 32, 164 * 1024).blocks_per_sm == 0);  // above the 163 KiB opt-in
  CHECK(theoretical_occupancy(gpu_limits(90), 128, 32, 200 * 1024).blocks_per_sm == 1);  // H100 allows 227 KiB
  CHECK_THROWS_AS(gpu_limits(75), std::invalid_argument);
}

TEST_CASE("build/kernel_report prints one row per kernel and arch and exits 1 when a kernel spills") {
  unet::test::TempDir tmp("kernel_report");
  std::ofstream(tmp / "sample.ptxas.txt", std::ios::binary) << golden("kernel_report_sample.ptxas.txt");
  std::ofstream(tmp / "sample.o", std::ios::binary) << golden("kernel_report_sample.o");
  std::string out;
  int rc = unet::test::run_tool("kernel_report", "--dir " + tmp.path, &out);
  CHECK(rc == 1);
  CHECK(out.find("SPILLS in 2 functions") != std::string::npos);
  CHECK(out.find("sample: pressure (sm_80)") != std::string::npos);
  // staged_copy: 10 registers, 1200 bytes of shared memory, 256 threads: 8 blocks = 64 warps.
  CHECK(out.find("staged_copy" + std::string(60 - 11, ' ') + " sm_80   10         0/0     0   1200     256 64/64 100%") !=
        std::string::npos);
  CHECK(out.find("no __launch_bounds__") != std::string::npos);  // sample::scale<3>

  // Without the spilling kernel (its lines, from "Compiling entry function" to "Compile time", left out): exit 0.
  std::istringstream lines(golden("kernel_report_sample.ptxas.txt"));
  std::string clean;
  bool in_pressure = false;
  for (std::string line; std::getline(lines, line);) {
    if (line.find("Compiling entry function '_Z8pressurePKfPfi'") != std::string::npos) in_pressure = true;
    if (!in_pressure) clean += line + "\n";
    if (line.find("Compile time") != std::string::npos) in_pressure = false;
  }
  std::ofstream(tmp / "sample.ptxas.txt", std::ios::binary) << clean;
  rc = unet::test::run_tool("kernel_report", "--dir " + tmp.path, &out);
  CHECK_MESSAGE(rc == 0, out);
  CHECK(out.find("no spills") != std::string::npos);
  CHECK(out.find("4 kernel rows") != std::string::npos);

  unet::test::TempDir empty("kernel_report_empty");
  CHECK(unet::test::run_tool("kernel_report", "--dir " + empty.path, &out) == 2);
  CHECK(out.find("no NAME.ptxas.txt") != std::string::npos);
}
