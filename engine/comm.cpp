// world(): the single-process communicator, and the MPI one when the build has MPI (UNET_HAVE_MPI), with NCCL for
// GPU memory when the GPU build found it (UNET_HAVE_NCCL).
#include "engine/comm.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <vector>

#include "engine/device.h"

#if UNET_HAVE_MPI
#include <mpi.h>
#endif
#ifndef UNET_HAVE_NCCL
#define UNET_HAVE_NCCL 0
#endif
#if UNET_HAVE_NCCL
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <nccl.h>
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

std::optional<Comm::Difference> Comm::compare_with_rank0(
    const std::vector<std::pair<std::string, std::string>>& items) {
  if (size_ == 1) return std::nullopt;
  // Sent as "name\0value\0" pairs: its length first, then the bytes.
  std::string text;
  for (const auto& [name, value] : items) text.append(name).append(1, '\0').append(value).append(1, '\0');
  int64_t bytes = static_cast<int64_t>(text.size());
  broadcast(&bytes, sizeof bytes, 0);
  std::string theirs(static_cast<size_t>(bytes), '\0');
  if (rank_ == 0) theirs = text;
  broadcast(theirs.data(), bytes, 0);
  if (rank_ == 0) return std::nullopt;
  std::map<std::string, std::string> reference;
  for (size_t at = 0; at < theirs.size();) {
    const size_t name_end = theirs.find('\0', at), value_end = theirs.find('\0', name_end + 1);
    reference[theirs.substr(at, name_end - at)] = theirs.substr(name_end + 1, value_end - name_end - 1);
    at = value_end + 1;
  }
  std::map<std::string, std::string> mine;
  for (const auto& [name, value] : items) {
    const auto it = reference.find(name);
    if (it == reference.end()) return Difference{name, value, "(none)"};
    if (it->second != value) return Difference{name, value, it->second};
    mine[name] = value;
  }
  for (const auto& [name, value] : reference)
    if (!mine.count(name)) return Difference{name, "(none)", value};
  return std::nullopt;
}

uint64_t content_digest(const void* data, size_t size) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  const auto mix = [](uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  };
  const int64_t words = static_cast<int64_t>(size / 8);
  uint64_t sum = mix(size);
#pragma omp parallel for reduction(+ : sum) schedule(static)
  for (int64_t i = 0; i < words; ++i) {
    uint64_t w;
    std::memcpy(&w, bytes + 8 * i, 8);
    sum += mix(w + static_cast<uint64_t>(i) * 0x9e3779b97f4a7c15ull);
  }
  uint64_t tail = 0;
  if (size % 8) std::memcpy(&tail, bytes + 8 * words, size % 8);
  return sum + mix(tail ^ 0x5bd1e995ull);
}

uint64_t file_digest(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) throw std::runtime_error(path + ": cannot open: " + std::strerror(errno));
  std::vector<unsigned char> chunk(size_t(1) << 24);
  uint64_t digest = 0;
  for (size_t n; (n = std::fread(chunk.data(), 1, chunk.size(), f)) > 0;)
    digest = digest * 1099511628211ull + content_digest(chunk.data(), n);  // chunks in order
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) throw std::runtime_error(path + ": cannot read: " + std::strerror(errno));
  return digest;
}

std::string file_digest_text(const std::string& path) {
  char text[24];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(file_digest(path)));
  return text;
}

bool started_by_launcher() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE", "SLURM_STEP_ID"})
    if (std::getenv(name)) return true;
  return false;
}

