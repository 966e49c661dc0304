// Convolution micro-benchmark: fprop, dgrad and wgrad of our CPU kernels at the nnU-Net 3D level shapes
// (batch 1, 3x3x3, stride 1, pad 1, C = K), reported as median ms and GFLOP/s, next to PyTorch's (oneDNN) figures for
// the same shapes and passes measured in the same run by bench/torch_conv.py (when /usr/bin/python3 has torch), shape
// by shape just before ours, so that both see about the same load on a shared machine.
// --extra adds other layers of an nnU-Net (thin first layer, strided downsampling, 1x1 head, 2D) to the table.
// Usage: conv_bench [--quick] [--threads N] [--no-torch] [--extra] [--cpu-time] [--min] [--shape I]
//                   [--pass fprop|dgrad|wgrad]
// (--shape and --pass restrict the run to one row of the table or one pass, for profiling; they skip PyTorch.)
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/random.h"
#include "kernels/cpu/conv.h"

using namespace unet;

namespace {

// Cube (2D: square) convolution with nnU-Net padding (kernel - stride + 1) / 2.
struct BenchShape {
  int64_t n, c, k, size;
  int kernel, stride, dims;
  std::string spec() const {  // the torch_conv.py argument
    std::string s;
    for (int64_t v : {n, c, k, size, int64_t(kernel), int64_t(stride), int64_t(dims)}) {
      if (!s.empty()) s += ',';
      s += std::to_string(v);
    }
    return s;
  }
  std::string label() const {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%s%ld->%ld %ld^%d k%d s%d", n > 1 ? (std::to_string(n) + "x ").c_str() : "",
                  static_cast<long>(c), static_cast<long>(k), static_cast<long>(size), dims, kernel, stride);
    return buf;
  }
  kernels::ConvProblem problem() const {
    kernels::ConvProblem p;
    p.N = n, p.C = c, p.K = k;
    p.H = p.W = size;
    p.R = p.S = kernel;
    p.stride_h = p.stride_w = stride;
    p.pad_h = p.pad_w = (kernel - stride + 1) / 2;
    if (dims == 3) {
      p.D = size, p.T = kernel, p.stride_d = stride, p.pad_d = p.pad_h;
    }
    p.compute_output_size();
    return p;
  }
};

const std::vector<BenchShape> kLevels = {
    {1, 32, 32, 64, 3, 1, 3},  {1, 64, 64, 32, 3, 1, 3},  {1, 128, 128, 16, 3, 1, 3},
    {1, 256, 256, 8, 3, 1, 3}, {1, 320, 320, 8, 3, 1, 3},
};
const std::vector<BenchShape> kExtra = {
    {1, 4, 32, 64, 3, 1, 3},     // first layer, 4 input modalities
    {1, 32, 64, 64, 3, 2, 3},    // downsampling conv
    {1, 64, 128, 32, 3, 2, 3},   // downsampling conv
    {1, 32, 3, 64, 1, 1, 3},     // output head
    {16, 32, 32, 128, 3, 1, 2},  // 2D level 0 (batch 16)
    {16, 64, 64, 64, 3, 1, 2},   // 2D level 1
};

// With --cpu-time, process CPU time divided by the thread count replaces wall time: on a machine shared with
// builds, it leaves out the time our threads wait for a core (use it with --threads 1 to compare kernel versions).
bool g_cpu_time = false;
bool g_take_min = false;  // --min: fastest rep instead of the median (less sensitive to other load when tuning)
int g_threads = 2;

double now_ms() {
  if (g_cpu_time) {
    timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6) / g_threads;
  }
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

template <class F>
double median_ms(F&& fn, int warmup, int reps) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    double t0 = now_ms();
    fn();
    ms.push_back(now_ms() - t0);
  }
  std::sort(ms.begin(), ms.end());
  return g_take_min ? ms.front() : ms[ms.size() / 2];
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
nlohmann::json torch_figures(const std::string& script, const std::vector<BenchShape>& shapes, int threads, int warmup,
                             int reps) {
  if (script.empty()) return nullptr;
  std::string cmd = "/usr/bin/python3 " + script + " --threads " + std::to_string(threads) + " --warmup " +
                    std::to_string(warmup) + " --reps " + std::to_string(reps);
  for (const BenchShape& s : shapes) {
    cmd += ' ';
    cmd += s.spec();
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
    nlohmann::json j = nlohmann::json::parse(out);
    if (j["shapes"].size() != shapes.size()) return nullptr;
    return j;
  } catch (const std::exception&) {
    return nullptr;
  }
}

