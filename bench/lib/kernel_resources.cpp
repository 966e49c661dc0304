// ptxas report and cubin attribute parsers, kernel name shortening and the occupancy calculator (see the header).
#include "bench/lib/kernel_resources.h"

#include <cxxabi.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <regex>
#include <stdexcept>

namespace unet::bench {

namespace {

int64_t to_int(const std::ssub_match& m) {
  return std::strtoll(m.str().c_str(), nullptr, 10);
}

}  // namespace

std::vector<PtxasFunction> parse_ptxas_report(std::string_view text, const std::string& source) {
  // The line shapes of ptxas -v (CUDA 12 and 13), e.g.
  //   ptxas info    : Compiling entry function '_Z3fooPf' for 'sm_80'
  //   ptxas info    : Function properties for _Z3fooPf
  //       0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
  //   ptxas info    : Used 10 registers, used 1 barriers, 1200 bytes smem, 360 bytes cmem[0]
  static const std::regex entry_re(R"(Compiling entry function '([^']+)' for 'sm_(\d+)[a-z]?')");
  static const std::regex props_re(R"(Function properties for (\S+))");
  static const std::regex stack_re(R"((\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads)");
  static const std::regex used_re(R"(ptxas info\s*: Used (\d+) registers)");
  static const std::regex barriers_re(R"(used (\d+) barriers)");
  static const std::regex smem_re(R"((\d+) bytes smem)");

  std::vector<PtxasFunction> out;
  int entry = -1;       // index of the entry being compiled
  int properties = -1;  // index the next stack/spill line belongs to
  int sm = 0;
  size_t line_no = 0;
  size_t pos = 0;
  auto fail = [&](const std::string& what) {
    throw std::runtime_error(source + ":" + std::to_string(line_no) + ": " + what);
  };
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    const std::string line(text.substr(pos, end - pos));
    pos = end + 1;
    ++line_no;
    std::smatch m;
    if (std::regex_search(line, m, entry_re)) {
      PtxasFunction f;
      f.mangled = m[1].str();
      f.sm = static_cast<int>(to_int(m[2]));
      sm = f.sm;
      out.push_back(f);
      entry = static_cast<int>(out.size()) - 1;
      properties = -1;
    } else if (std::regex_search(line, m, props_re)) {
      if (entry >= 0 && out[entry].mangled == m[1].str()) {
        properties = entry;
      } else {  // a device function that was not inlined: it has its own stack and may spill
        if (sm == 0) fail("function properties before any 'Compiling entry function' line: " + line);
        PtxasFunction f;
        f.mangled = m[1].str();
        f.sm = sm;
        f.is_entry = false;
        out.push_back(f);
        properties = static_cast<int>(out.size()) - 1;
      }
    } else if (std::regex_search(line, m, stack_re)) {
      if (properties < 0) fail("stack/spill line without a 'Function properties' line before it: " + line);
      out[properties].stack_bytes = to_int(m[1]);
      out[properties].spill_store_bytes = to_int(m[2]);
      out[properties].spill_load_bytes = to_int(m[3]);
      properties = -1;
    } else if (std::regex_search(line, m, used_re)) {
      if (entry < 0) fail("register line outside any entry function: " + line);
      PtxasFunction& f = out[entry];
      f.registers = static_cast<int>(to_int(m[1]));
      if (std::regex_search(line, m, barriers_re)) f.barriers = static_cast<int>(to_int(m[1]));
      if (std::regex_search(line, m, smem_re)) f.static_smem_bytes = to_int(m[1]);
      entry = -1;  // the register line closes the entry
    }
  }
  return out;
}

