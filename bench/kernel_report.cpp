// Resource report of every CUDA kernel: one row per (kernel, architecture) from the ptxas reports
// the build writes (build/cuda_objects/NAME.ptxas.txt) and the launch bounds in the objects beside them
// (NAME.o): registers, spill stores/loads, stack, static shared memory, threads per block, and the theoretical
// occupancy on A100 (sm_80) and H100 (sm_90) with its limiting resource. Exit status 1 when any function spills
// (the kernels must not), 2 for a usage error or when there is nothing to report.
// Usage: kernel_report [--dir DIR] [--dynamic-smem TEXT=BYTES ...]
//   --dir           where NAME.ptxas.txt and NAME.o are (default: the build's cuda_objects directory)
//   --dynamic-smem  dynamic shared memory is chosen at launch, so ptxas cannot report it: count BYTES more per block
//                   for the kernels whose short name contains TEXT (repeatable)
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "bench/lib/kernel_resources.h"

#ifndef UNET_CUDA_OBJECTS_DIR
#define UNET_CUDA_OBJECTS_DIR "build/cuda_objects"
#endif

using namespace unet::bench;
namespace fs = std::filesystem;

namespace {

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + p.string());
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

int usage(const char* msg) {
  std::fprintf(stderr, "kernel_report: %s\nusage: kernel_report [--dir DIR] [--dynamic-smem TEXT=BYTES ...]\n", msg);
  return 2;
}

}  // namespace

// The name in a 60-column cell: common type names abbreviated, and when still too long the middle left out, so both
// the kernel's name and its last template arguments (tile shape, stages) stay readable.
std::string display_name(std::string name) {
  for (const auto& [from, to] : {std::pair<std::string, std::string>{"unsigned short", "u16"}, {"unsigned char", "u8"},
                                 {"unsigned int", "u32"}, {"(bool)1", "true"}, {"(bool)0", "false"}, {", ", ","}}) {
    for (size_t at = name.find(from); at != std::string::npos; at = name.find(from, at + to.size()))
      name.replace(at, from.size(), to);
  }
  if (name.size() > 60) name = name.substr(0, 32) + "..." + name.substr(name.size() - 25);
  return name;
}

int main(int argc, char** argv) {
  fs::path dir = UNET_CUDA_OBJECTS_DIR;
  std::vector<std::pair<std::string, int64_t>> dynamic_smem;  // (name part, bytes)
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--dir") && i + 1 < argc) {
      dir = argv[++i];
    } else if (!std::strcmp(argv[i], "--dynamic-smem") && i + 1 < argc) {
      const std::string v = argv[++i];
      const size_t eq = v.find('=');
      char* end = nullptr;
      const long long bytes = eq == std::string::npos ? -1 : std::strtoll(v.c_str() + eq + 1, &end, 10);
      if (eq == 0 || bytes < 0 || !end || *end)
        return usage(
            ("--dynamic-smem expects TEXT=BYTES (a kernel name part and a byte count), got '" + v + "'").c_str());
      dynamic_smem.emplace_back(v.substr(0, eq), bytes);
    } else if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h")) {
      std::printf("usage: kernel_report [--dir DIR] [--dynamic-smem TEXT=BYTES ...]   (default DIR %s)\n",
                  UNET_CUDA_OBJECTS_DIR);
      return 0;
    } else {
      return usage((std::string("unknown argument '") + argv[i] + "'").c_str());
    }
  }
  std::vector<fs::path> reports;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() > 10 && name.ends_with(".ptxas.txt")) reports.push_back(it->path());
  }
  if (reports.empty())
    return usage(("no NAME.ptxas.txt in '" + dir.string() +
                  "': build the target cuda_kernels_nvcc first (needs nvcc), or pass --dir")
                     .c_str());
  std::sort(reports.begin(), reports.end());

  std::printf("CUDA kernel resources from ptxas (-Xptxas -v) and the objects' launch bounds, in %s\n",
              dir.string().c_str());
  std::printf("occupancy: theoretical (CUDA occupancy formulas) from registers, threads and static shared memory%s\n\n",
              dynamic_smem.empty() ? " (dynamic shared memory is chosen at launch: see --dynamic-smem)"
                                   : " plus the --dynamic-smem bytes");
  std::printf("%-12s %-60s %-5s %4s %11s %5s %6s %7s %10s %-22s\n", "file", "kernel", "arch", "regs", "spill st/ld",
              "stack", "smem", "threads", "occupancy", "limited by");
  int kernels = 0, unbounded = 0;
  std::vector<std::string> spills;
  try {
    for (const fs::path& report : reports) {
      const std::string file = report.filename().string().substr(0, report.filename().string().size() - 10);
      const std::vector<PtxasFunction> fns = parse_ptxas_report(read_file(report), report.string());
      const fs::path object = dir / (file + ".o");
      const auto bounds =
          fs::exists(object) ? parse_launch_bounds(read_file(object)) : std::map<std::pair<std::string, int>, int>{};
      for (const PtxasFunction& f : fns) {
        const std::string full_name = short_kernel_name(f.mangled);
        std::string name = display_name(full_name);
        char spill[32], arch[16];
        std::snprintf(spill, sizeof spill, "%lld/%lld", static_cast<long long>(f.spill_store_bytes),
                      static_cast<long long>(f.spill_load_bytes));
        std::snprintf(arch, sizeof arch, "sm_%d", f.sm);
        if (f.spills()) spills.push_back(file + ": " + short_kernel_name(f.mangled) + " (" + arch + ")");
        if (!f.is_entry) {
          std::printf("%-12s %-60s %-5s %4s %11s %5lld %6s %7s %10s %-22s\n", file.c_str(), name.c_str(), arch, "-",
                      spill, static_cast<long long>(f.stack_bytes), "-", "-", "-", "(device function)");
          continue;
        }
        ++kernels;
        const auto b = bounds.find({f.mangled, f.sm});
        std::string threads = "-", occupancy = "-", limiter = "no __launch_bounds__";
        if (b == bounds.end()) {
          ++unbounded;
        } else {
          threads = std::to_string(b->second);
          try {
            int64_t smem = f.static_smem_bytes;
            for (const auto& [part, bytes] : dynamic_smem)
              if (full_name.find(part) != std::string::npos) smem += bytes;
            const Occupancy o = theoretical_occupancy(gpu_limits(f.sm), b->second, f.registers, smem);
            char occ[32];
            std::snprintf(occ, sizeof occ, "%d/%d %3.0f%%", o.active_warps, o.max_warps, 100 * o.fraction());
            occupancy = occ;
            limiter = o.limiter;
          } catch (const std::invalid_argument&) {
            limiter = "no limits for this arch";
          }
        }
        std::printf("%-12s %-60s %-5s %4d %11s %5lld %6lld %7s %10s %-22s\n", file.c_str(), name.c_str(), arch,
                    f.registers, spill, static_cast<long long>(f.stack_bytes),
                    static_cast<long long>(f.static_smem_bytes), threads.c_str(), occupancy.c_str(), limiter.c_str());
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kernel_report: %s\n", e.what());
    return 1;
  }
  std::printf("\n%d kernel rows from %zu files; %d without __launch_bounds__ (occupancy depends on the launch)\n",
              kernels, reports.size(), unbounded);
  if (spills.empty()) {
    std::printf("no spills\n");
    return 0;
  }
  std::printf("SPILLS in %zu functions (the kernels must not spill):\n", spills.size());
  for (const std::string& s : spills) std::printf("  %s\n", s.c_str());
  return 1;
}
