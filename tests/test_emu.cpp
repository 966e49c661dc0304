// The device emulator (kernels/emu): small kernels with known answers for every feature, planted bugs that must be
// reported (divergent barrier, deadlock, misuse of warp collectives), and schedule fuzzing: race-free kernels give
// identical bits under every schedule, a planted race does not.
#include <doctest/doctest.h>

#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "tests/test_util.h"  // before the kernels: cuda_emu.h's __noinline__ macro breaks later standard headers
//
#include "tests/emu_kernels.cuh"

namespace {

using unet::emu::KernelError;
using unet::emu::Schedule;
using unet::kernels::cuda::launch;

// Sets the emulator's schedule (and optionally its worker count) for one scope.
struct EmuOptions {
  explicit EmuOptions(Schedule s, int workers = 0)
      : saved_schedule(unet::emu::schedule()), saved_workers(unet::emu::workers()) {
    unet::emu::set_schedule(s);
    if (workers > 0) unet::emu::set_workers(workers);
  }
  ~EmuOptions() {
    unet::emu::set_schedule(saved_schedule);
    unet::emu::set_workers(saved_workers);
  }
  Schedule saved_schedule;
  int saved_workers;
};

const Schedule kSchedules[] = {Schedule::parse("forward"), Schedule::parse("reverse"), Schedule::parse("random:12345")};

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// The message of the KernelError that running f throws ("" if it throws none).
template <class F>
std::string kernel_error(F f) {
  try {
    f();
  } catch (const KernelError& e) {
    return e.what();
  }
  return "";
}

std::string at(int line) {
  return "emu_kernels.cuh:" + std::to_string(line);
}

std::vector<float> random_floats(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

// Each thread's shuffled value for kernel emu_test::shuffle in a block of `threads`.
std::vector<int> run_shuffle(int kind, int arg, int width, int threads = 64) {
  std::vector<int> out(threads, -1);
  launch(emu_test::shuffle, dim3(1), dim3(threads), 0, nullptr, out.data(), kind, arg, width);
  return out;
}
int value_of(int t) {
  return 100 * (t / 32) + t % 32;
}  // what thread t contributes to emu_test::shuffle

}  // namespace

TEST_CASE("a 2D grid of 2D blocks gives every pixel its x and y") {
  const int w = 37, h = 21;
  std::vector<int> out(w * h, -1);
  launch(emu_test::write_2d_coords, dim3((w + 7) / 8, (h + 3) / 4), dim3(8, 4), 0, nullptr, out.data(), w, h);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) REQUIRE(out[y * w + x] == 1000 * y + x);
}

TEST_CASE("a 3D grid of 3D blocks gives every thread its blockIdx and threadIdx") {
  const dim3 grid(2, 3, 4), block(4, 2, 3);
  std::vector<int> out(6 * 24 * 24, -1);
  launch(emu_test::write_3d_coords, grid, block, 0, nullptr, out.data());
  int slot = 0;
  for (unsigned bz = 0; bz < 4; ++bz)
    for (unsigned by = 0; by < 3; ++by)
      for (unsigned bx = 0; bx < 2; ++bx)
        for (unsigned tz = 0; tz < 3; ++tz)
          for (unsigned ty = 0; ty < 2; ++ty)
            for (unsigned tx = 0; tx < 4; ++tx, ++slot) {
              const int* s = &out[6 * slot];
              REQUIRE(std::vector<int>(s, s + 6) ==
                      std::vector<int>{int(bx), int(by), int(bz), int(tx), int(ty), int(tz)});
            }
}

TEST_CASE("static shared memory is private to each block") {
  const int blocks = 64, n = blocks * 128;
  std::vector<float> in(n), out(n);
  std::iota(in.begin(), in.end(), 0.0f);
  launch(emu_test::reverse_blocks_static, dim3(blocks), dim3(128), 0, nullptr, in.data(), out.data());
  for (int i = 0; i < n; ++i) REQUIRE(out[i] == in[i / 128 * 128 + 127 - i % 128]);
}

