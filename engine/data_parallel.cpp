// GradientReducer: buckets filled by gradient-ready hooks, reduced on a communication thread.
#include "engine/data_parallel.h"

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>

#include "engine/device.h"

namespace unet {

namespace {
using clock_type = std::chrono::steady_clock;
double since(clock_type::time_point t) {
  return std::chrono::duration<double>(clock_type::now() - t).count();
}
}  // namespace

struct GradientReducer::State {
  struct Bucket {
    std::vector<size_t> params;  // indices into `params`
    int64_t count = 0;           // floats
    Tensor values;               // f32 [count] where the parameters are: the gradients, then their sums
    size_t ready = 0;            // gradients copied in this step
    bool queued = false, done = false;
  };
  std::vector<Tensor> params;
  std::vector<size_t> bucket_of;   // per parameter
  std::vector<int64_t> offset_of;  // per parameter, in floats within its bucket
  std::vector<bool> has_grad;      // per parameter, this step
  std::vector<Bucket> buckets;
  Comm* comm = nullptr;
  Device device = Device::cpu;  // of every parameter
  bool on_device = false;       // the communicator reduces there itself (NCCL): no thread, no host staging
  bool armed = true;            // false once the reducer is gone (the hooks stay on the parameters)

  // The communication thread and its queue (bucket indices, in the order every rank queues them).
  bool overlap = true;
  std::thread thread;
  std::mutex mutex;
  std::condition_variable cv;
  std::deque<size_t> queue;
  bool stop = false;
  std::exception_ptr error;
  double communication_s = 0;
  ReducerTimes last;

  void reduce(Bucket& b) {
    const auto t0 = clock_type::now();
    comm->allreduce(b.values.raw(), b.count, ScalarType::f32, ReduceOp::sum, device);
    communication_s += since(t0);
  }

  void enqueue(size_t i) {
    Bucket& b = buckets[i];
    b.queued = true;
    if (on_device) {  // queued on the communicator's stream behind the copies into the bucket; finish() waits
      const auto t0 = clock_type::now();
      comm->allreduce_async(b.values.raw(), b.count, ScalarType::f32, ReduceOp::sum, device);
      communication_s += since(t0);
      b.done = true;
      return;
    }
    if (!overlap) return;  // finish() reduces it
    {
      std::lock_guard<std::mutex> lock(mutex);
      queue.push_back(i);
    }
    cv.notify_all();
  }

  void run_thread() {
    for (;;) {
      size_t i;
      {
        std::unique_lock<std::mutex> lock(mutex);
        cv.wait(lock, [&] { return stop || !queue.empty(); });
        if (queue.empty()) return;
        i = queue.front();
        queue.pop_front();
      }
      try {
        reduce(buckets[i]);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex);
        if (!error) error = std::current_exception();
      }
      {
        std::lock_guard<std::mutex> lock(mutex);
        buckets[i].done = true;
      }
      cv.notify_all();
    }
  }

  // A gradient-ready hook: the gradient is final for this backward.
  void on_ready(size_t p, const Tensor& grad) {
    if (!armed || has_grad[p]) return;
    check_arg(grad.dtype() == DType::f32 && grad.numel() == params[p].numel(),
              "GradientReducer: gradient " + grad.describe() + " for parameter " + params[p].describe());
    Bucket& b = buckets[bucket_of[p]];
    device::copy(b.values.data<float>() + offset_of[p], device, grad.raw(), grad.device(),
                 static_cast<size_t>(grad.numel()) * sizeof(float));
    has_grad[p] = true;
    if (++b.ready == b.params.size()) enqueue(bucket_of[p]);
  }
};

