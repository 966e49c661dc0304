// Hopper asynchronous-copy wrappers (kernels/cuda/async_copy.cuh) under the device emulator: mbarrier phases, parity
// waits and tx-count accounting, bulk copies read after a correct wait under every schedule, and the mistakes the
// emulator must catch (a read before the wait, wrong byte counts, copies nobody waits for, extra arrivals).
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include "tests/emu_async_kernels.cuh"
#include "tests/emu_test_util.h"

namespace {

using unet::emu::KernelError;
using unet::emu::Schedule;
using unet::kernels::cuda::launch;

std::vector<float> ramp(int n) {
  std::vector<float> v(n);
  for (int i = 0; i < n; ++i) v[i] = static_cast<float>(i) * 0.25f - 100.0f;
  return v;
}

// Runs a 128-thread bulk-copy kernel on ramp(kFloats) and returns its output.
std::vector<float> run_copy(void (*kernel)(const float*, float*), size_t smem_bytes = 0) {
  const std::vector<float> in = ramp(emu_async_test::kFloats);
  std::vector<float> out(emu_async_test::kFloats, -1.0f);
  launch(kernel, dim3(1), dim3(128), smem_bytes, nullptr, in.data(), out.data());
  return out;
}

// The KernelError message of a launch (empty if it succeeds).
template <class F>
std::string kernel_error(F&& run) {
  try {
    run();
  } catch (const KernelError& e) {
    return e.what();
  }
  return "";
}

// Seeds beyond the harness's random:7, for the kernels whose point is the timing of the copies.
const char* const kMoreSchedules[] = {"random:1", "random:2", "random:3", "random:4", "random:5"};

struct ScheduleScope {
  explicit ScheduleScope(const char* s) : saved(unet::emu::schedule()) { unet::emu::set_schedule(Schedule::parse(s)); }
  ~ScheduleScope() { unet::emu::set_schedule(saved); }
  Schedule saved;
};

void check_copy_is_right(void (*kernel)(const float*, float*)) {
  const std::vector<float> want = ramp(emu_async_test::kFloats);
  CHECK(unet::test::under_every_schedule([&] { return run_copy(kernel); }) == want);
  for (const char* s : kMoreSchedules) {
    ScheduleScope scope(s);
    CAPTURE(s);
    CHECK(run_copy(kernel) == want);
  }
}

}  // namespace

TEST_CASE("bulk copies read after waiting for their mbarrier phase are right under every schedule") {
  check_copy_is_right(emu_async_test::bulk_copy_then_wait);
}

TEST_CASE("bulk copies issued before their bytes are expected still complete the phase once (tx-count below 0)") {
  check_copy_is_right(emu_async_test::bulk_copy_before_expect_tx);
}

TEST_CASE("a phase of two arrivals completes only with both arrivals and every expected byte (expect_tx + arrive)") {
  check_copy_is_right(emu_async_test::bulk_copy_two_producers);
}

TEST_CASE("mbarrier phases: parity waits, the state arrive returns, and test_wait before and after each phase") {
  const std::vector<uint32_t> log = unet::test::under_every_schedule([] {
    std::vector<uint32_t> out(64 * 8, 99);
    launch(emu_async_test::mbarrier_phases, dim3(1), dim3(64), 0, nullptr, out.data());
    return out;
  });
  for (int t = 0; t < 64; ++t) {
    CAPTURE(t);
    const uint32_t* l = &log[8 * t];
    CHECK(l[0] == 1);  // parity 1 "completed" before phase 0
    CHECK(l[1] == 0);  // phase 0 cannot complete before this thread arrives
    CHECK(l[2] == 0);
    CHECK(l[3] == 1);
    CHECK(l[4] == 2);
    CHECK(l[5] == 1);
    CHECK(l[6] == 0);
    CHECK(l[7] == 1);
  }
}