TEST_CASE("dynamic shared memory declared by DYN_SMEM holds the launch's bytes") {
  const int blocks = 10, threads = 96, n = blocks * threads;
  std::vector<float> in(n), out(n);
  std::iota(in.begin(), in.end(), 0.0f);
  launch(emu_test::reverse_blocks_dynamic, dim3(blocks), dim3(threads), threads * sizeof(float), nullptr, in.data(),
         out.data());
  for (int i = 0; i < n; ++i) REQUIRE(out[i] == in[i / threads * threads + threads - 1 - i % threads]);
}

TEST_CASE("dynamic shared memory starts as NaN bytes in every block") {
  EmuOptions one_worker(Schedule{}, 1);  // one worker reuses its buffer for every block: each must be refilled
  std::vector<unsigned> out(4 * 32, 0);
  launch(emu_test::read_fresh_dynamic_smem, dim3(4), dim3(32), 32 * sizeof(unsigned), nullptr, out.data());
  for (unsigned v : out) REQUIRE(v == 0xffffffffu);
}

TEST_CASE("a block-wide tree reduction with __syncthreads sums every element") {
  const int n = 100000, blocks = 7, threads = 256;
  std::vector<float> in(n), out(blocks);
  for (int i = 0; i < n; ++i) in[i] = float(i % 17);  // small integers: every partial sum is exact
  launch(emu_test::block_sum, dim3(blocks), dim3(threads), 0, nullptr, in.data(), out.data(), n);
  double total = 0;
  for (float v : out) total += v;
  CHECK(total == std::accumulate(in.begin(), in.end(), 0.0));
}

TEST_CASE("__syncthreads_count, _and and _or combine the predicates of all threads") {
  std::vector<int> out(4, -1);
  launch(emu_test::barrier_votes, dim3(1), dim3(100), 0, nullptr, out.data());
  CHECK(out == std::vector<int>{34, 0, 1, 1});  // 0, 3, ..., 99: 34 threads
}

TEST_CASE("__shfl_sync reads lane srcLane modulo width within each segment of width lanes") {
  std::vector<int> out = run_shuffle(emu_test::kIdx, 11, 8);
  for (int t = 0; t < 64; ++t) REQUIRE(out[t] == value_of(t / 8 * 8 + 3));
  out = run_shuffle(emu_test::kIdx, 5, 32);
  for (int t = 0; t < 64; ++t) REQUIRE(out[t] == value_of(t / 32 * 32 + 5));
}

TEST_CASE("__shfl_up_sync reads delta lanes lower and keeps its own value in a segment's first delta lanes") {
  const std::vector<int> out = run_shuffle(emu_test::kUp, 3, 16);
  for (int t = 0; t < 64; ++t) REQUIRE(out[t] == value_of(t % 16 >= 3 ? t - 3 : t));
}

TEST_CASE("__shfl_down_sync reads delta lanes higher and keeps its own value in a segment's last delta lanes") {
  const std::vector<int> out = run_shuffle(emu_test::kDown, 2, 8);
  for (int t = 0; t < 64; ++t) REQUIRE(out[t] == value_of(t % 8 < 6 ? t + 2 : t));
}

TEST_CASE("__shfl_xor_sync reads lane ^ laneMask, earlier segments included, never a later segment") {
  std::vector<int> out = run_shuffle(emu_test::kXor, 5, 32);
  for (int t = 0; t < 64; ++t) REQUIRE(out[t] == value_of(t ^ 5));
  out = run_shuffle(emu_test::kXor, 9, 8);  // lane ^ 9 crosses into the next segment of 8 for lanes 0..7 of a 16
  for (int t = 0; t < 64; ++t) {
    const int lane = t % 32, src = lane ^ 9;
    REQUIRE(out[t] == value_of(src >= lane / 8 * 8 + 8 ? t : t / 32 * 32 + src));
  }
}