int launcher_size() {
  const auto count = [](const char* name) -> long {
    const char* v = std::getenv(name);
    return v ? std::strtol(v, nullptr, 10) : 0;
  };
  // OpenMPI's mpirun, PMIx, PMI (MPICH's launchers, srun --mpi=pmi2).
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "PMI_SIZE"})
    if (const long n = count(name); n >= 1) return static_cast<int>(n);
  // srun --mpi=pmix announces the size through Slurm alone. Only a step's tasks (SLURM_STEP_ID) are ranks: an
  // allocation's shell and a batch script carry SLURM_NTASKS too, and a process started there directly is one process.
  const long tasks = std::getenv("SLURM_STEP_ID") ? count("SLURM_STEP_NUM_TASKS") : 0;
  if (tasks > 1 && !std::getenv("PMIX_RANK") && !std::getenv("PMI_RANK"))
    throw std::runtime_error(
        "started by srun as one of " + std::to_string(tasks) +
        " tasks, but without a process-management interface for MPI to connect them (srun "
        "--mpi=none, given or the cluster's default): launch with srun --mpi=pmix (srun --mpi=list "
        "shows the interfaces the cluster has)");
  return tasks >= 1 ? static_cast<int>(tasks) : 1;
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

size_t scalar_bytes(ScalarType t) {
  return t == ScalarType::f32 ? 4 : 8;
}

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

#if UNET_HAVE_NCCL
// libnccl.so.2 is opened when the first reduction of GPU memory needs it, not linked: a GPU build then runs on one GPU
// without NCCL installed, and a run of several says what is missing.
struct NcclApi {
  ncclResult_t (*get_unique_id)(ncclUniqueId*) = nullptr;
  ncclResult_t (*comm_init_rank)(ncclComm_t*, int, ncclUniqueId, int) = nullptr;
  ncclResult_t (*all_reduce)(const void*, void*, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t,
                             cudaStream_t) = nullptr;
  ncclResult_t (*comm_destroy)(ncclComm_t) = nullptr;
  const char* (*error_string)(ncclResult_t) = nullptr;

  static const NcclApi& get() {
    static const NcclApi api = [] {
      NcclApi a;
      void* lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
      if (!lib)
        throw std::runtime_error(std::string("NCCL: cannot load libnccl.so.2 (") + dlerror() +
                                 "); GPU ranks reduce with NCCL: install it (Debian: libnccl2; or the lib folder "
                                 "of the Python package nvidia.nccl) and put it on LD_LIBRARY_PATH");
      auto sym = [lib](const char* name) {
        void* f = dlsym(lib, name);
        if (!f) throw std::runtime_error(std::string("NCCL: libnccl.so.2 has no ") + name);
        return f;
      };
      a.get_unique_id = reinterpret_cast<decltype(a.get_unique_id)>(sym("ncclGetUniqueId"));
      a.comm_init_rank = reinterpret_cast<decltype(a.comm_init_rank)>(sym("ncclCommInitRank"));
      a.all_reduce = reinterpret_cast<decltype(a.all_reduce)>(sym("ncclAllReduce"));
      a.comm_destroy = reinterpret_cast<decltype(a.comm_destroy)>(sym("ncclCommDestroy"));
      a.error_string = reinterpret_cast<decltype(a.error_string)>(sym("ncclGetErrorString"));
      return a;
    }();
    return api;
  }
};

void check_nccl(ncclResult_t r, const char* what) {
  if (r != ncclSuccess) throw std::runtime_error(std::string("NCCL ") + what + ": " + NcclApi::get().error_string(r));
}

ncclDataType_t nccl_type(ScalarType t) {
  return t == ScalarType::f32 ? ncclFloat32 : t == ScalarType::f64 ? ncclFloat64 : ncclInt64;
}

