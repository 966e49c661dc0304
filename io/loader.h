// BatchLoader: a PatchSampler's batches prepared ahead of the training loop on worker threads.
//
// Each sample of each step is a task (PatchSampler::sample, which depends only on the seed, the step and the sample's
// global index), so the batches are the same whatever the number of workers; they come out in step order. The
// workers run up to `prefetch` steps ahead of the consumer. With 0 workers there are no threads: next() prepares the
// batch itself (the samples in parallel over the OpenMP threads).
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "io/dataset.h"

namespace unet::io {

class BatchLoader {
 public:
  // The sampler must outlive the loader. Batches start at step `first_step` (a resumed run's step).
  BatchLoader(const PatchSampler& sampler, int64_t first_step, int workers, int prefetch = 2);
  ~BatchLoader();
  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;

  // The next step's batch. An exception a worker met preparing it is rethrown here.
  PatchBatch next();
  int64_t step() const { return step_; }  // the step next() returns
  int workers() const { return static_cast<int>(threads_.size()); }
  double waited_seconds() const { return waited_s_; }  // total time next() spent waiting for workers

 private:
  struct Slot {
    int64_t step;
    PatchBatch batch;
    int64_t done = 0;  // samples written
    std::exception_ptr error;
  };
  void work();

  const PatchSampler& sampler_;
  const int prefetch_;
  int64_t step_;                       // the consumer's next step
  int64_t task_step_, task_item_ = 0;  // the next task handed to a worker
  std::deque<Slot> slots_;             // steps step_ .. step_ + slots_.size() - 1
  std::mutex mutex_;
  std::condition_variable work_cv_, done_cv_;
  bool stop_ = false;
  double waited_s_ = 0;
  std::vector<std::thread> threads_;
};

}  // namespace unet::io