TEST_CASE("a warp scan by __shfl_up_sync moves doubles and gives each warp's prefix sums") {
  const int n = 2 * 64;
  std::vector<double> in(n), out(n);
  for (int i = 0; i < n; ++i) in[i] = 0.5 * i;
  launch(emu_test::warp_inclusive_scan, dim3(2), dim3(64), 0, nullptr, in.data(), out.data());
  for (int i = 0; i < n; ++i) {
    double expect = 0;
    for (int j = i / 32 * 32; j <= i; ++j) expect += in[j];
    REQUIRE(out[i] == expect);
  }
}

TEST_CASE("__ballot_sync, __any_sync and __all_sync vote within each warp") {
  std::vector<unsigned> out(10, 99);
  launch(emu_test::votes, dim3(1), dim3(64), 0, nullptr, out.data());
  for (int w = 0; w < 2; ++w)
    CHECK(std::vector<unsigned>(out.begin() + 5 * w, out.begin() + 5 * w + 5) ==
          std::vector<unsigned>{0x49249249u, 1, 0, 1, 0});
}

TEST_CASE("__reduce_add/min/max_sync reduce ints and unsigneds within each warp") {
  std::vector<int> out(12, 0);
  launch(emu_test::warp_reduces, dim3(1), dim3(64), 0, nullptr, out.data());
  // lane - 10 over 0..31: sum 496 - 320 = 176, min -10, max 21; lane + 5: sum 656, min 5, max 36
  for (int w = 0; w < 2; ++w)
    CHECK(std::vector<int>(out.begin() + 6 * w, out.begin() + 6 * w + 6) == std::vector<int>{176, -10, 21, 656, 5, 36});
}

TEST_CASE("__syncwarp with disjoint masks lets each half of a warp synchronise on its own") {
  for (const Schedule& s : kSchedules) {
    EmuOptions options(s);
    std::vector<int> out(32, -1);
    launch(emu_test::half_warp_syncs, dim3(1), dim3(32), 0, nullptr, out.data());
    for (int t = 0; t < 32; ++t) REQUIRE(out[t] == 10 * (t < 16 ? 15 - t : 47 - t));
  }
}

TEST_CASE("lanes past the end of a partial warp are left out of full-mask collectives and __activemask") {
  std::vector<unsigned> out(6, 0);
  launch(emu_test::partial_warp, dim3(1), dim3(40), 0, nullptr, out.data());
  CHECK(out[0] == 0xffffffffu);
  CHECK(out[1] == 31 * 32 / 2);
  CHECK(out[2] == 0xffu);
  CHECK(out[3] == 32 * 8 + 7 * 8 / 2);
  CHECK(out[4] == 0xfffffffeu);  // lane 0 has returned
  CHECK(out[5] == 0xfeu);
}

TEST_CASE("a warp-only reduction under threadIdx.x < 32 needs only warp 0 to rendezvous") {
  const int blocks = 8, threads = 256;
  std::vector<float> in(blocks * threads), out(blocks, -1.0f);
  for (size_t i = 0; i < in.size(); ++i) in[i] = float(i % 5);
  launch(emu_test::warp0_sum, dim3(blocks), dim3(threads), 0, nullptr, in.data(), out.data());
  for (int b = 0; b < blocks; ++b)
    CHECK(out[b] == std::accumulate(in.begin() + b * threads, in.begin() + (b + 1) * threads, 0.0f));
}

TEST_CASE("atomicAdd sums 1..N across blocks for int, unsigned long long, float and double") {
  const int n = 65535;  // 1 + ... + n = 2147450880 still fits an int
  int isum = 0;
  unsigned long long usum = 0;
  float fcount = 0;
  double dsum = 0;
  launch(emu_test::atomic_sums, dim3((n + 255) / 256), dim3(256), 0, nullptr, n, &isum, &usum, &fcount, &dsum);
  const long long expect = 1LL * n * (n + 1) / 2;
  CHECK(isum == expect);
  CHECK(usum == static_cast<unsigned long long>(expect));
  CHECK(fcount == float(n));  // adding 1.0f is exact below 2^24 in any order
  CHECK(dsum == double(expect));
}

