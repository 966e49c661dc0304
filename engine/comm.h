// The processes of a data-parallel run and what they exchange (docs/architecture.md, "Data-parallel training").
// One process per rank, started by mpirun or srun; world() is this process's communicator: MPI when a launcher
// started more than one process, otherwise a single-process one whose operations do nothing.
//
// Every reduction is deterministic: element k of the result is ((x_0 + x_1) + x_2) + ... in rank order, computed by
// one rank and sent to the others, so every rank holds the same bits and a run repeats to the bit for the same number
// of ranks. (MPI_Allreduce promises neither: its order depends on the algorithm the library picks for the size.)
// GPU memory in a GPU build with NCCL is reduced by NCCL on the GPUs instead: every rank still gets the same bits, and
// a run repeats for the same ranks on the same machines, but the order is NCCL's (its ring or tree), not rank order.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace unet {

enum class ReduceOp { sum, max };
enum class ScalarType { f32, f64, i64 };

class Comm {
 public:
  virtual ~Comm() = default;
  int rank() const { return rank_; }
  int size() const { return size_; }
  int local_rank() const { return local_rank_; }  // among the ranks on this machine
  int local_size() const { return local_size_; }
  virtual const char* backend() const = 0;  // "single" or "mpi"

  // Reduces count values at `data` over all ranks, in place; data lives on `device` (device memory is staged through
  // the host). Every rank must call with the same count, type and op, in the same order. Thread-safe: calls from
  // different threads are serialised.
  virtual void allreduce(void* data, int64_t count, ScalarType type, ReduceOp op, Device device) = 0;
  // Whether reductions of `device` memory run on the device itself (NCCL, in a GPU build with NCCL, on Device::cuda):
  // queued on a communication stream, never staged through the host. allreduce() then returns before the sum is
  // done, but work queued afterwards on the device's stream sees it (stream order).
  virtual bool reduces_on_device(Device) const { return false; }
  // allreduce() without the stream order, for overlap: where reduces_on_device(device), the sum runs beside the work
  // queued after it on the device's stream, and only work queued after wait_device(device) is guaranteed to see it.
  // Elsewhere the same as allreduce().
  virtual void allreduce_async(void* data, int64_t count, ScalarType type, ReduceOp op, Device device) {
    allreduce(data, count, type, op, device);
  }
  virtual void wait_device(Device) {}
  // Rank `root`'s bytes at `data` (host memory) to every rank.
  virtual void broadcast(void* data, int64_t bytes, int root) = 0;
  virtual void barrier() = 0;
  // Ends every rank of the run with `status` (MPI_Abort): the way out when one rank fails and the others may be
  // waiting for it in a collective.
  [[noreturn]] virtual void abort(int status) = 0;

  // Conveniences over allreduce, on host values.
  double sum(double v);
  int64_t sum(int64_t v);
  bool any(bool v);

  // What every rank must hold alike (its configuration, its list of cases), compared with rank 0's: rank 0 sends its
  // (name, value) pairs to every rank, and each rank returns the first name whose value differs from its own or
  // that one of them lacks, with both values; nothing when they agree (always on rank 0). Collective: every rank calls
  // it with its own list. A rank that differs is to stop the run (by an error, which aborts every rank).
  struct Difference {
    std::string name, here, on_rank0;  // a value absent on one side: "(none)"
  };
  std::optional<Difference> compare_with_rank0(const std::vector<std::pair<std::string, std::string>>& items);

 protected:
  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
};

// The process's communicator, made on first use: MPI (initialised here, finalised at exit) when the environment says
// a launcher started this process as one of several (launcher_size() above 1), a single-process one otherwise. A
// multi-process launch of a build without MPI is an error saying so.
Comm& world();

// True when world() has been made and spans more than one process (error handlers use it: they must not be the ones
// to start MPI).
bool world_is_distributed();

// The number of processes the launcher environment announces (1 when there is none), without starting MPI:
// OMPI_COMM_WORLD_SIZE, PMIX_SIZE, PMI_SIZE, or in a task of an srun step (SLURM_STEP_ID) SLURM_STEP_NUM_TASKS.
// Throws when srun started several tasks without PMIx or PMI (srun --mpi=none), which MPI could not connect.
int launcher_size();

// Whether a launcher (mpirun, mpiexec, a task of an srun step) started this process, whatever the number of processes.
// Its standard output is then the launcher's pseudo-terminal or pipe, not the user's terminal.
bool started_by_launcher();

// This process's rank among those the launcher started on this machine (OMPI_COMM_WORLD_LOCAL_RANK, SLURM_LOCALID,
// MPI_LOCALRANKID; 0 when there is none), without starting MPI: the GPU a rank uses.
int launcher_local_rank();

// Whether this build has MPI (CMake found it).
bool mpi_built();

// A digest of `size` bytes that any changed or moved byte alters (with near certainty), for telling ranks' data apart:
// the sum over 8-byte words of SplitMix64's finaliser of (word + position * golden ratio), summed by the threads in
// any order (addition modulo 2^64 commutes), so gigabytes take a fraction of a second. `file_digest`: the same over a
// file's bytes, read in chunks (throws std::runtime_error naming a file it cannot read).
uint64_t content_digest(const void* data, size_t size);
uint64_t file_digest(const std::string& path);
// file_digest as 16 hexadecimal digits, for messages and the lists that compare files.
std::string file_digest_text(const std::string& path);

}  // namespace unet
