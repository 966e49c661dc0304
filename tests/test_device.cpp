// engine/device without a GPU, in every build variant: device selection (auto's fallback line, cuda's refusal,
// cuda-emu present exactly in the emulated build), the CUDA error messages, Device::cuda refused clearly where the
// build has no CUDA runtime, and the EventTimer on the host clock. The GPU build compiles and runs these too (CI runs
// them from build-gpu/), which exercises its linked-runtime path on a machine without a driver.
#include <algorithm>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "engine/device.h"
#include "engine/fenced_pool.h"
#include "engine/tensor.h"
#include "tests/test_util.h"

using namespace unet;

namespace {
// True when this process can run on a GPU (then the fallback cases have nothing to check).
bool gpu_usable() {
  std::string why;
  return device::runtime_built() && device::cuda_device_count(&why) > 0;
}
}  // namespace

TEST_CASE("device auto without a usable CUDA device runs on the cpu and says why in one line") {
  if (gpu_usable()) return;
  std::string why;
  device::cuda_device_count(&why);
  std::ostringstream log;
  CHECK(device::resolve_device("auto", &log) == Device::cpu);
  const std::string line = log.str();
  CHECK(line.rfind("unet: no usable CUDA device (", 0) == 0);
  CHECK(line.find("running on the CPU") != std::string::npos);
  CHECK(std::count(line.begin(), line.end(), '\n') == 1);
  if (device::cuda_device_count() == 0) CHECK(line.find(why) != std::string::npos);
  MESSAGE("auto said: " << line);
}

TEST_CASE("device cuda without a usable CUDA device is a DeviceError that says why, and logs nothing") {
  if (gpu_usable()) return;
  std::ostringstream log;
  CHECK_THROWS_WITH_AS(device::resolve_device("cuda", &log), doctest::Contains("no usable CUDA device: "),
                       device::DeviceError);
  CHECK(log.str().empty());
}

TEST_CASE("device cpu is the cpu and an unknown name is rejected, naming it and the valid ones") {
  CHECK(device::resolve_device("cpu", nullptr) == Device::cpu);
  CHECK_THROWS_WITH_AS(device::resolve_device("gpu", nullptr),
                       doctest::Contains("unknown device 'gpu' (expected auto, cpu, cuda or cuda-emu)"),
                       std::invalid_argument);
  CHECK_THROWS_AS(device::resolve_device("", nullptr), std::invalid_argument);
}

TEST_CASE("device cuda-emu exists exactly in the emulated build; the GPU build says it has none") {
  CHECK_FALSE((device::emulator_built() && device::runtime_built()));
  if (device::emulator_built()) {
    CHECK(device::resolve_device("cuda-emu", nullptr) == Device::cuda_emu);
    return;
  }
  const char* reason = device::runtime_built() ? "this is the GPU build" : "this build has no device emulator";
  CHECK_THROWS_WITH_AS(device::resolve_device("cuda-emu", nullptr), doctest::Contains(reason), device::DeviceError);
  CHECK_THROWS_WITH_AS(Tensor::empty({4}, DType::f32, Device::cuda_emu), doctest::Contains("cuda-emu is not available"),
                       device::DeviceError);
}

TEST_CASE("a CUDA error message names the code, the runtime's name and text, the expression, the file and the line") {
  std::string why;
  device::cuda_device_count(&why);
  const bool have_runtime = why.find("no CUDA runtime library") == std::string::npos;
  const std::string m = device::cuda_error_message(2, "cudaMallocAsync(&p, n, s)", "engine/x.cpp", 12);
  if (have_runtime)  // error 2 is cudaErrorMemoryAllocation in every CUDA release
    CHECK(m == "CUDA error 2 cudaErrorMemoryAllocation (out of memory) in cudaMallocAsync(&p, n, s) (engine/x.cpp:12)");
  else
    CHECK(m == "CUDA error 2 in cudaMallocAsync(&p, n, s) (engine/x.cpp:12)");
  MESSAGE(m);
}

TEST_CASE("UNET_CUDA_CHECK throws DeviceError with the failed expression at its own file and line") {
  const int line = __LINE__ + 2;
  try {
    UNET_CUDA_CHECK(35);
    FAIL("no throw");
  } catch (const device::DeviceError& e) {
    const std::string m = e.what();
    CHECK(m.rfind("CUDA error 35", 0) == 0);
    CHECK(m.find(" in 35 (") != std::string::npos);
    CHECK(m.find("test_device.cpp:" + std::to_string(line) + ")") != std::string::npos);
  }
  CHECK_NOTHROW(UNET_CUDA_CHECK(0));
  CHECK_THROWS_WITH_AS(UNET_DEVICE_CHECK(1 + 1 == 3, "arithmetic"), doctest::Contains("arithmetic ("),
                       device::DeviceError);
}