TEST_CASE("atomicMax, atomicMin, atomicCAS and atomicExch resolve concurrent updates") {
  const int n = 10007;  // prime: i * 7919 % n takes every value once
  std::vector<int> out{INT_MIN, INT_MAX, 0, -1, 0};
  launch(emu_test::atomic_extremes, dim3((n + 127) / 128), dim3(128), 0, nullptr, n, out.data());
  CHECK(out[0] == n - 1 - n / 2);
  CHECK(out[1] == -n / 2);
  CHECK(out[2] == 1);  // exactly one thread saw -1
  CHECK(out[3] >= 0);
  CHECK(out[3] < n);
  CHECK(out[4] >= 1);
  CHECK(out[4] <= n);
}

TEST_CASE("half and bfloat16 from the CUDA headers round and multiply on the host") {
  const std::vector<float> in{1.5f, 1.00390625f, 40000.0f, 0.1f};
  std::vector<float> out(12);
  launch(emu_test::half_and_bf16, dim3(1), dim3(4), 0, nullptr, in.data(), out.data());
  CHECK(out[0] == 3.0f);
  CHECK(out[1] == 1.5f);
  CHECK(out[4] == 1.0f);               // bf16 keeps 8 significant bits: 1 + 2^-8 rounds to even
  CHECK(std::isinf(out[6]));           // 80000 overflows half
  CHECK(out[11] == 0.0999755859375f);  // 0.1 rounded to half
}

TEST_CASE("threads that have returned do not hold up a __syncthreads") {
  std::vector<int> out(64, -1);
  launch(emu_test::early_exit_then_barrier, dim3(1), dim3(64), 0, nullptr, out.data());
  for (int t = 0; t < 64; ++t) REQUIRE(out[t] == (t % 2 ? -1 : (t + 2) % 64));
}

TEST_CASE("a divergent __syncthreads is an error naming both lines and the block") {
  for (const Schedule& s : kSchedules) {
    EmuOptions options(s);
    std::vector<int> out(32);
    const std::string msg =
        kernel_error([&] { launch(emu_test::divergent_barrier, dim3(3), dim3(32), 0, nullptr, out.data()); });
    CAPTURE(msg);
    CHECK(msg.find("divergent __syncthreads") != std::string::npos);
    CHECK(msg.find("block (0,0,0)") != std::string::npos);
    CHECK(msg.find(at(emu_test::kDivergentLineA)) != std::string::npos);
    CHECK(msg.find(at(emu_test::kDivergentLineB)) != std::string::npos);
  }
}

TEST_CASE("a deadlock is an error listing what every thread waits for") {
  std::vector<int> out(32);
  const std::string msg =
      kernel_error([&] { launch(emu_test::barrier_shuffle_deadlock, dim3(1), dim3(32), 0, nullptr, out.data()); });
  CAPTURE(msg);
  CHECK(msg.find("deadlock") != std::string::npos);
  CHECK(msg.find("thread (0,0,0): waiting at __syncthreads " + at(emu_test::kDeadlockBarrierLine)) !=
        std::string::npos);
  CHECK(msg.find("thread (1,0,0) to (31,0,0): waiting at __shfl_sync " + at(emu_test::kDeadlockShuffleLine)) !=
        std::string::npos);
}

TEST_CASE("a warp collective whose mask names an exited lane is an error") {
  for (const Schedule& s : kSchedules) {
    EmuOptions options(s);
    std::vector<int> out(32);
    const std::string msg =
        kernel_error([&] { launch(emu_test::shuffle_with_exited_lane, dim3(1), dim3(32), 0, nullptr, out.data()); });
    CAPTURE(msg);
    CHECK(msg.find("exited") != std::string::npos);
    CHECK(msg.find("__shfl_down_sync") != std::string::npos);
  }
}