namespace {

// Little-endian reads that refuse to go past the end of the data.
struct Bytes {
  std::string_view d;
  bool has(uint64_t off, uint64_t n) const { return off <= d.size() && n <= d.size() - off; }
  uint64_t u(uint64_t off, int n) const {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(d[off + i]);
    return v;
  }
};

constexpr int kElfMachineCuda = 190;     // EM_CUDA
constexpr int kEiattrMaxThreads = 0x05;  // EIATTR_MAX_THREADS: u32 x, y, z
constexpr int kEifmtSval = 0x04;         // record with a u16 size and that many bytes of data; others are 4 bytes

// The attributes of one cubin that starts at `base` of the object.
void parse_cubin(const Bytes& all, uint64_t base, std::map<std::pair<std::string, int>, int>* bounds) {
  const Bytes e{all.d.substr(base)};
  if (!e.has(0, 64) || e.u(4, 1) != 2 || e.u(5, 1) != 1 || e.u(0x12, 2) != kElfMachineCuda) return;
  const uint64_t shoff = e.u(0x28, 8);
  const uint64_t flags = e.u(0x30, 4);
  const uint64_t shentsize = e.u(0x3a, 2), shnum = e.u(0x3c, 2), shstrndx = e.u(0x3e, 2);
  // The SM version sits in bits 8..15 of e_flags in the cubins nvcc 12/13 write (0x5004 sm_80, 0x5a04 sm_90),
  // in bits 0..7 in older ones.
  int sm = static_cast<int>((flags >> 8) & 0xff);
  if (sm == 0) sm = static_cast<int>(flags & 0xff);
  if (shentsize < 64 || shstrndx >= shnum || !e.has(shoff, shnum * shentsize)) return;
  auto section = [&](uint64_t i, uint64_t* off, uint64_t* size) {
    const uint64_t h = shoff + i * shentsize;
    *off = e.u(h + 24, 8);
    *size = e.u(h + 32, 8);
    return e.u(h, 4);  // name offset
  };
  uint64_t str_off, str_size;
  section(shstrndx, &str_off, &str_size);
  if (!e.has(str_off, str_size)) return;
  const std::string_view strtab = e.d.substr(str_off, str_size);
  const std::string_view prefix = ".nv.info.";
  for (uint64_t i = 0; i < shnum; ++i) {
    uint64_t off, size;
    const uint64_t name_off = section(i, &off, &size);
    if (name_off >= strtab.size()) continue;
    const std::string_view rest = strtab.substr(name_off);
    const std::string_view name = rest.substr(0, rest.find('\0'));
    if (name.substr(0, prefix.size()) != prefix || !e.has(off, size)) continue;
    const std::string kernel(name.substr(prefix.size()));
    for (uint64_t p = off; p + 4 <= off + size;) {
      const uint64_t fmt = e.u(p, 1), attr = e.u(p + 1, 1);
      if (fmt != kEifmtSval) {
        p += 4;
        continue;
      }
      const uint64_t n = e.u(p + 2, 2);
      if (p + 4 + n > off + size) break;
      if (attr == kEiattrMaxThreads && n >= 12) {
        const uint64_t threads = e.u(p + 4, 4) * e.u(p + 8, 4) * e.u(p + 12, 4);
        if (threads > 0 && threads <= INT_MAX) (*bounds)[{kernel, sm}] = static_cast<int>(threads);
      }
      p += 4 + n;
    }
  }
}

}  // namespace

std::map<std::pair<std::string, int>, int> parse_launch_bounds(std::string_view object_bytes) {
  std::map<std::pair<std::string, int>, int> bounds;
  const Bytes all{object_bytes};
  const std::string_view magic(
      "\x7f"
      "ELF",
      4);
  for (size_t at = object_bytes.find(magic); at != std::string_view::npos; at = object_bytes.find(magic, at + 1))
    parse_cubin(all, at, &bounds);
  return bounds;
}

std::string short_kernel_name(const std::string& mangled) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> d(abi::__cxa_demangle(mangled.c_str(), nullptr, nullptr, &status), std::free);
  if (status != 0 || !d) return mangled;  // extern "C" kernels are not mangled
  std::string s = d.get();
  for (const char* ns : {"(anonymous namespace)::", "unet::kernels::cuda::", "unet::kernels::", "unet::"}) {
    for (size_t at; (at = s.find(ns)) != std::string::npos;) s.erase(at, std::strlen(ns));
  }
  // Drop the parameter list: the parenthesis that matches the final ')'.
  if (!s.empty() && s.back() == ')') {
    int depth = 0;
    for (size_t i = s.size(); i-- > 0;) {
      if (s[i] == ')') ++depth;
      if (s[i] == '(' && --depth == 0) {
        s.erase(i);
        break;
      }
    }
  }
  // Template instances are demangled with their return type in front.
  if (s.rfind("void ", 0) == 0) s.erase(0, 5);
  return s;
}