// NCCL between the ranks' GPUs (one per rank: the one resolve_device chose for the local rank), bootstrapped through
// MPI: rank 0's unique id is broadcast, then every rank joins. Reductions run on a stream of their own; events order
// them after the work already on the default stream (start) and, on wait(), the default stream after them.
class Nccl {
 public:
  Nccl(int rank, int size, const ncclUniqueId& id) {
    UNET_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    UNET_CUDA_CHECK(cudaEventCreateWithFlags(&queued_, cudaEventDisableTiming));
    UNET_CUDA_CHECK(cudaEventCreateWithFlags(&reduced_, cudaEventDisableTiming));
    check_nccl(NcclApi::get().comm_init_rank(&comm_, size, id, rank), "ncclCommInitRank");
  }
  ~Nccl() {
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return;  // the CUDA runtime is already gone (exit): nothing to release
    NcclApi::get().comm_destroy(comm_);
    cudaEventDestroy(queued_);
    cudaEventDestroy(reduced_);
    cudaStreamDestroy(stream_);
  }
  void start(void* data, int64_t count, ScalarType type, ReduceOp op) {
    const cudaStream_t compute = device::default_stream(Device::cuda);
    UNET_CUDA_CHECK(cudaEventRecord(queued_, compute));
    UNET_CUDA_CHECK(cudaStreamWaitEvent(stream_, queued_, 0));
    check_nccl(NcclApi::get().all_reduce(data, data, static_cast<size_t>(count), nccl_type(type),
                                         op == ReduceOp::sum ? ncclSum : ncclMax, comm_, stream_),
               "ncclAllReduce");
  }
  void wait() {
    UNET_CUDA_CHECK(cudaEventRecord(reduced_, stream_));
    UNET_CUDA_CHECK(cudaStreamWaitEvent(device::default_stream(Device::cuda), reduced_, 0));
  }

 private:
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t queued_ = nullptr, reduced_ = nullptr;
};
#endif  // UNET_HAVE_NCCL

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
#if UNET_HAVE_NCCL
    nccl_.reset();
#endif
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
  }
  const char* backend() const override {
    return "mpi";
  }

  bool reduces_on_device(Device device) const override {
    return UNET_HAVE_NCCL && device == Device::cuda;
  }

  void allreduce_async(void* data, int64_t count, ScalarType type, ReduceOp op, Device device) override {
#if UNET_HAVE_NCCL
    if (device == Device::cuda) {
      if (count <= 0) return;
      std::lock_guard<std::mutex> lock(mutex_);
      nccl().start(data, count, type, op);
      return;
    }
#endif
    allreduce(data, count, type, op, device);
  }

  void wait_device(Device device) override {
#if UNET_HAVE_NCCL
    std::lock_guard<std::mutex> lock(mutex_);
    if (device == Device::cuda && nccl_) nccl_->wait();
#else
    (void)device;
#endif
  }

  void allreduce(void* data, int64_t count, ScalarType type, ReduceOp op, Device device) override {
    if (count <= 0) return;
    if (reduces_on_device(device)) {
      allreduce_async(data, count, type, op, device);
      wait_device(device);
      return;
    }
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
        case ScalarType::f32:
          combine(reinterpret_cast<float*>(acc), reinterpret_cast<const float*>(x), mine, op);
          break;
        case ScalarType::f64:
          combine(reinterpret_cast<double*>(acc), reinterpret_cast<const double*>(x), mine, op);
          break;
        case ScalarType::i64:
          combine(reinterpret_cast<int64_t*>(acc), reinterpret_cast<const int64_t*>(x), mine, op);
          break;
      }
    }
    check_mpi(MPI_Allgatherv(acc, mine, t, data, counts.data(), displs.data(), t, MPI_COMM_WORLD), "MPI_Allgatherv");
  }

#if UNET_HAVE_NCCL
  // Made at the first reduction of GPU memory (a collective call: every rank makes it at the same point).
  Nccl& nccl() {
    if (!nccl_) {
      ncclUniqueId id{};
      if (rank_ == 0) check_nccl(NcclApi::get().get_unique_id(&id), "ncclGetUniqueId");
      check_mpi(MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD), "MPI_Bcast (NCCL id)");
      nccl_ = std::make_unique<Nccl>(rank_, size_, id);
    }
    return *nccl_;
  }
  std::unique_ptr<Nccl> nccl_;
#endif
  std::mutex mutex_;
  std::vector<char> staging_, received_;
};

#endif  // UNET_HAVE_MPI

std::unique_ptr<Comm>& world_slot() {
  static std::unique_ptr<Comm> comm;
  return comm;
}

}  // namespace

bool mpi_built() {
  return UNET_HAVE_MPI != 0;
}

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

bool world_is_distributed() {
  return world_slot() && world_slot()->size() > 1;
}

}  // namespace unet