TEST_CASE("two different warp collectives meeting in one warp is an error naming both") {
  std::vector<int> out(32);
  const std::string msg =
      kernel_error([&] { launch(emu_test::mismatched_collectives, dim3(1), dim3(32), 0, nullptr, out.data()); });
  CAPTURE(msg);
  CHECK(msg.find("__ballot_sync") != std::string::npos);
  CHECK(msg.find("__any_sync") != std::string::npos);
  CHECK(msg.find(at(emu_test::kMismatchBallotLine)) != std::string::npos);
  CHECK(msg.find(at(emu_test::kMismatchAnyLine)) != std::string::npos);
}

TEST_CASE("a kernel error names the block and the thread it happened in") {
  std::vector<int> out(2 * 8);
  try {
    launch(emu_test::bad_shuffle_width, dim3(2), dim3(8), 0, nullptr, out.data());
    FAIL("no KernelError");
  } catch (const KernelError& e) {
    CAPTURE(e.what());
    CHECK(e.block.x == 1);
    CHECK(e.thread.x == 3);
    CHECK(std::string(e.what()).find("block (1,0,0), thread (3,0,0): shuffle width 3") != std::string::npos);
  }
}

TEST_CASE("an invalid launch configuration is refused before anything runs") {
  std::vector<int> out(1);
  auto run = [&](dim3 grid, dim3 block, size_t smem) {
    launch(emu_test::write_3d_coords, grid, block, smem, nullptr, out.data());
  };
  CHECK_THROWS_AS(run(dim3(1), dim3(2048), 0), std::invalid_argument);
  CHECK_THROWS_AS(run(dim3(1), dim3(1, 1, 65), 0), std::invalid_argument);
  CHECK_THROWS_AS(run(dim3(0), dim3(32), 0), std::invalid_argument);
  CHECK_THROWS_AS(run(dim3(1), dim3(32), 228 * 1024), std::invalid_argument);
}

TEST_CASE("race-free kernels give identical bits under forward, reverse and random schedules") {
  const std::vector<float> in = random_floats(1 << 16, 3);  // random floats: any change of summation order shows
  std::vector<double> din(256);
  for (int i = 0; i < 256; ++i) din[i] = std::sin(double(i));
  std::vector<std::vector<float>> sums, warp_sums;
  std::vector<std::vector<double>> scans;
  std::vector<std::vector<int>> neighbours, xors;
  for (const Schedule& s : kSchedules) {
    EmuOptions options(s);
    std::vector<float> sum(13), warp_sum(256);
    std::vector<double> scan(256);
    std::vector<int> neighbour(4 * 256);
    launch(emu_test::block_sum, dim3(13), dim3(512), 0, nullptr, in.data(), sum.data(), int(in.size()));
    launch(emu_test::warp0_sum, dim3(256), dim3(256), 0, nullptr, in.data(), warp_sum.data());
    launch(emu_test::warp_inclusive_scan, dim3(2), dim3(128), 0, nullptr, din.data(), scan.data());
    launch(emu_test::neighbour_read, dim3(4), dim3(256), 0, nullptr, neighbour.data(), true);
    sums.push_back(sum), warp_sums.push_back(warp_sum), scans.push_back(scan), neighbours.push_back(neighbour);
    xors.push_back(run_shuffle(emu_test::kXor, 3, 4, 96));
  }
  for (size_t i = 1; i < sums.size(); ++i) {
    CAPTURE(kSchedules[i].str());
    CHECK(same_bits(sums[i], sums[0]));
    CHECK(same_bits(warp_sums[i], warp_sums[0]));
    CHECK(same_bits(scans[i], scans[0]));
    CHECK(neighbours[i] == neighbours[0]);
    CHECK(xors[i] == xors[0]);
  }
}