GradientReducer::GradientReducer(std::vector<Tensor> params, Comm& comm, int64_t bucket_bytes, bool overlap)
    : s_(std::make_shared<State>()) {
  State& s = *s_;
  s.params = std::move(params);
  s.comm = &comm;
  check_arg(!s.params.empty(), "GradientReducer: no parameters");
  s.device = s.params.front().device();
  s.on_device = comm.reduces_on_device(s.device);
  s.overlap = overlap && !s.on_device;
  s.bucket_of.resize(s.params.size());
  s.offset_of.resize(s.params.size());
  s.has_grad.assign(s.params.size(), false);
  const int64_t bucket_floats = std::max<int64_t>(1, bucket_bytes / 4);
  for (size_t k = s.params.size(); k-- > 0;) {  // reverse order: the order backward finishes them
    const Tensor& p = s.params[k];
    check_arg(p.dtype() == DType::f32 && p.device() == s.device,
              "GradientReducer: parameter " + p.describe() + " is not f32 on " + device_name(s.device));
    if (s.buckets.empty() || s.buckets.back().count >= bucket_floats) s.buckets.emplace_back();
    State::Bucket& b = s.buckets.back();
    s.bucket_of[k] = s.buckets.size() - 1;
    s.offset_of[k] = b.count;
    b.params.push_back(k);
    b.count += p.numel();
  }
  for (State::Bucket& b : s.buckets) b.values = Tensor::zeros({b.count}, DType::f32, s.device);
  std::weak_ptr<State> weak = s_;
  for (size_t k = 0; k < s.params.size(); ++k)
    s.params[k].add_grad_ready_hook([weak, k](const Tensor& g) {
      if (auto st = weak.lock()) st->on_ready(k, g);
    });
  if (s.overlap) s.thread = std::thread([st = s_.get()] { st->run_thread(); });
}

GradientReducer::~GradientReducer() {
  s_->armed = false;
  if (s_->thread.joinable()) {
    {
      std::lock_guard<std::mutex> lock(s_->mutex);
      s_->stop = true;
    }
    s_->cv.notify_all();
    s_->thread.join();
  }
}

void GradientReducer::finish() {
  State& s = *s_;
  const auto t0 = clock_type::now();
  // Buckets with a parameter that got no gradient: zeros in its place, queued in bucket order (the same on every
  // rank, as the graph is).
  for (size_t i = 0; i < s.buckets.size(); ++i) {
    State::Bucket& b = s.buckets[i];
    if (b.queued) continue;
    for (size_t p : b.params)
      if (!s.has_grad[p])
        device::memset(s.device, b.values.data<float>() + s.offset_of[p], 0,
                       static_cast<size_t>(s.params[p].numel()) * sizeof(float));
    s.enqueue(i);
  }
  if (s.on_device) {
    s.comm->wait_device(s.device);
  } else if (s.overlap) {
    std::unique_lock<std::mutex> lock(s.mutex);
    s.cv.wait(lock, [&] {
      for (const State::Bucket& b : s.buckets)
        if (!b.done) return false;
      return true;
    });
  } else {
    for (State::Bucket& b : s.buckets) s.reduce(b);
  }
  if (s.error) {
    std::exception_ptr e = s.error;
    s.error = nullptr;
    std::rethrow_exception(e);
  }
  ReducerTimes t;
  for (size_t k = 0; k < s.params.size(); ++k) {
    if (!s.has_grad[k]) continue;
    Tensor g = s.params[k].grad();
    const State::Bucket& b = s.buckets[s.bucket_of[k]];
    device::copy(g.raw(), g.device(), b.values.data<float>() + s.offset_of[k], s.device,
                 static_cast<size_t>(g.numel()) * sizeof(float));
  }
  for (State::Bucket& b : s.buckets) {
    t.bytes += b.count * 4;
    b.ready = 0;
    b.queued = b.done = false;
  }
  s.has_grad.assign(s.params.size(), false);
  t.exposed_s = since(t0);
  t.communication_s = s.communication_s;
  s.communication_s = 0;
  s.last = t;
}

Comm& GradientReducer::comm() const {
  return *s_->comm;
}

int GradientReducer::buckets() const {
  return static_cast<int>(s_->buckets.size());
}

ReducerTimes GradientReducer::last_times() const {
  return s_->last;
}

}  // namespace unet
