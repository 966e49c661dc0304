// world(): the single-process communicator, and the MPI one when the build has MPI (UNET_HAVE_MPI).
#include "engine/comm.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <vector>

#include "engine/device.h"

#if UNET_HAVE_MPI
#include <mpi.h>
#endif

namespace unet {

double Comm::sum(double v) {
  allreduce(&v, 1, ScalarType::f64, ReduceOp::sum, Device::cpu);
  return v;
}

int64_t Comm::sum(int64_t v) {
  allreduce(&v, 1, ScalarType::i64, ReduceOp::sum, Device::cpu);
  return v;
}

bool Comm::any(bool v) {
  int64_t x = v ? 1 : 0;
  allreduce(&x, 1, ScalarType::i64, ReduceOp::max, Device::cpu);
  return x != 0;
}

int launcher_size() {
  // OpenMPI's mpirun, PMIx (mpirun and srun --mpi=pmix), PMI (MPICH, srun --mpi=pmi2), Slurm itself.
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "PMI_SIZE", "SLURM_NTASKS"})
    if (const char* v = std::getenv(name)) {
      const long n = std::strtol(v, nullptr, 10);
      if (n >= 1) return static_cast<int>(n);
    }
  return 1;
}

int launcher_local_rank() {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID"})
    if (const char* v = std::getenv(name)) {
      const long r = std::strtol(v, nullptr, 10);
      if (r >= 0) return static_cast<int>(r);
    }
  return 0;
}

namespace {

class SingleComm final : public Comm {
 public:
  const char* backend() const override { return "single"; }
  void allreduce(void*, int64_t, ScalarType, ReduceOp, Device) override {}
  void broadcast(void*, int64_t, int) override {}
  void barrier() override {}
  [[noreturn]] void abort(int status) override { std::exit(status); }
};

#if UNET_HAVE_MPI

size_t scalar_bytes(ScalarType t) { return t == ScalarType::f32 ? 4 : 8; }

MPI_Datatype mpi_type(ScalarType t) {
  return t == ScalarType::f32 ? MPI_FLOAT : t == ScalarType::f64 ? MPI_DOUBLE : MPI_INT64_T;
}

// acc[k] = op(acc[k], x[k]); NaN propagates through max as through sum (a NaN gradient must reach every rank).
template <class T>
void combine(T* acc, const T* x, int64_t n, ReduceOp op) {
  if (op == ReduceOp::sum) {
    for (int64_t k = 0; k < n; ++k) acc[k] += x[k];
  } else {
    for (int64_t k = 0; k < n; ++k) {
      if constexpr (std::is_floating_point_v<T>) {
        if (std::isnan(x[k]) || std::isnan(acc[k])) {
          acc[k] = std::isnan(acc[k]) ? acc[k] : x[k];
          continue;
        }
      }
      acc[k] = std::max(acc[k], x[k]);
    }
  }
}

void check_mpi(int code, const char* what) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, text, &len);
  throw std::runtime_error(std::string("MPI ") + what + ": " + std::string(text, static_cast<size_t>(len)));
}