const GpuLimits& gpu_limits(int sm) {
  // Shared memory per SM is the largest carveout: 164 KiB on A100 (sm_80), 228 KiB on H100 (sm_90); the per-block
  // opt-in maximum is 1 KiB less (the driver's reservation). Everything else is common to compute capability 8.0
  // and 9.0: 64 warps, 32 blocks and 64 Ki registers per SM, 255 registers per thread.
  static const GpuLimits a100 = [] {
    GpuLimits g{"A100", 80};
    g.smem_per_sm = 164 * 1024;
    g.smem_per_block_optin = 163 * 1024;
    return g;
  }();
  static const GpuLimits h100 = [] {
    GpuLimits g{"H100", 90};
    g.smem_per_sm = 228 * 1024;
    g.smem_per_block_optin = 227 * 1024;
    return g;
  }();
  if (sm == 80) return a100;
  if (sm == 90) return h100;
  throw std::invalid_argument("no occupancy limits for sm_" + std::to_string(sm) + " (expected sm_80 or sm_90)");
}

Occupancy theoretical_occupancy(const GpuLimits& g, int threads, int registers, int64_t smem_bytes) {
  Occupancy o;
  o.max_warps = g.max_warps_per_sm;
  auto round_up = [](int64_t v, int64_t unit) { return (v + unit - 1) / unit * unit; };
  if (threads <= 0 || threads > g.max_threads_per_block) {
    o.limiter =
        "threads per block " + std::to_string(threads) + " outside 1.." + std::to_string(g.max_threads_per_block);
    return o;
  }
  if (registers < 0 || registers > g.max_registers_per_thread || smem_bytes < 0) {
    o.limiter =
        "registers per thread " + std::to_string(registers) + " above " + std::to_string(g.max_registers_per_thread);
    return o;
  }
  const int warps = (threads + g.warp_size - 1) / g.warp_size;
  o.blocks_by_warps = g.max_warps_per_sm / warps;
  o.blocks_by_blocks = g.max_blocks_per_sm;

  // Registers go to warps in units of 256, and each of the 4 sub-partitions holds whole warps of a quarter of the
  // register file. The per-block check assumes a block's warps spread over all sub-partitions (rounded up to 4).
  const int64_t regs_per_warp = round_up(int64_t(registers) * g.warp_size, g.register_allocation_unit);
  if (regs_per_warp == 0) {
    o.blocks_by_registers = INT_MAX;
  } else if (regs_per_warp * round_up(warps, g.sub_partitions) > g.registers_per_block) {
    o.limiter = "registers per block " + std::to_string(regs_per_warp * warps) + " above " +
                std::to_string(g.registers_per_block);
    return o;
  } else {
    const int64_t warps_per_part = (g.registers_per_sm / g.sub_partitions) / regs_per_warp;
    o.blocks_by_registers = static_cast<int>(warps_per_part * g.sub_partitions / warps);
  }

  // Shared memory: the block's bytes plus the driver's reservation, rounded up to the allocation unit.
  const int64_t smem = round_up(smem_bytes + g.smem_reserved_per_block, g.smem_allocation_unit);
  if (smem > g.smem_per_block_optin + g.smem_reserved_per_block) {
    o.limiter =
        "shared memory per block " + std::to_string(smem_bytes) + " above " + std::to_string(g.smem_per_block_optin);
    return o;
  }
  o.blocks_by_smem = static_cast<int>(g.smem_per_sm / smem);

  o.blocks_per_sm = std::min({o.blocks_by_warps, o.blocks_by_registers, o.blocks_by_smem, o.blocks_by_blocks});
  o.active_warps = o.blocks_per_sm * warps;
  const std::pair<int, const char*> limits[] = {{o.blocks_by_registers, "registers"},
                                                {o.blocks_by_smem, "shared memory"},
                                                {o.blocks_by_warps, "warps"},
                                                {o.blocks_by_blocks, "blocks"}};
  for (const auto& [blocks, name] : limits) {
    if (blocks != o.blocks_per_sm) continue;
    if (!o.limiter.empty()) o.limiter += '+';
    o.limiter += name;
  }
  if (o.blocks_per_sm == 0) o.limiter = "no block fits: " + o.limiter;
  return o;
}

}  // namespace unet::bench
