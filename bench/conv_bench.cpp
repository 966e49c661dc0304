// Convolution micro-benchmark: fprop, dgrad and wgrad of our CPU kernels at the nnU-Net 3D level shapes
// (batch 1, 3x3x3, stride 1, pad 1, C = K), reported as median ms and GFLOP/s, next to PyTorch's (oneDNN) figures for
// the same shapes and passes measured in the same run by bench/torch_conv.py (when /usr/bin/python3 has torch).
// Usage: conv_bench [--quick] [--threads N] [--no-torch]
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/random.h"
#include "kernels/conv.h"

using namespace unet;

namespace {

struct Level {
  int64_t channels, size;
};
const Level kLevels[] = {{32, 64}, {64, 32}, {128, 16}, {256, 8}, {320, 8}};

template <class F>
double median_ms(F&& fn, int warmup, int reps) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// bench/torch_conv.py: beside this source file, or at ../bench/ from the executable (build/conv_bench).
std::string torch_script(const char* argv0) {
  std::string here = __FILE__;
  std::string candidates[] = {here.substr(0, here.find_last_of('/') + 1) + "torch_conv.py",
                              std::filesystem::path(argv0).parent_path().string() + "/../bench/torch_conv.py"};
  for (const std::string& c : candidates)
    if (std::filesystem::exists(c)) return c;
  return "";
}

// Runs bench/torch_conv.py and returns its JSON, or null when it or torch is unavailable.
nlohmann::json torch_figures(const std::string& script, int threads, int warmup, int reps) {
  if (script.empty()) return nullptr;
  std::string cmd = "/usr/bin/python3 " + script + " --threads " + std::to_string(threads) + " --warmup " +
                    std::to_string(warmup) + " --reps " + std::to_string(reps);
  for (const Level& l : kLevels) {  // appended piecewise: GCC 12 warns falsely (-Wrestrict) on " " + to_string(..)
    cmd += ' ';
    cmd += std::to_string(l.channels);
    cmd += 'x';
    cmd += std::to_string(l.size);
  }
  cmd += " 2>/dev/null";
  FILE* pipe = popen(cmd.c_str(), "r");
  if (!pipe) return nullptr;
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) out.append(buf, n);
  if (pclose(pipe) != 0) return nullptr;
  try {
    return nlohmann::json::parse(out);
  } catch (const std::exception&) {
    return nullptr;
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, with_torch = true;
  int threads = 2;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) {
      quick = true;
    } else if (!std::strcmp(argv[i], "--no-torch")) {
      with_torch = false;
    } else if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) {
      threads = std::max(1, std::atoi(argv[++i]));
    } else {
      std::fprintf(stderr, "usage: %s [--quick] [--threads N] [--no-torch]\n", argv[0]);
      return 2;
    }
  }
  omp_set_num_threads(threads);
  const int warmup = quick ? 1 : 2, reps = quick ? 3 : 7;

  nlohmann::json torch = with_torch ? torch_figures(torch_script(argv[0]), threads, warmup, reps) : nlohmann::json(nullptr);
  if (with_torch && torch.is_null()) std::printf("(PyTorch figures unavailable: /usr/bin/python3 -c 'import torch' failed)\n");

  std::printf("conv3d 3x3x3 stride 1 pad 1, batch 1, C = K, %d threads, median of %d reps\n", threads, reps);
  std::printf("%-14s %-6s %9s %9s %11s %11s %7s\n", "shape", "pass", "ours ms", "GFLOP/s", "torch ms", "GFLOP/s",
              "ratio");
  Rng rng(1);
  for (size_t li = 0; li < std::size(kLevels); ++li) {
    const Level& l = kLevels[li];
    kernels::ConvProblem p;
    p.N = 1, p.D = p.H = p.W = l.size, p.C = p.K = l.channels;
    p.T = p.R = p.S = 3;
    p.pad_d = p.pad_h = p.pad_w = 1;
    p.compute_output_size();
    Tensor x = randn({1, l.size, l.size, l.size, l.channels}, rng);
    Tensor w = randn({l.channels, 3, 3, 3, l.channels}, rng, 0.05f);
    Tensor b = randn({l.channels}, rng);
    Tensor y = Tensor::empty(x.shape()), dx = Tensor::empty(x.shape()), dw = Tensor::empty(w.shape());
    Tensor db = Tensor::empty({l.channels});
    const float* xp = x.data<float>();
    const float* wp = w.data<float>();
    struct Pass {
      const char* name;
      const char* torch_key;
      double ms;
    } passes[] = {
        {"fprop", "fprop_ms",
         median_ms([&] { kernels::cpu::conv_fprop(p, xp, wp, b.data<float>(), y.data<float>()); }, warmup, reps)},
        {"dgrad", "dgrad_ms",
         median_ms([&] { kernels::cpu::conv_dgrad(p, y.data<float>(), wp, dx.data<float>()); }, warmup, reps)},
        {"wgrad", "wgrad_ms",
         median_ms([&] { kernels::cpu::conv_wgrad(p, xp, y.data<float>(), dw.data<float>(), db.data<float>()); },
                   warmup, reps)},
    };
    char shape[32];
    std::snprintf(shape, sizeof shape, "%ldch %ld^3", static_cast<long>(l.channels), static_cast<long>(l.size));
    for (const Pass& ps : passes) {
      double gflops = p.flops() / (ps.ms * 1e6);
      if (!torch.is_null()) {
        double tms = torch["shapes"][li][ps.torch_key].get<double>();
        double tg = p.flops() / (tms * 1e6);
        std::printf("%-14s %-6s %9.2f %9.1f %11.2f %11.1f %7.2f\n", shape, ps.name, ps.ms, gflops, tms, tg, gflops / tg);
      } else {
        std::printf("%-14s %-6s %9.2f %9.1f %11s %11s %7s\n", shape, ps.name, ps.ms, gflops, "-", "-", "-");
      }
    }
  }
  if (!torch.is_null()) std::printf("ratio = our GFLOP/s / PyTorch GFLOP/s (PyTorch %s)\n", torch["torch"].get<std::string>().c_str());
  return 0;
}