TEST_CASE("without the CUDA runtime in the build, Device::cuda memory, copies and timers are clear errors") {
  if (device::runtime_built()) return;
  const char* reason = "this build does not link the CUDA runtime";
  CHECK_THROWS_WITH_AS(Tensor::empty({4}, DType::f32, Device::cuda), doctest::Contains(reason), device::DeviceError);
  CHECK_THROWS_WITH_AS(Tensor::zeros({4}).to(Device::cuda), doctest::Contains(reason), device::DeviceError);
  CHECK_THROWS_WITH_AS(device::default_stream(Device::cuda), doctest::Contains(reason), device::DeviceError);
  CHECK_THROWS_WITH_AS(device::EventTimer(Device::cuda), doctest::Contains(reason), device::DeviceError);
  CHECK(device::memory_stats(Device::cuda).current_bytes == 0);
}

TEST_CASE("EventTimer on the cpu measures host time between start and stop, and can be restarted") {
  device::EventTimer t(Device::cpu);
  t.start();
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  t.stop();
  const double ms = t.elapsed_ms();
  CHECK(ms >= 19.0);
  CHECK(ms < 5000.0);
  CHECK(t.elapsed_ms() == ms);  // stopped: reading again changes nothing
  t.start();
  t.stop();
  CHECK(t.elapsed_ms() < ms);
}

TEST_CASE("EventTimer used out of order is a DeviceError naming the missing call") {
  device::EventTimer t(Device::cpu);
  CHECK_THROWS_WITH_AS(t.elapsed_ms(), doctest::Contains("start() was not called"), device::DeviceError);
  CHECK_THROWS_WITH_AS(t.stop(), doctest::Contains("stop() without a start()"), device::DeviceError);
  t.start();
  CHECK_THROWS_WITH_AS(t.elapsed_ms(), doctest::Contains("stop() was not called"), device::DeviceError);
}

TEST_CASE("FencedPool hands a freed block out again only once the device has passed its fence") {
  // Fences completed by hand: each is the number of the step whose end it marks; the device has finished `passed`.
  int64_t step = 0, passed = -1;
  std::vector<std::unique_ptr<int64_t>> fences;
  std::vector<std::unique_ptr<char[]>> blocks;
  int records = 0;
  FencedPool pool(FencedPool::Ops{[&](size_t bytes) {
                                    blocks.push_back(std::make_unique<char[]>(bytes));
                                    return static_cast<void*>(blocks.back().get());
                                  },
                                  [&]() -> void* {
                                    fences.push_back(std::make_unique<int64_t>(-1));
                                    return fences.back().get();
                                  },
                                  [&](void* f) {
                                    *static_cast<int64_t*>(f) = step;
                                    ++records;
                                    return true;
                                  },
                                  [&](void* f) { return *static_cast<int64_t*>(f) <= passed; }});
  void* a = pool.allocate(256);
  pool.deallocate(a, 256);  // a copy from `a` is queued in step 0, not yet done
  CHECK(records == 1);
  void* b = pool.allocate(256);
  CHECK(b != a);                   // not reused while the device may still read it
  CHECK(pool.allocate(128) != a);  // nor handed out for another size
  passed = 0;
  CHECK(pool.allocate(256) == a);  // the device is past step 0
  step = 1;
  pool.deallocate(b, 256);
  pool.deallocate(a, 256);  // the same fence object again, now marking step 1
  CHECK(fences.size() == 2);
  CHECK(blocks.size() == 3);
  void* c = pool.allocate(256);
  CHECK(blocks.size() == 4);  // both blocks wait for step 1
  passed = 1;
  void* d = pool.allocate(256);
  void* e = pool.allocate(256);
  CHECK(((d == a && e == b) || (d == b && e == a)));
  CHECK(blocks.size() == 4);
  const MemoryStats st = pool.stats();
  CHECK(st.current_bytes == 3 * 256 + 128);
  CHECK(st.peak_bytes == 3 * 256 + 128);
  CHECK(st.cached_bytes == 0);
  pool.deallocate(c, 256);
  CHECK(pool.stats().cached_bytes == 256);
}

TEST_CASE("FencedPool drops a block whose fence cannot be recorded") {
  std::vector<std::unique_ptr<char[]>> blocks;
  int fence = 0;
  FencedPool pool(FencedPool::Ops{[&](size_t bytes) {
                                    blocks.push_back(std::make_unique<char[]>(bytes));
                                    return static_cast<void*>(blocks.back().get());
                                  },
                                  [&]() -> void* { return &fence; }, [](void*) { return false; },
                                  [](void*) { return true; }});
  void* a = pool.allocate(64);
  pool.deallocate(a, 64);
  CHECK(pool.allocate(64) != a);
  CHECK(pool.stats().cached_bytes == 0);
}

TEST_CASE("Tensor::empty_pinned is cpu memory that copies to and from the device") {
  Tensor t = Tensor::empty_pinned({3, 5}, DType::i32);
  CHECK(t.device() == Device::cpu);
  CHECK(t.impl().storage->pinned);
  for (int i = 0; i < 15; ++i) t.data<int32_t>()[i] = 7 * i - 3;
  const std::vector<float> want = t.to_vector();
  CHECK(want[14] == 95.f);
  if (device::emulator_built()) CHECK(t.to(Device::cuda_emu).to(Device::cpu).to_vector() == want);
  CHECK(t.clone().to_vector() == want);
  CHECK_FALSE(t.clone().impl().storage->pinned);
}
