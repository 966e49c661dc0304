// Threading for the CPU kernels: OpenMP with static schedules, so each index always runs on the same thread
// and any per-thread partial result is combined in a fixed order (results do not depend on timing).
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace unet {

inline int num_threads() { return omp_get_max_threads(); }

// Calls fn(begin, end) on contiguous chunks of [0, n) of at least `grain` items, in parallel.
template <class F>
void parallel_for(int64_t n, int64_t grain, F&& fn) {
  if (n <= 0) return;
  int64_t max_chunks = std::max<int64_t>(1, n / std::max<int64_t>(1, grain));
  int threads = static_cast<int>(std::min<int64_t>(num_threads(), max_chunks));
  if (threads <= 1 || omp_in_parallel()) {
    fn(int64_t(0), n);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    int t = omp_get_thread_num();
    int64_t begin = n * t / threads, end = n * (t + 1) / threads;
    if (begin < end) fn(begin, end);
  }
}

}  // namespace unet