TEST_CASE("a missing __syncthreads is exposed by schedule fuzzing") {
  const int threads = 64;
  std::vector<std::vector<int>> results;
  for (const Schedule& s : kSchedules) {
    EmuOptions options(s);
    std::vector<int> out(threads);
    launch(emu_test::neighbour_read, dim3(1), dim3(threads), 0, nullptr, out.data(), false);
    results.push_back(out);
  }
  // forward: every thread reads its neighbour before the neighbour has written, except the last, which reads slot 0
  std::vector<int> forward(threads, 0);
  forward[threads - 1] = 1;
  CHECK(results[0] == forward);
  CHECK(results[1] != results[0]);
  CHECK(results[2] != results[0]);
}

TEST_CASE("a random schedule repeats exactly for one seed") {
  std::vector<std::vector<int>> results;
  for (int run = 0; run < 2; ++run) {
    EmuOptions options(Schedule::parse("random:7"), run + 1);  // and whatever the worker count
    std::vector<int> out(8 * 128);
    launch(emu_test::neighbour_read, dim3(8), dim3(128), 0, nullptr, out.data(), false);
    results.push_back(out);
  }
  CHECK(results[0] == results[1]);
}

TEST_CASE("the schedule is read from text and from UNET_EMU_SCHEDULE") {
  CHECK(Schedule::parse("forward") == Schedule{Schedule::forward, 0});
  CHECK(Schedule::parse("reverse") == Schedule{Schedule::reverse, 0});
  CHECK(Schedule::parse("random:42") == Schedule{Schedule::random, 42});
  CHECK(Schedule::parse("random:42").str() == "random:42");
  CHECK_THROWS_AS(Schedule::parse("backwards"), std::invalid_argument);
  CHECK_THROWS_AS(Schedule::parse("random:x"), std::invalid_argument);
  setenv("UNET_EMU_SCHEDULE", "reverse", 1);
  CHECK(Schedule::from_env() == Schedule{Schedule::reverse, 0});
  unsetenv("UNET_EMU_SCHEDULE");
  CHECK(Schedule::from_env() == Schedule{});
}

#ifdef UNET_CHECKED
// The checked build's reason to exist: an out-of-bounds dynamic shared memory access, silent in the normal emulator
// (and on a GPU, often), is a heap-buffer-overflow under AddressSanitizer, and the emulator's death callback names the
// emulated thread. Run as a separate process (tests/checked/emu_smem_overflow.cpp) because ASan ends the process.
TEST_CASE("checked build: AddressSanitizer reports a dynamic shared memory overflow") {
  std::string out;
  const int rc = unet::test::run_tool("emu_smem_overflow", "", &out);
  INFO(out);
  CHECK(rc != 0);
  CHECK(out.find("ERROR: AddressSanitizer: heap-buffer-overflow") != std::string::npos);
  // Right past the launch's 32 floats ("0 bytes to the right of" in GCC 12's ASan, "0 bytes after" in later ones).
  CHECK(out.find("is located 0 bytes ") != std::string::npos);
  CHECK(out.find(" 128-byte region") != std::string::npos);
  CHECK(out.find("overflow_kernel") != std::string::npos);
  CHECK(out.find("block (1,0,0) thread (5,0,0)") != std::string::npos);
  CHECK(out.find("no error reported") == std::string::npos);
}

// The same for global memory: a write one float past a buffer of the emulated device memory, inside the block's
// 256-byte rounding, is reported (only the bytes asked for are addressable), naming the emulated thread.
TEST_CASE("checked build: AddressSanitizer reports a write past a buffer of emulated device memory") {
  std::string out;
  const int rc = unet::test::run_tool("emu_global_overflow", "", &out);
  INFO(out);
  CHECK(rc != 0);
  CHECK(out.find("ERROR: AddressSanitizer: use-after-poison") != std::string::npos);
  CHECK(out.find("global_overflow_kernel") != std::string::npos);
  CHECK(out.find("block (1,0,0) thread (3,0,0)") != std::string::npos);
  CHECK(out.find("no error reported") == std::string::npos);
}
#endif
