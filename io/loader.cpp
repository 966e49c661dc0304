// BatchLoader (io/loader.h): one task per sample, handed out in step order; a slot per step being prepared.
#include "io/loader.h"

#include <chrono>

namespace unet::io {

BatchLoader::BatchLoader(const PatchSampler& sampler, int64_t first_step, int workers, int prefetch)
    : sampler_(sampler), prefetch_(std::max(1, prefetch)), step_(first_step), task_step_(first_step) {
  check_arg(workers >= 0, "BatchLoader: workers must be >= 0, got " + std::to_string(workers));
  for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { work(); });
}

BatchLoader::~BatchLoader() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  work_cv_.notify_all();
  for (std::thread& t : threads_) t.join();
}

void BatchLoader::work() {
  const int64_t B = sampler_.options().batch;
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    work_cv_.wait(lock, [&] { return stop_ || task_step_ < step_ + prefetch_; });
    if (stop_) return;
    const int64_t step = task_step_, item = task_item_;
    if (++task_item_ == B) {
      task_item_ = 0;
      ++task_step_;
    }
    if (slots_.empty() || slots_.back().step < step) {
      Slot fresh{step, PatchBatch(), 0, nullptr};
      try {
        fresh.batch = sampler_.empty_batch();  // may fail (out of memory): the consumer gets the error, not terminate
      } catch (...) {
        fresh.error = std::current_exception();
      }
      slots_.push_back(std::move(fresh));
    }
    // The slot stays put until its batch is complete (a deque keeps references to the elements it keeps).
    Slot& slot = slots_[static_cast<size_t>(step - slots_.front().step)];
    const bool allocated = slot.batch.image.defined();  // set with the slot, under the lock
    lock.unlock();
    std::exception_ptr error;
    if (allocated) {
      try {
        PatchSampler::put(slot.batch, item, sampler_.sample(step, item));  // each item its own part of the tensors
      } catch (...) {
        error = std::current_exception();
      }
    }
    lock.lock();
    if (error && !slot.error) slot.error = error;
    ++slot.done;
    done_cv_.notify_all();
  }
}

PatchBatch BatchLoader::next() {
  if (threads_.empty()) return sampler_.batch(step_++);
  const int64_t B = sampler_.options().batch;
  std::unique_lock<std::mutex> lock(mutex_);
  const auto t0 = std::chrono::steady_clock::now();
  done_cv_.wait(lock, [&] { return !slots_.empty() && slots_.front().step == step_ && slots_.front().done == B; });
  waited_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  Slot slot = std::move(slots_.front());
  slots_.pop_front();
  ++step_;
  lock.unlock();
  work_cv_.notify_all();
  if (slot.error) std::rethrow_exception(slot.error);
  return std::move(slot.batch);
}

}  // namespace unet::io