// The 1-minute load average (other work on a shared machine skews timings), or -1 where unavailable.
double load_average() {
  double load = -1;
  if (FILE* f = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(f, "%lf", &load) != 1) load = -1;
    std::fclose(f);
  }
  return load;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, with_torch = true, extra = false;
  int threads = 2, only_shape = -1;
  std::string only_pass;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) {
      quick = true;
    } else if (!std::strcmp(argv[i], "--no-torch")) {
      with_torch = false;
    } else if (!std::strcmp(argv[i], "--min")) {
      g_take_min = true;
    } else if (!std::strcmp(argv[i], "--cpu-time")) {
      g_cpu_time = true;
    } else if (!std::strcmp(argv[i], "--extra")) {
      extra = true;
    } else if (!std::strcmp(argv[i], "--shape") && i + 1 < argc) {
      only_shape = std::atoi(argv[++i]);
      with_torch = false;
    } else if (!std::strcmp(argv[i], "--pass") && i + 1 < argc) {
      only_pass = argv[++i];
      with_torch = false;
    } else if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) {
      threads = std::max(1, std::atoi(argv[++i]));
    } else {
      std::fprintf(stderr,
                   "usage: %s [--quick] [--threads N] [--no-torch] [--extra] [--cpu-time] [--min] [--shape I]\n"
                   "       [--pass fprop|dgrad|wgrad]\n",
                   argv[0]);
      return 2;
    }
  }
  omp_set_num_threads(threads);
  g_threads = threads;
  const int warmup = quick ? 1 : 2, reps = quick ? 3 : 7;
  std::vector<BenchShape> shapes = kLevels;
  if (extra) shapes.insert(shapes.end(), kExtra.begin(), kExtra.end());

  const std::string script = with_torch ? torch_script(argv[0]) : "";
  std::string torch_version;

  std::printf("fp32, %d threads, median of %d reps; padding (kernel - stride + 1) / 2; load average %.2f\n", threads,
              reps, load_average());
  std::printf("%-4s %-24s %-6s %9s %9s %11s %11s %7s\n", "#", "shape", "pass", "ours ms", "GFLOP/s", "torch ms",
              "GFLOP/s", "ratio");
  Rng rng(1);
  for (size_t si = 0; si < shapes.size(); ++si) {
    if (only_shape >= 0 && static_cast<size_t>(only_shape) != si) continue;
    const BenchShape& s = shapes[si];
    nlohmann::json torch = nullptr;
    if (with_torch) {
      torch = torch_figures(script, {s}, threads, warmup, reps);
      if (torch.is_null()) {
        std::printf("(PyTorch figures unavailable: bench/torch_conv.py or torch failed)\n");
        with_torch = false;
      } else {
        torch_version = torch["torch"].get<std::string>();
      }
    }
    const kernels::ConvProblem p = s.problem();
    unet::Shape xs = {p.N, p.D, p.H, p.W, p.C}, ws = {p.K, p.T, p.R, p.S, p.C}, ys = {p.N, p.Z, p.P, p.Q, p.K};
    Tensor x = randn(xs, rng), w = randn(ws, rng, 0.05f), b = randn({p.K}, rng);
    Tensor y = Tensor::empty(ys), dy = randn(ys, rng), dx = Tensor::empty(xs), dw = Tensor::empty(ws);
    Tensor db = Tensor::empty({p.K});
    const float* xp = x.data<float>();
    const float* wp = w.data<float>();
    struct Pass {
      const char* name;
      const char* torch_key;
      std::function<void()> run;
    } passes[] = {
        {"fprop", "fprop_ms", [&] { kernels::cpu::conv_fprop(p, xp, wp, b.data<float>(), y.data<float>()); }},
        {"dgrad", "dgrad_ms", [&] { kernels::cpu::conv_dgrad(p, dy.data<float>(), wp, dx.data<float>()); }},
        {"wgrad", "wgrad_ms",
         [&] { kernels::cpu::conv_wgrad(p, xp, dy.data<float>(), dw.data<float>(), db.data<float>()); }},
    };
    for (const Pass& ps : passes) {
      if (!only_pass.empty() && only_pass != ps.name) continue;
      const double ms = median_ms(ps.run, warmup, reps);
      const double gflops = p.flops() / (ms * 1e6);
      if (!torch.is_null()) {
        double tms = torch["shapes"][0][ps.torch_key].get<double>();
        double tg = p.flops() / (tms * 1e6);
        std::printf("%-4zu %-24s %-6s %9.2f %9.1f %11.2f %11.1f %7.2f\n", si, s.label().c_str(), ps.name, ms, gflops,
                    tms, tg, gflops / tg);
      } else {
        std::printf("%-4zu %-24s %-6s %9.2f %9.1f %11s %11s %7s\n", si, s.label().c_str(), ps.name, ms, gflops, "-",
                    "-", "-");
      }
      std::fflush(stdout);
    }
  }
  std::printf("load average at the end %.2f\n", load_average());
  if (!torch_version.empty())
    std::printf("ratio = our GFLOP/s / PyTorch GFLOP/s (PyTorch %s, same run)\n", torch_version.c_str());
  return 0;
}
