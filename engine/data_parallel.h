// Gradient reduction for data-parallel training (docs/architecture.md, "Data-parallel training").
//
// Each rank runs backward on its share of the global batch; its gradients are its share of the global batch's
// gradient (the loss normalises by the global batch: engine/ops.h, dice_ce_loss with a Comm), so the gradients are
// summed over ranks, in f32 whatever the training precision (the master gradients are f32).
//
// The parameters are grouped into buckets of about bucket_bytes, in reverse order (backward produces the last
// layers' gradients first); a bucket lives where the parameters do. A gradient-ready hook copies each gradient into
// its bucket as soon as autograd has finished it, and a full bucket is reduced while backward goes on: on GPUs with
// NCCL, queued on the communicator's stream (Comm::allreduce_async); otherwise handed to a communication thread
// (MPI, device memory staged through the host). finish() waits for the rest and writes the sums into the gradients.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "engine/comm.h"
#include "engine/tensor.h"

namespace unet {

struct ReducerTimes {
  double communication_s = 0;  // reducing buckets (on the communication thread when overlapped)
  double exposed_s = 0;        // finish(): what backward did not hide, including the copies back
  int64_t bytes = 0;           // gradient bytes reduced per rank
};

class GradientReducer {
 public:
  // params: f32 leaves on one device, identical in order and shape on every rank. overlap = false reduces every bucket
  // in finish() (no thread).
  GradientReducer(std::vector<Tensor> params, Comm& comm, int64_t bucket_bytes = int64_t(25) << 20,
                  bool overlap = true);
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  // After backward: reduces what the hooks have not sent yet (a parameter without a gradient counts as zeros), waits
  // for every bucket and writes the sums into the gradients. Parameters without a gradient keep none.
  void finish();

  Comm& comm() const;
  int buckets() const;
  ReducerTimes last_times() const;  // of the last finish()'s step

 private:
  struct State;
  std::shared_ptr<State> s_;  // shared with the hooks, which outlive nothing: the destructor disarms them
};

}  // namespace unet
