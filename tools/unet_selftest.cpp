// unet_selftest: the GPU self-test (docs/architecture.md, "Verifying the CUDA backend"). Runs
// every engine op that has a CUDA kernel on the device and on the CPU backend from the same inputs, prints a
// pass/fail table (op, shape, max abs and rel error, tolerance). The cases and tolerances are engine/selftest.cpp.
// Speed is gpu_conv_bench's job (tools/gpu_check.sh runs both).
// usage: unet_selftest [--device cuda|cuda-emu] [--quick] [--perturb OP]
// Exit status 0 all checks pass, 1 a check failed or the device is unusable, 2 usage error.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>

#include "engine/device.h"
#include "engine/selftest.h"
#include "tools/tool_main.h"

using namespace unet;

int main(int argc, char** argv) {
  std::string device_name = "cuda", perturb;
  bool quick = false;
  CLI::App app{"Self-test of the CUDA kernels on a device against the CPU backend."};
  app.add_option("--device", device_name, "cuda (a real GPU, default) or cuda-emu (the device emulator)")
      ->check(CLI::IsMember({"cuda", "cuda-emu"}));
  app.add_flag("--quick", quick, "fewer and smaller cases");
  app.add_option("--perturb", perturb,
                 "testing the self-test: change one device value of every check whose op contains this text");
  if (auto status = tools::parse_command_line(app, argc, argv, "unet_selftest")) return *status;
  return tools::run_tool("unet_selftest", [&] {
    Device d = Device::cpu;
    try {
      d = device::resolve_device(device_name, nullptr);
    } catch (const std::exception& e) {
      throw std::runtime_error("--device " + device_name + ": " + e.what());  // exit 1: no such device here
    }
    std::printf("unet_selftest: CUDA kernels on %s against the CPU backend%s\n\n", device_name.c_str(),
                quick ? " (quick)" : "");
    const auto t0 = std::chrono::steady_clock::now();
    selftest::SelftestOptions o;
    o.device = d;
    o.quick = quick;
    o.perturb = perturb;
    const std::vector<selftest::SelftestRow> rows = selftest::run_selftest(o);
    // The checks' names are known once they have run: a --perturb that matches none is refused before the table,
    // which would otherwise say PASS for a self-test that perturbed nothing.
    if (!perturb.empty() && std::none_of(rows.begin(), rows.end(), [&](const selftest::SelftestRow& r) {
          return r.op.find(perturb) != std::string::npos;
        }))
      throw tools::UsageError("--perturb '" + perturb + "' matches no check (the checks' names are the op column of " +
                              "the table, e.g. 'conv.cu' or 'instance_norm')");
    const int failed = selftest::print_selftest_table(stdout, rows);
    std::printf("(%.1f s)\n", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    std::fflush(stdout);
    return failed ? 1 : 0;
  });
}