TEST_CASE("reading a bulk copy's destination before waiting on its mbarrier is caught by schedule fuzzing") {
  // Forward lands a copy at the first scheduling point after its issue (here the __syncthreads), so it looks right;
  // reverse lands it only when nothing else can run, after the __syncthreads has released the readers.
  const std::vector<float> want = ramp(emu_async_test::kFloats);
  {
    ScheduleScope scope("forward");
    CHECK(run_copy(emu_async_test::bulk_copy_read_before_wait, emu_async_test::kBytes) == want);
  }
  auto nans = [](const char* s) {
    ScheduleScope scope(s);
    int count = 0;
    for (float v : run_copy(emu_async_test::bulk_copy_read_before_wait, emu_async_test::kBytes)) count += std::isnan(v);
    return count;
  };
  CHECK(nans("reverse") == emu_async_test::kFloats);  // the 0xFF fill of shared memory: no copy had landed
  // random:7 makes some of the four copies early, some late (as the test of the harness's schedules, it fails too).
  const int some = nans("random:7");
  CHECK(some > 0);
  CHECK(some < emu_async_test::kFloats);
}

TEST_CASE("expecting more bytes than the copies bring is a deadlock naming the barrier's tx-count") {
  for (const char* s : unet::test::kSchedules) {
    ScheduleScope scope(s);
    CAPTURE(s);
    const std::string what = kernel_error([] { run_copy(emu_async_test::bulk_copy_expects_too_much); });
    CHECK(what.find("deadlock") != std::string::npos);
    CHECK(what.find("mbarrier.try_wait.parity") != std::string::npos);
    CHECK(what.find("0 of 1 arrivals pending, tx-count 4096") != std::string::npos);
  }
}

TEST_CASE("a block that exits with bulk copies in flight is a KernelError (reverse schedule)") {
  // Under forward (and mostly random) the copies land at the scheduling points after their issue, before the block
  // ends; reverse holds them until nothing else can run, so they are still in flight when the last thread exits.
  const std::vector<float> in = ramp(emu_async_test::kFloats);
  ScheduleScope scope("reverse");
  const std::string what =
      kernel_error([&] { launch(emu_async_test::bulk_copy_never_waited, dim3(1), dim3(128), 0, nullptr, in.data()); });
  CHECK(what.find("asynchronous copies still in flight") != std::string::npos);
}

TEST_CASE("more arrivals than a phase's count is a KernelError") {
  const std::string what =
      kernel_error([] { launch(emu_async_test::mbarrier_over_arrival, dim3(1), dim3(32), 0, nullptr); });
  CHECK(what.find("more arrivals than its count") != std::string::npos);
}

TEST_CASE("a two-stage producer/consumer ring over full and empty mbarriers sums every tile under every schedule") {
  constexpr int tiles = 9;
  const std::vector<float> in = ramp(256 * tiles);
  std::vector<float> want(32, 0.0f);
  for (int k = 0; k < tiles; ++k)
    for (int lane = 0; lane < 32; ++lane)
      for (int j = 0; j < 8; ++j) want[lane] += in[256 * k + lane + 32 * j];
  const std::vector<float> got = unet::test::under_every_schedule([&] {
    std::vector<float> sum(32, NAN);
    launch(emu_async_test::ring_pipeline, dim3(1), dim3(64), 0, nullptr, in.data(), tiles, sum.data(), false);
    return sum;
  });
  CHECK(got == want);
}

TEST_CASE("a producer that refills a stage without waiting for its release is caught (an extra arrival)") {
  const std::vector<float> in = ramp(256 * 4);
  std::vector<float> sum(32);
  for (const char* s : unet::test::kSchedules) {
    ScheduleScope scope(s);
    CAPTURE(s);
    const std::string what = kernel_error(
        [&] { launch(emu_async_test::ring_pipeline, dim3(1), dim3(64), 0, nullptr, in.data(), 4, sum.data(), true); });
    CHECK(what.find("more arrivals than its count") != std::string::npos);
  }
}