class MpiComm final : public Comm {
 public:
  MpiComm() {
    int provided = 0;
    check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided), "MPI_Init_thread");
    // Errors come back as codes (turned into exceptions naming the call) instead of MPI's default abort.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    MPI_Comm local;
    check_mpi(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local),
              "MPI_Comm_split_type");
    MPI_Comm_rank(local, &local_rank_);
    MPI_Comm_size(local, &local_size_);
    MPI_Comm_free(&local);
    if (provided < MPI_THREAD_SERIALIZED)
      throw std::runtime_error("MPI: the library offers thread level " + std::to_string(provided) +
                               ", below MPI_THREAD_SERIALIZED (gradients are reduced from a second thread)");
  }
  ~MpiComm() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
  }
  const char* backend() const override { return "mpi"; }

  void allreduce(void* data, int64_t count, ScalarType type, ReduceOp op, Device device) override {
    if (count <= 0) return;
    const size_t elem = scalar_bytes(type);
    std::lock_guard<std::mutex> lock(mutex_);
    if (device == Device::cpu) {
      reduce_host(static_cast<char*>(data), count, type, op);
      return;
    }
    staging_.resize(static_cast<size_t>(count) * elem);
    device::copy(staging_.data(), Device::cpu, data, device, staging_.size());
    reduce_host(staging_.data(), count, type, op);
    device::copy(data, device, staging_.data(), Device::cpu, staging_.size());
    device::synchronize(device);  // the staging buffer is reused by the next call
  }

  void broadcast(void* data, int64_t bytes, int root) override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (int64_t done = 0; done < bytes;) {
      const int n = static_cast<int>(std::min<int64_t>(bytes - done, 1 << 30));
      check_mpi(MPI_Bcast(static_cast<char*>(data) + done, n, MPI_BYTE, root, MPI_COMM_WORLD), "MPI_Bcast");
      done += n;
    }
  }

  void barrier() override {
    std::lock_guard<std::mutex> lock(mutex_);
    check_mpi(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
  }

  [[noreturn]] void abort(int status) override {
    MPI_Abort(MPI_COMM_WORLD, status);
    std::_Exit(status);
  }

 private:
  // The fixed-order reduction: the values are cut into `size` chunks; rank j receives chunk j from every rank
  // (MPI_Alltoallv), adds them in rank order, and the summed chunks go to every rank (MPI_Allgatherv). It moves
  // 2 (size - 1) / size of the data per rank, as a ring all-reduce does. Pieces of at most 2^26 values keep MPI's
  // int counts in range.
  void reduce_host(char* data, int64_t count, ScalarType type, ReduceOp op) {
    const size_t elem = scalar_bytes(type);
    const int64_t piece = int64_t(1) << 26;
    for (int64_t start = 0; start < count; start += piece)
      reduce_piece(data + static_cast<size_t>(start) * elem, std::min(piece, count - start), type, op);
  }

  void reduce_piece(char* data, int64_t n, ScalarType type, ReduceOp op) {
    const int N = size_;
    const size_t elem = scalar_bytes(type);
    std::vector<int> counts(static_cast<size_t>(N)), displs(static_cast<size_t>(N));
    for (int j = 0; j < N; ++j) {
      const int64_t b = n * j / N, e = n * (j + 1) / N;
      counts[static_cast<size_t>(j)] = static_cast<int>(e - b);
      displs[static_cast<size_t>(j)] = static_cast<int>(b);
    }
    const int mine = counts[static_cast<size_t>(rank_)];
    std::vector<int> recv_counts(static_cast<size_t>(N), mine), recv_displs(static_cast<size_t>(N));
    for (int i = 0; i < N; ++i) recv_displs[static_cast<size_t>(i)] = i * mine;
    received_.resize(static_cast<size_t>(N) * static_cast<size_t>(mine) * elem);
    const MPI_Datatype t = mpi_type(type);
    check_mpi(MPI_Alltoallv(data, counts.data(), displs.data(), t, received_.data(), recv_counts.data(),
                            recv_displs.data(), t, MPI_COMM_WORLD),
              "MPI_Alltoallv");
    char* acc = received_.data();  // rank 0's chunk, then each other rank's added in rank order
    for (int i = 1; i < N; ++i) {
      const char* x = received_.data() + static_cast<size_t>(i) * static_cast<size_t>(mine) * elem;
      switch (type) {
        case ScalarType::f32: combine(reinterpret_cast<float*>(acc), reinterpret_cast<const float*>(x), mine, op); break;
        case ScalarType::f64: combine(reinterpret_cast<double*>(acc), reinterpret_cast<const double*>(x), mine, op); break;
        case ScalarType::i64: combine(reinterpret_cast<int64_t*>(acc), reinterpret_cast<const int64_t*>(x), mine, op); break;
      }
    }
    check_mpi(MPI_Allgatherv(acc, mine, t, data, counts.data(), displs.data(), t, MPI_COMM_WORLD), "MPI_Allgatherv");
  }

  std::mutex mutex_;
  std::vector<char> staging_, received_;
};

#endif  // UNET_HAVE_MPI

std::unique_ptr<Comm>& world_slot() {
  static std::unique_ptr<Comm> comm;
  return comm;
}

}  // namespace

bool mpi_built() { return UNET_HAVE_MPI != 0; }

Comm& world() {
  static std::once_flag once;
  std::call_once(once, [] {
    const int n = launcher_size();
    if (n <= 1) {
      world_slot() = std::make_unique<SingleComm>();
      return;
    }
#if UNET_HAVE_MPI
    world_slot() = std::make_unique<MpiComm>();
    // Finalised at exit so that every rank leaves MPI cleanly after a normal return from main.
    std::atexit([] { world_slot().reset(); });
#else
    throw std::runtime_error("started as one of " + std::to_string(n) +
                             " processes by a launcher, but this build has no MPI (install libopenmpi-dev and "
                             "rebuild: tools/setup.sh)");
#endif
  });
  return *world_slot();
}

bool world_is_distributed() { return world_slot() && world_slot()->size() > 1; }

}  // namespace unet
