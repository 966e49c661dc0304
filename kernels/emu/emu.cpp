// The device emulator's runtime: options, the worker pool that runs blocks, and the per-block scheduler that runs the
// block's threads on fibers (Boost.Context) with block barriers and per-warp rendezvous for warp collectives.
//
// How a block runs. A "runner" fiber calls the kernel body for one thread after another, in schedule order. When a
// thread blocks (at __syncthreads or a warp collective) it switches back to the scheduler and keeps that fiber; the
// scheduler starts a new runner for the threads not yet started. So a block that never blocks costs one fiber, and one
// that does gets a fiber per thread only as its threads reach their first wait. Released threads resume in schedule
// order. When nothing can run and threads are still alive, either every one of them waits at one __syncthreads (the
// barrier releases), or they wait at different ones (divergent barrier), or an asynchronous copy in flight lands (it
// may complete the mbarrier phase someone waits for), or the block is deadlocked.
//
// Asynchronous copies (cp.async.bulk) are held in flight and land at scheduling points, where the schedule says:
// forward lands each at the first point after its issue ("early"), reverse as late as possible ("late": only when
// nothing else can run, newest first), random makes each copy early or late by a coin flip. So a kernel that reads a
// copy's destination without waiting on its mbarrier reads the 0xFF fill (NaN) or stale data under some schedule.
//
// Warpgroup MMA (kernels/cuda/wgmma.cuh): each wgmma instruction is a rendezvous of the 128 threads of a warpgroup;
// wgmma.mma_async queues its operation for the warpgroup, and wgmma.wait_group runs the queued operations of the
// groups it retires, so an MMA reads shared memory and writes the accumulators only then. Descriptors name emulated
// shared addresses, resolved through the block's windows (SharedWindow).
#include "kernels/emu/emu.h"

#include "kernels/emu/device_memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#ifdef UNET_CHECKED
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#include <ucontext.h>
#else
#include <boost/context/fiber.hpp>
#endif
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

namespace unet::emu {

KernelError::KernelError(const std::string& what, uint3 block_idx, uint3 thread_idx)
    : std::runtime_error(what), block(block_idx), thread(thread_idx) {}

namespace detail {
// What a lane deposits for WarpOp::all_gather (warp_all_gather).
struct GatherArgs {
  const void* mine;
  void* all;
  size_t bytes;
};
}  // namespace detail

namespace {

using detail::WarpOp;

std::string to_str(uint3 v) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "(%u,%u,%u)", v.x, v.y, v.z);
  return buf;
}
std::string hex(unsigned v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}
std::string ptr_str(const void* p) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%p", p);
  return buf;
}
std::string site_str(const std::source_location& s) {
  const char* file = std::strrchr(s.file_name(), '/');
  return std::string(file ? file + 1 : s.file_name()) + ":" + std::to_string(s.line());
}
bool same_site(const std::source_location& a, const std::source_location& b) {
  return a.line() == b.line() && a.column() == b.column() &&
         (a.file_name() == b.file_name() || std::strcmp(a.file_name(), b.file_name()) == 0);
}
const char* op_name(WarpOp op) {
  static const char* const names[] = {
      "__shfl_sync",       "__shfl_up_sync",    "__shfl_down_sync",  "__shfl_xor_sync",
      "__ballot_sync",     "__any_sync",        "__all_sync",        "__syncwarp",
      "__reduce_add_sync", "__reduce_min_sync", "__reduce_max_sync", "__reduce_min_sync",
      "__reduce_max_sync", "__reduce_and_sync", "__reduce_or_sync",  "__reduce_xor_sync",
      "warp all-gather (mma / ldmatrix)"};
  return names[static_cast<int>(op)];
}
int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}

// ---- options -------------------------------------------------------------------------------------------------------
std::mutex options_mutex;
std::optional<Schedule> current_schedule;  // read from the environment on first use, so a bad value throws at launch
int worker_count = 0;                      // 0: not chosen yet

#ifdef UNET_CHECKED
struct stack_context {
  size_t size = 0;
  void* sp = nullptr;
};
#else
using boost::context::stack_context;
#endif

// ---- fiber stacks --------------------------------------------------------------------------------------------------
// Stacks are mmap'ed once per worker and reused for every block: a 1024-thread block needs up to 1024 of them. The
// lowest page of each is a guard, so a kernel that overflows its stack faults instead of corrupting its neighbour.
class StackPool {
 public:
  StackPool() {
    page_ = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t kb = static_cast<size_t>(std::max(16, env_int("UNET_EMU_STACK_KB", 256)));
    mapped_ = (kb * 1024 + page_ - 1) / page_ * page_ + page_;
  }
  ~StackPool() {
    for (void* base : all_) munmap(base, mapped_);
  }
  StackPool(const StackPool&) = delete;
  StackPool& operator=(const StackPool&) = delete;

  stack_context allocate() {
    void* base;
    if (!free_.empty()) {
      base = free_.back();
      free_.pop_back();
    } else {
      base = mmap(nullptr, mapped_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1,
                  0);
      if (base == MAP_FAILED) throw std::bad_alloc();
      mprotect(base, page_, PROT_NONE);
      all_.push_back(base);
    }
#ifdef UNET_CHECKED
    // A reused stack still carries the shadow of the frames of the fiber that died on it (its last frame never
    // returns); clear it so uninstrumented code running there is not reported.
    ASAN_UNPOISON_MEMORY_REGION(static_cast<char*>(base) + page_, mapped_ - page_);
#endif
    stack_context sc;
    sc.size = mapped_ - page_;
    sc.sp = static_cast<char*>(base) + mapped_;  // stacks grow down from the top
    return sc;
  }
  void deallocate(stack_context& sc) { free_.push_back(static_cast<char*>(sc.sp) - mapped_); }

 private:
  size_t page_, mapped_;
  std::vector<void*> free_, all_;
};

// The StackAllocator Boost.Context copies into each fiber: a handle to the worker's pool.
struct PooledStack {
  StackPool* pool;
  stack_context allocate() { return pool->allocate(); }
  void deallocate(stack_context& sc) { pool->deallocate(sc); }
};

#ifdef UNET_CHECKED
// ---- ucontext fibers (checked build) -------------------------------------------------------------------------------
// ASan must be told about every stack switch (__sanitizer_start/finish_switch_fiber), and Debian's Boost.Context
// switches with fcontext, which gives it no hook. So the checked build has this stand-in for the part of
// boost::context::fiber the scheduler uses: a fiber is a handle to a suspended context; resume() switches to it and
// returns the context that switched back (empty when the fiber's function returned); destroying a suspended fiber
// unwinds its stack by throwing ForcedUnwind in it. Slower (swapcontext makes a sigprocmask syscall), fine for tests.
struct ForcedUnwind {
  struct Context* to;  // who destroyed the fiber, resumed once the unwinding is done
};

struct Context {
  ucontext_t uc{};
  void* fake_stack = nullptr;  // ASan's fake stack of this context while it is switched out
  const void* bottom = nullptr;
  size_t size = 0;  // stack bounds (for a thread's own stack, learnt from the first switch away)
  stack_context stack{};  // fibers only: where the stack came from
  PooledStack alloc{};
  std::function<struct UcFiber(struct UcFiber&&)> fn;
  bool started = false, finished = false, unwinding = false;
};

struct UcFiber {
  UcFiber() = default;
  explicit UcFiber(Context* c) : ctx_(c) {}
  template <class F>
  UcFiber(std::allocator_arg_t, PooledStack alloc, F&& f) {
    auto* c = new Context;
    c->alloc = alloc;
    c->stack = alloc.allocate();
    c->bottom = static_cast<char*>(c->stack.sp) - c->stack.size;
    c->size = c->stack.size;
    c->fn = std::forward<F>(f);
    getcontext(&c->uc);
    c->uc.uc_stack.ss_sp = const_cast<void*>(c->bottom);
    c->uc.uc_stack.ss_size = c->size;
    c->uc.uc_link = nullptr;  // entry() never returns: it switches away explicitly
    makecontext(&c->uc, entry, 0);
    ctx_ = c;
  }
  UcFiber(UcFiber&& o) noexcept : ctx_(std::exchange(o.ctx_, nullptr)) {}
  UcFiber& operator=(UcFiber&& o) noexcept {
    UcFiber old(std::exchange(ctx_, std::exchange(o.ctx_, nullptr)));  // destroyed (unwound) here, as Boost does
    return *this;
  }
  ~UcFiber() {
    if (!ctx_) return;
    Context* c = std::exchange(ctx_, nullptr);
    if (!c->started) {  // never ran: nothing on its stack to unwind
      release(c);
      return;
    }
    c->unwinding = true;
    switch_to(c);  // comes back once its stack is unwound and it has finished
  }
  explicit operator bool() const { return ctx_ != nullptr; }
  UcFiber resume() && { return switch_to(std::exchange(ctx_, nullptr)); }

 private:
  static inline thread_local Context thread_context;  // the OS thread's own stack (the scheduler's)
  static inline thread_local Context* running = nullptr;
  static inline thread_local Context* came_from = nullptr;  // set just before every switch

  static Context* self() { return running ? running : &thread_context; }
  static void release(Context* c) {
    c->alloc.deallocate(c->stack);
    delete c;
  }
  // Switches from the running context to `to`; returns, once something switches back, the context it came from.
  static UcFiber switch_to(Context* to) {
    Context* me = self();
    came_from = me;
    running = to;
    to->started = true;
    __sanitizer_start_switch_fiber(&me->fake_stack, to->bottom, to->size);
    swapcontext(&me->uc, &to->uc);
    return arrived(me);
  }
  static UcFiber arrived(Context* me) {
    Context* from = came_from;
    __sanitizer_finish_switch_fiber(me->fake_stack, &from->bottom, &from->size);
    running = me;
    if (from->finished) {  // its stack is no longer in use: give it back
      release(from);
      from = nullptr;
    }
    if (me->unwinding) throw ForcedUnwind{from};
    return UcFiber(from);
  }
  [[noreturn]] static void entry() {
    Context* me = running;
    Context* next = nullptr;
    try {
      UcFiber from = arrived(me);
      UcFiber back = me->fn(std::move(from));
      next = std::exchange(back.ctx_, nullptr);  // switched to below, not destroyed
    } catch (const ForcedUnwind& u) {
      next = u.to;
    } catch (...) {
      std::terminate();  // as with Boost: an exception must not leave a fiber's function
    }
    if (!next) std::abort();  // the scheduler's fiber functions always return whom to resume
    me->finished = true;
    came_from = me;
    running = next;
    __sanitizer_start_switch_fiber(nullptr, next->bottom, next->size);  // nullptr: this fiber dies
    setcontext(&next->uc);
    std::abort();
  }

  Context* ctx_ = nullptr;
};
using fiber = UcFiber;
using forced_unwind = ForcedUnwind;
#else
using boost::context::fiber;
using boost::context::detail::forced_unwind;
#endif

// ---- per-block scheduling state ------------------------------------------------------------------------------------
enum class State : uint8_t {
  unstarted,
  ready,
  running,
  at_barrier,
  at_named_barrier,
  at_warp,
  at_warpgroup,
  at_mbarrier,
  done
};

struct ThreadState {
  State state = State::unstarted;
  int pred = 0;               // __syncthreads_count's predicate
  std::source_location site;  // where it waits
  const void* mbar = nullptr;  // at_mbarrier: the mbarrier it waits on
  unsigned parity = 0;         // ... and the parity of the phase it waits for
  int named = 0;               // at_named_barrier: the barrier's id
  bool proxy_fenced = false;   // a fence.proxy.async not yet published by a barrier arrival
  fiber cont;                  // its suspended fiber, while it waits or is ready to resume
};

// An mbarrier object's state (PTX ISA, "mbarrier"): the current phase, the arrivals it still waits for and the
// transaction count (bytes expected minus bytes completed, which may go negative while copies run ahead of expect-tx).
// The phase completes when both pending arrivals and tx-count are zero; the next one starts with `expected` arrivals.
struct Mbarrier {
  const void* addr;
  uint32_t phase;  // phases completed since init; its low bit is the current phase's parity
  int32_t expected, pending, tx;
};
// The PTX ISA's limits: arrival counts in [1, 2^20 - 1], tx-count in [-(2^20 - 1), 2^20 - 1].
constexpr int32_t kMbarrierLimit = (1 << 20) - 1;

// An asynchronous copy in flight: land() writes its destination, then complete-tx(bytes) on bar. An early copy lands
// at the first scheduling point after its issue, a late one only when nothing else can run.
struct AsyncCopy {
  std::function<void()> land;
  const void* bar;
  uint32_t bytes;
  int issuer;
  std::source_location site;
  bool late;
};

// A collective a warp is assembling: open from the first lane's arrival until the last lane named in the mask comes.
struct WarpRound {
  WarpOp op = WarpOp::syncwarp;
  unsigned mask = 0, arrived = 0;
  int first_lane = 0;
  std::source_location site;
};

// A warp's open collectives (disjoint masks: lanes 0-15 and 16-31 may each __syncwarp on their own half) and its
// lanes' operands and results. A lane is in at most one round at a time, so one in/out slot per lane suffices.
struct Warp {
  WarpRound rounds[32];
  int open = 0;
  unsigned exited = 0;  // lanes that have returned
  uint64_t in[32] = {}, out[32] = {};
  int src[32] = {};

  // The open round whose mask shares a lane with `mask`, or null.
  const WarpRound* overlapping(unsigned mask) const {
    for (int i = 0; i < open; ++i)
      if (rounds[i].mask & mask) return &rounds[i];
    return nullptr;
  }
  WarpRound* overlapping(unsigned mask) { return const_cast<WarpRound*>(std::as_const(*this).overlapping(mask)); }
  void close(WarpRound* r) { *r = rounds[--open]; }
};

// A warpgroup (4 consecutive warps): the collective it is assembling (open while 0 < arrived < 128) and its wgmma
// operations (kernels/cuda/wgmma.cuh): issued but not committed, and committed groups not yet retired, oldest first.
struct Warpgroup {
  const char* op = nullptr;
  std::source_location site;
  int arrived = 0, exited = 0, first = 0;  // first: the thread that opened the collective
  const void* mine[128] = {};
  bool fenced = false;  // a wgmma.fence has been executed
  std::vector<std::function<void()>> uncommitted;
  std::vector<std::vector<std::function<void()>>> groups;

  bool busy() const { return !uncommitted.empty() || !groups.empty(); }
};

// A named barrier (bar.sync id, count): the count its arrivals name and how many have arrived in the current round.
struct NamedBarrier {
  int count = 0, arrived = 0;
  std::source_location site;
};
constexpr int kNamedBarriers = 16;

// A window of host memory mapped into the emulated shared address space of wgmma's descriptors: emulated addresses
// [address, address + size) are host addresses [host, host + size); only [valid_lo, valid_hi) of it may be read.
struct SharedWindow {
  uintptr_t host;
  uint32_t address, size;
  uintptr_t valid_lo, valid_hi;
};
constexpr uint32_t kSharedSpace = 1u << 18;    // what the descriptor's 14-bit start address (16-byte units) covers
constexpr uint32_t kStaticWindow = 49 * 1024;  // a static __shared__ variable (<= 48 KiB) from any start in a line

struct Worker;
thread_local Worker* active_worker = nullptr;  // the worker whose block is running on this OS thread

struct Worker {
  StackPool stacks;
  detail::BoundKernel kernel{};
  Schedule schedule;
  int n = 0;  // threads per block
  std::vector<detail::Thread> threads;
  std::vector<ThreadState> ts;
  std::vector<Warp> warps;
  std::vector<int> order;  // start order of the block's threads
  size_t next_unstarted = 0;
  std::vector<int> ready, scratch;  // scratch: threads being released
  size_t ready_head = 0;
  int live = 0, running = -1;
  int barrier_count = 0, barrier_live = 0;  // results of the last released __syncthreads_count
  uint64_t rng = 0;
  std::exception_ptr error;
  fiber scheduler;  // where a blocking thread switches to
  std::vector<unsigned char> smem;
  std::vector<Mbarrier> mbarriers;   // the block's initialised mbarriers
  std::vector<AsyncCopy> in_flight;  // its asynchronous copies not landed yet, in issue order
  std::vector<Warpgroup> warpgroups;
  std::vector<SharedWindow> windows;  // the emulated shared address space (wgmma descriptors)
  uint32_t windows_end = 0;           // its first unmapped address
  NamedBarrier named[kNamedBarriers];
  // The async proxy's view of the dynamic shared memory, per 16-byte chunk (docs/emulator.md, "Proxies"): its bytes
  // as the async proxy last saw them, whether it has seen them, and `published` then (the count of fence.proxy.async
  // that have taken effect in the block).
  std::vector<unsigned char> async_view;
  std::vector<uint8_t> view_known;
  std::vector<uint32_t> view_epoch;
  uint32_t published = 0;

  void prepare(dim3 grid, dim3 block, size_t smem_bytes, detail::BoundKernel k, Schedule s) {
    kernel = k;
    schedule = s;
    n = static_cast<int>(block.x * block.y * block.z);
    threads.resize(n);
    ts.clear();
    ts.resize(n);
    warps.resize((n + 31) / 32);
    warpgroups.clear();
    warpgroups.resize((n + 127) / 128);
    for (int i = 0; i < n; ++i) {
      detail::Thread& t = threads[i];
      const unsigned u = static_cast<unsigned>(i);
      t.thread_idx = uint3{u % block.x, u / block.x % block.y, u / (block.x * block.y)};
      t.block_dim = block;
      t.grid_dim = grid;
      t.linear = i;
      t.lane = i % 32;
    }
#ifdef UNET_CHECKED
    // A fresh heap block of exactly smem_bytes, so ASan's redzone starts at the first byte past the launch's size
    // (a vector that only resizes keeps a larger capacity from an earlier launch).
    smem = std::vector<unsigned char>(smem_bytes);
#else
    smem.resize(smem_bytes);
#endif
    async_view.resize(smem_bytes);
    view_known.resize((smem_bytes + 15) / 16);
    view_epoch.resize((smem_bytes + 15) / 16);
  }

  unsigned warp_exists(int w) const {
    const int lanes = std::min(32, n - 32 * w);
    return lanes == 32 ? ~0u : (1u << lanes) - 1;
  }

  uint64_t next_random() {  // splitmix64: a fixed algorithm, so a seed means the same interleaving everywhere
    uint64_t z = (rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Puts the threads about to run (started, released or resumed together) into the schedule's order.
  void arrange(std::vector<int>& ids) {
    switch (schedule.kind) {  // ids come in ascending order
      case Schedule::forward:
        break;
      case Schedule::reverse:
        std::reverse(ids.begin(), ids.end());
        break;
      case Schedule::random:
        for (size_t i = ids.size(); i > 1; --i) std::swap(ids[i - 1], ids[next_random() % i]);
        break;
    }
  }
  void make_ready(std::vector<int>& ids) {
    arrange(ids);
    for (int t : ids) {
      ts[t].state = State::ready;
      ready.push_back(t);
    }
  }

  KernelError error_at(int t, const std::string& what) const {
    const detail::Thread& th = threads[t];
    return KernelError(
        "kernel error in block " + to_str(th.block_idx) + ", thread " + to_str(th.thread_idx) + ": " + what,
        th.block_idx, th.thread_idx);
  }

  // ---- running threads (on fibers) ----
  fiber run_threads(fiber&& from_scheduler) {
    scheduler = std::move(from_scheduler);
    while (!error && next_unstarted < order.size()) {
      const int t = order[next_unstarted++];
      running = t;
      detail::current = &threads[t];
      ts[t].state = State::running;
      try {
        kernel.invoke(kernel.args);
      } catch (const forced_unwind&) {
        throw;  // the block is being torn down: let Boost.Context unwind this fiber
      } catch (const KernelError&) {
        error = std::current_exception();
        break;
      } catch (const std::exception& e) {
        error = std::make_exception_ptr(error_at(t, std::string("kernel code threw: ") + e.what()));
        break;
      } catch (...) {
        error = std::make_exception_ptr(error_at(t, "kernel code threw a non-standard exception"));
        break;
      }
      thread_exit(t);
    }
    return std::move(scheduler);
  }

  void thread_exit(int t) {
    ts[t].state = State::done;
    --live;
    const int w = t / 32, lane = t % 32;
    warps[w].exited |= 1u << lane;
    const WarpRound* r = warps[w].overlapping(1u << lane);
    if (r && !(r->arrived >> lane & 1))
      error = std::make_exception_ptr(error_at(t, "thread exited while lanes " + hex(r->arrived) +
                                                      " of its warp wait for it at " + op_name(r->op) + " " +
                                                      site_str(r->site) + " (mask " + hex(r->mask) + ")"));
    Warpgroup& g = warpgroups[t / 128];
    ++g.exited;
    if (error) return;
    if (g.arrived > 0)
      error = std::make_exception_ptr(error_at(t, "thread exited while " + std::to_string(g.arrived) +
                                                      " threads of its warpgroup wait for it at " + g.op + " " +
                                                      site_str(g.site)));
    else if (g.busy())
      error = std::make_exception_ptr(
          error_at(t, "thread exited while its warpgroup has wgmma operations in flight (" +
                          std::to_string(g.uncommitted.size()) + " not committed, " + std::to_string(g.groups.size()) +
                          " committed groups not waited for): a wgmma.wait_group 0 is missing"));
  }

  // Called on a thread's fiber: wait until the scheduler resumes this thread.
  void suspend(State s) {
    ts[running].state = s;
    scheduler = std::move(scheduler).resume();
  }

  // ---- the scheduler (on the worker's own stack) ----
  void switch_to(fiber&& f) {
    fiber back = std::move(f).resume();
    if (back) ts[running].cont = std::move(back);  // the thread that blocked keeps its fiber
  }

  void run_block(uint64_t block_linear, dim3 grid) {
    const uint3 b{static_cast<unsigned>(block_linear % grid.x), static_cast<unsigned>(block_linear / grid.x % grid.y),
                  static_cast<unsigned>(block_linear / (uint64_t{grid.x} * grid.y))};
    for (int i = 0; i < n; ++i) {
      threads[i].block_idx = b;
      ts[i].state = State::unstarted;
      ts[i].proxy_fenced = false;
    }
    for (Warp& w : warps) w.open = 0, w.exited = 0;
    rng = schedule.seed ^ (block_linear * 0xd1b54a32d192ed03ull);
    order.resize(n);
    for (int i = 0; i < n; ++i) order[i] = i;
    arrange(order);
    next_unstarted = 0;
    ready.clear();
    ready_head = 0;
    live = n;
    error = nullptr;
    mbarriers.clear();
    in_flight.clear();
    for (Warpgroup& g : warpgroups) g = Warpgroup{};
    windows.clear();
    windows_end = 0;
    for (NamedBarrier& b : named) b = NamedBarrier{};
    std::fill(view_known.begin(), view_known.end(), 0);
    published = 0;
    if (!smem.empty()) {
      std::memset(smem.data(), 0xff, smem.size());  // NaN bytes: reads before writes show up
      map_window(reinterpret_cast<uintptr_t>(smem.data()), smem.size());
    }

    active_worker = this;
    while (!error) {
      land_at_scheduling_point();
      if (error) break;
      if (ready_head == ready.size()) ready.clear(), ready_head = 0;  // keep the queue short across many releases
      if (ready_head < ready.size()) {
        const int t = ready[ready_head++];
        running = t;
        detail::current = &threads[t];
        ts[t].state = State::running;
        switch_to(std::move(ts[t].cont));
      } else if (next_unstarted < order.size()) {
        switch_to(fiber(std::allocator_arg, PooledStack{&stacks},
                        [this](fiber&& from) { return run_threads(std::move(from)); }));
      } else if (live == 0) {
        if (!in_flight.empty()) copies_outlive_block();
        break;
      } else {
        stuck();
      }
    }
    if (error) {
      for (ThreadState& s : ts) s.cont = fiber();  // unwinds every suspended thread's stack
    }
    active_worker = nullptr;
    detail::current = nullptr;
    if (error) std::rethrow_exception(error);
  }

  // Nothing can run: release the barrier every live thread waits at, else land a (late) copy in flight (reverse: the
  // newest, random: any), else report a deadlock.
  void stuck() {
    bool all_at_barrier = true;
    for (int i = 0; i < n; ++i) all_at_barrier &= ts[i].state == State::done || ts[i].state == State::at_barrier;
    if (all_at_barrier) return release_barrier();
    if (in_flight.empty()) return deadlock();
    const size_t k = in_flight.size();
    land(schedule.kind == Schedule::reverse ? k - 1 : schedule.kind == Schedule::random ? next_random() % k : 0);
  }

  // Every live thread waits at a __syncthreads: release it, or report that they wait at different ones.
  void release_barrier() {
    int first = -1, count = 0, alive = 0;
    for (int i = 0; i < n; ++i) {
      if (ts[i].state == State::done) continue;
      ++alive;
      if (first < 0) {
        first = i;
      } else if (!same_site(ts[i].site, ts[first].site)) {
        error = std::make_exception_ptr(
            error_at(first, "divergent __syncthreads: thread " + to_str(threads[first].thread_idx) + " waits at " +
                                site_str(ts[first].site) + " but thread " + to_str(threads[i].thread_idx) +
                                " waits at " + site_str(ts[i].site)));
        return;
      }
      count += ts[i].pred;
    }
    barrier_count = count;
    barrier_live = alive;
    scratch.clear();
    for (int i = 0; i < n; ++i)
      if (ts[i].state == State::at_barrier) scratch.push_back(i);
    make_ready(scratch);
  }

  std::string describe(int t) const {
    switch (ts[t].state) {
      case State::done:
        return "exited";
      case State::at_barrier:
        return "waiting at __syncthreads " + site_str(ts[t].site);
      case State::at_named_barrier: {
        const NamedBarrier& b = named[ts[t].named];
        return "waiting at bar.sync " + std::to_string(ts[t].named) + " " + site_str(ts[t].site) + " (" +
               std::to_string(b.arrived) + " of " + std::to_string(b.count) + " threads arrived)";
      }
      case State::at_mbarrier: {
        std::string d = "waiting at mbarrier.try_wait.parity " + site_str(ts[t].site) + " for the phase of parity " +
                        std::to_string(ts[t].parity) + " of the mbarrier at " + ptr_str(ts[t].mbar);
        if (const Mbarrier* m = find_mbarrier(ts[t].mbar))
          d += " (phase " + std::to_string(m->phase) + ": " + std::to_string(m->pending) + " of " +
               std::to_string(m->expected) + " arrivals pending, tx-count " + std::to_string(m->tx) + ")";
        return d;
      }
      case State::at_warpgroup: {
        const Warpgroup& g = warpgroups[t / 128];
        return std::string("waiting at ") + g.op + " " + site_str(ts[t].site) + " (" + std::to_string(g.arrived) +
               " of the 128 threads of warpgroup " + std::to_string(t / 128) + " arrived)";
      }
      case State::at_warp: {
        const WarpRound* r = warps[t / 32].overlapping(1u << (t % 32));
        return std::string("waiting at ") + op_name(r->op) + " " + site_str(ts[t].site) + " (mask " + hex(r->mask) +
               ", arrived " + hex(r->arrived) + ")";
      }
      default:
        return "runnable";  // cannot happen when deadlocked; kept for completeness
    }
  }

  // Every thread's state, runs of consecutive threads in the same state on one line.
  void deadlock() {
    std::string msg = "deadlock: no thread can run and not all have exited;";
    for (int i = 0; i < n;) {
      const std::string d = describe(i);
      int j = i + 1;
      while (j < n && describe(j) == d) ++j;
      msg += "\n  thread " + to_str(threads[i].thread_idx);
      if (j - i > 1) msg += " to " + to_str(threads[j - 1].thread_idx);
      msg += ": " + d;
      i = j;
    }
    int first = 0;
    while (ts[first].state == State::done) ++first;
    error = std::make_exception_ptr(error_at(first, msg));
  }

  // ---- named barriers and the async proxy's view ----
  // A barrier arrival: this thread's pending fence.proxy.async takes effect.
  void publish_fence() {
    if (!ts[running].proxy_fenced) return;
    ts[running].proxy_fenced = false;
    ++published;
  }

  void named_barrier(int id, int count, const std::source_location& site) {
    if (id < 0 || id >= kNamedBarriers)
      detail::fail("bar.sync at " + site_str(site) + ": barrier id " + std::to_string(id) + " is not in 0..15");
    if (count <= 0 || count % 32 != 0 || count > 32 * static_cast<int>(warps.size()))
      detail::fail("bar.sync at " + site_str(site) + ": thread count " + std::to_string(count) +
                   " is not a positive multiple of 32 within the block");
    publish_fence();
    NamedBarrier& b = named[id];
    if (b.arrived == 0) {
      b.count = count;
      b.site = site;
    } else if (b.count != count) {
      detail::fail("bar.sync " + std::to_string(id) + " at " + site_str(site) + " names " + std::to_string(count) +
                   " threads but earlier arrivals (at " + site_str(b.site) + ") named " + std::to_string(b.count));
    }
    if (++b.arrived < count) {
      ts[running].named = id;
      ts[running].site = site;
      suspend(State::at_named_barrier);
      return;
    }
    b.arrived = 0;
    scratch.clear();
    for (int i = 0; i < n; ++i)
      if (ts[i].state == State::at_named_barrier && ts[i].named == id) scratch.push_back(i);
    make_ready(scratch);
  }

  // The chunks of dynamic shared memory that [p, p + bytes) touches, or an empty range outside it.
  std::pair<size_t, size_t> view_chunks(const void* p, size_t bytes) const {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p), base = reinterpret_cast<uintptr_t>(smem.data());
    if (smem.empty() || a < base || a + bytes > base + smem.size()) return {0, 0};
    return {(a - base) / 16, (a - base + bytes + 15) / 16};
  }
  void view_take(size_t c) {  // the async proxy sees chunk c as it is now
    const size_t lo = 16 * c, len = std::min<size_t>(16, smem.size() - lo);
    std::memcpy(async_view.data() + lo, smem.data() + lo, len);
    view_known[c] = 1;
    view_epoch[c] = published;
  }
  void async_proxy_wrote(const void* p, size_t bytes) {
    const auto [lo, hi] = view_chunks(p, bytes);
    for (size_t c = lo; c < hi; ++c) view_take(c);
  }
  void async_proxy_read(const void* p, size_t bytes, const char* op) {
    const auto [lo, hi] = view_chunks(p, bytes);
    for (size_t c = lo; c < hi; ++c) {
      const size_t at = 16 * c, len = std::min<size_t>(16, smem.size() - at);
      if (view_known[c] && std::memcmp(async_view.data() + at, smem.data() + at, len) != 0 &&
          view_epoch[c] == published)
        detail::fail(std::string(op) + " reads dynamic shared memory at offset " + std::to_string(at) +
                     " that ordinary stores changed after the async proxy last saw it, with no fence.proxy.async "
                     "taking effect since (a fence, then a barrier that orders it before this operation)");
      if (!view_known[c] || view_epoch[c] != published) view_take(c);
    }
  }

  // ---- mbarriers and asynchronous copies ----
  const Mbarrier* find_mbarrier(const void* bar) const {
    for (const Mbarrier& m : mbarriers)
      if (m.addr == bar) return &m;
    return nullptr;
  }
  Mbarrier& mbarrier(const void* bar, const char* op) {
    if (const Mbarrier* m = find_mbarrier(bar)) return const_cast<Mbarrier&>(*m);
    detail::fail(std::string(op) + ": the mbarrier at " + ptr_str(bar) + " was not initialised by this block");
  }

  void mbarrier_init(const void* bar, unsigned count) {
    if (reinterpret_cast<uintptr_t>(bar) % 8 != 0)
      detail::fail("mbarrier.init: address " + ptr_str(bar) + " is not 8-byte aligned");
    if (count < 1 || count > static_cast<unsigned>(kMbarrierLimit))
      detail::fail("mbarrier.init: count " + std::to_string(count) + " is not in [1, 2^20 - 1]");
    const Mbarrier fresh{bar, 0, static_cast<int32_t>(count), static_cast<int32_t>(count), 0};
    if (const Mbarrier* m = find_mbarrier(bar))
      const_cast<Mbarrier&>(*m) = fresh;
    else
      mbarriers.push_back(fresh);
  }

  // tx-count += tx, then `arrivals` arrive-on operations; completes the phase when both counts are zero.
  void mbarrier_update(Mbarrier& m, int32_t arrivals, int64_t tx, const char* op) {
    const int64_t count = m.tx + tx;
    if (count > kMbarrierLimit || count < -kMbarrierLimit)
      detail::fail(std::string(op) + ": the tx-count of the mbarrier at " + ptr_str(m.addr) + " would become " +
                   std::to_string(count) + ", outside [-(2^20 - 1), 2^20 - 1]");
    if (arrivals > m.pending)
      detail::fail(std::string(op) + ": " + std::to_string(arrivals) + " arrival(s) on the mbarrier at " +
                   ptr_str(m.addr) + " whose phase " + std::to_string(m.phase) + " waits for " +
                   std::to_string(m.pending) + " (more arrivals than its count)");
    m.tx = static_cast<int32_t>(count);
    m.pending -= arrivals;
    if (m.pending != 0 || m.tx != 0) return;
    ++m.phase;
    m.pending = m.expected;
    scratch.clear();  // wake its waiters; each checks the parity again when it runs
    for (int i = 0; i < n; ++i)
      if (ts[i].state == State::at_mbarrier && ts[i].mbar == m.addr) scratch.push_back(i);
    make_ready(scratch);
  }

  bool mbarrier_try_wait(const void* bar, unsigned parity, const std::source_location& site) {
    for (;;) {
      if ((mbarrier(bar, "mbarrier.try_wait.parity").phase & 1) != (parity & 1)) return true;
      ts[running].mbar = bar;
      ts[running].parity = parity & 1;
      ts[running].site = site;
      suspend(State::at_mbarrier);
    }
  }

  // At every scheduling point: every early copy in flight lands.
  void land_at_scheduling_point() {
    for (size_t i = 0; i < in_flight.size() && !error;)
      if (!in_flight[i].late)
        land(i);
      else
        ++i;
  }

  // Runs on the scheduler's stack; errors are reported as the issuing thread's.
  void land(size_t i) {
    AsyncCopy copy = std::move(in_flight[i]);
    in_flight.erase(in_flight.begin() + static_cast<std::ptrdiff_t>(i));
    running = copy.issuer;
    detail::current = &threads[copy.issuer];
    try {
      copy.land();
      mbarrier_update(mbarrier(copy.bar, "asynchronous copy (complete-tx)"), 0, -int64_t{copy.bytes},
                      "asynchronous copy (complete-tx)");
    } catch (const KernelError&) {
      error = std::current_exception();
    } catch (const std::exception& e) {
      error = std::make_exception_ptr(
          error_at(copy.issuer, "asynchronous copy issued at " + site_str(copy.site) + " failed: " + e.what()));
    }
  }

  void copies_outlive_block() {
    const AsyncCopy& c = in_flight.front();
    error = std::make_exception_ptr(
        error_at(c.issuer, "every thread has exited with " + std::to_string(in_flight.size()) +
                               " asynchronous copies still in flight (the first issued at " + site_str(c.site) +
                               "): nothing waited for them on their mbarrier"));
  }

  // ---- warpgroup collectives and wgmma (on the calling thread's fiber) ----
  void warpgroup_collective(const char* op, const void* mine, const std::function<void(const void* const*)>& complete,
                            const std::source_location& site) {
    const int t = running, wg = t / 128;
    if (128 * (wg + 1) > n)
      detail::fail(std::string(op) + " at " + site_str(site) + ": warpgroup " + std::to_string(wg) + " has only " +
                   std::to_string(n - 128 * wg) + " threads; a warpgroup is 4 full warps (128 threads)");
    Warpgroup& g = warpgroups[wg];
    if (g.exited > 0)
      detail::fail(std::string(op) + " at " + site_str(site) + ": " + std::to_string(g.exited) +
                   " threads of warpgroup " + std::to_string(wg) + " have already exited");
    if (g.arrived == 0) {
      g.op = op;
      g.site = site;
      g.first = t;
    } else if (std::strcmp(g.op, op) != 0 || !same_site(g.site, site)) {
      detail::fail(std::string(op) + " at " + site_str(site) + " meets thread " + to_str(threads[g.first].thread_idx) +
                   " of its warpgroup at " + g.op + " " + site_str(g.site) +
                   ": every thread of a warpgroup must execute the same .aligned instruction");
    }
    g.mine[t % 128] = mine;
    ts[t].site = site;
    if (++g.arrived < 128) {
      suspend(State::at_warpgroup);
      return;  // the last thread ran complete
    }
    complete(g.mine);
    g.arrived = 0;
    scratch.clear();
    for (int i = 128 * wg; i < 128 * (wg + 1); ++i)
      if (i != t) scratch.push_back(i);
    make_ready(scratch);
  }

  Warpgroup& my_warpgroup() {
    return warpgroups[running / 128];
  }

  void wgmma_issue(std::function<void()> op) {
    Warpgroup& g = my_warpgroup();
    if (!g.fenced)
      detail::fail(
          "wgmma.mma_async before the warpgroup's first wgmma.fence (the PTX ISA requires one before the "
          "first wgmma.mma_async and between register accesses and the wgmma.mma_async that uses them)");
    g.uncommitted.push_back(std::move(op));
  }

  void wgmma_commit() {
    Warpgroup& g = my_warpgroup();
    g.groups.push_back(std::move(g.uncommitted));
    g.uncommitted.clear();
  }

  // Runs the operations of the oldest groups until at most `pending` remain; a group leaves the queue only after
  // its operations ran.
  void wgmma_wait(int pending) {
    Warpgroup& g = my_warpgroup();
    while (g.groups.size() > static_cast<size_t>(pending)) {
      for (std::function<void()>& op : g.groups.front()) op();
      g.groups.erase(g.groups.begin());
    }
  }

  // ---- the emulated shared address space (wgmma descriptors) ----
  // Maps [p, p + bytes) into a new window at the end of the space; for a static variable (bytes = 0) the window
  // takes up to kStaticWindow, all of it readable.
  const SharedWindow& map_window(uintptr_t p, size_t bytes) {
    const uintptr_t host = p & ~uintptr_t{1023};
    const uint32_t left = kSharedSpace - windows_end;
    uint32_t size = std::min(kStaticWindow, left);
    if (bytes > 0) size = static_cast<uint32_t>((p - host + bytes + 1023) & ~size_t{1023});
    if (size < 1024 || size > left)
      detail::fail(
          "the emulated shared address space of wgmma descriptors (256 KiB) is full: no window left for "
          "the shared memory at " +
          ptr_str(reinterpret_cast<void*>(p)));
    const uintptr_t valid_lo = bytes > 0 ? p : host, valid_hi = bytes > 0 ? p + bytes : host + size;
    windows.push_back(SharedWindow{host, windows_end, size, valid_lo, valid_hi});
    windows_end += size;
    return windows.back();
  }

  uint32_t shared_window_address(const void* ptr) {
    const uintptr_t p = reinterpret_cast<uintptr_t>(ptr);
    for (const SharedWindow& w : windows)
      if (p >= w.valid_lo && p < w.valid_hi) return w.address + static_cast<uint32_t>(p - w.host);
    const SharedWindow& w = map_window(p, 0);
    return w.address + static_cast<uint32_t>(p - w.host);
  }

  void* shared_window_pointer(uint32_t address, uint32_t bytes) {
    for (const SharedWindow& w : windows) {
      if (address < w.address || address >= w.address + w.size) continue;
      const uintptr_t p = w.host + (address - w.address);
      if (p < w.valid_lo || p + bytes > w.valid_hi)
        detail::fail("shared address " + std::to_string(address) + " (" + std::to_string(bytes) +
                     " bytes) lies outside the shared memory mapped there (a wgmma descriptor's start address or "
                     "byte offsets reach past its buffer)");
      return reinterpret_cast<void*>(p);
    }
    detail::fail("shared address " + std::to_string(address) +
                 " is not mapped: a wgmma descriptor must come from make_wgmma_desc in this block (and stay within "
                 "its buffer)");
  }

  // ---- warp collectives (on the calling thread's fiber) ----
  uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t value, int src, const std::source_location& site) {
    const int t = running, w = t / 32, lane = t % 32;
    auto where = [&] { return std::string(op_name(op)) + " at " + site_str(site); };  // built for errors only
    if (!(mask >> lane & 1))
      detail::fail(where() + ": the calling lane " + std::to_string(lane) + " is not in its mask " + hex(mask));
    // Lanes beyond the end of a partial last warp do not exist; they are dropped from the mask.
    const unsigned m = mask & warp_exists(w);
    Warp& W = warps[w];
    WarpRound* r = W.overlapping(m);
    if (!r) {
      if (const unsigned gone = m & W.exited)
        detail::fail(where() + ": lanes " + hex(gone) + " named in the mask " + hex(mask) + " have already exited");
      r = &W.rounds[W.open++];
      *r = WarpRound{op, m, 0, lane, site};
    } else if (r->op != op || r->mask != m) {
      detail::fail(where() + " (mask " + hex(mask) + ") meets lane " + std::to_string(r->first_lane) + " at " +
                   op_name(r->op) + " " + site_str(r->site) + " (mask " + hex(r->mask) + ")");
    }
    r->arrived |= 1u << lane;
    W.in[lane] = value;
    W.src[lane] = src;
    ts[t].site = site;
    if (r->arrived != r->mask) {
      suspend(State::at_warp);
      return W.out[lane];  // the round's last lane wrote it; no later round can finish without this lane
    }
    complete(W, *r);
    scratch.clear();
    for (int l = 0; l < 32; ++l)
      if ((r->mask >> l & 1) && l != lane) scratch.push_back(w * 32 + l);
    W.close(r);
    make_ready(scratch);
    return W.out[lane];
  }

  static void complete(Warp& W, const WarpRound& r) {
    const unsigned m = r.mask;
    auto each = [m](auto f) {
      for (int l = 0; l < 32; ++l)
        if (m >> l & 1) f(l);
    };
    uint32_t acc = 0;
    switch (r.op) {
      case WarpOp::all_gather: {  // in[l] is lane l's GatherArgs*: copy every lane's offer into every lane's table
        auto args = [&W](int l) { return reinterpret_cast<const detail::GatherArgs*>(W.in[l]); };
        const size_t bytes = args(std::countr_zero(m))->bytes;
        each([&](int l) {
          if (args(l)->bytes != bytes)
            detail::fail("warp all-gather: lane " + std::to_string(l) + " offers " + std::to_string(args(l)->bytes) +
                         " bytes, lane " + std::to_string(std::countr_zero(m)) + " " + std::to_string(bytes));
        });
        each([&](int l) {
          each([&](int s) { std::memcpy(static_cast<char*>(args(l)->all) + s * bytes, args(s)->mine, bytes); });
        });
        each([&](int l) { W.out[l] = 0; });
        return;
      }
      case WarpOp::shfl:
      case WarpOp::shfl_up:
      case WarpOp::shfl_down:
      case WarpOp::shfl_xor:
        each([&](int l) {
          const int s = W.src[l];
          W.out[l] = (s >= 0 && s < 32 && (m >> s & 1)) ? W.in[s] : W.in[l];
        });
        return;
      case WarpOp::syncwarp:
        return;
      case WarpOp::ballot:
      case WarpOp::any:
      case WarpOp::all:
        each([&](int l) { acc |= (W.in[l] != 0 ? 1u : 0u) << l; });
        if (r.op == WarpOp::any) acc = acc != 0;
        if (r.op == WarpOp::all) acc = acc == m;
        break;
      case WarpOp::reduce_add:
        each([&](int l) { acc += static_cast<uint32_t>(W.in[l]); });
        break;
      case WarpOp::reduce_and:
        acc = ~0u;
        each([&](int l) { acc &= static_cast<uint32_t>(W.in[l]); });
        break;
      case WarpOp::reduce_or:
        each([&](int l) { acc |= static_cast<uint32_t>(W.in[l]); });
        break;
      case WarpOp::reduce_xor:
        each([&](int l) { acc ^= static_cast<uint32_t>(W.in[l]); });
        break;
      case WarpOp::reduce_min_u:
      case WarpOp::reduce_max_u: {
        acc = r.op == WarpOp::reduce_min_u ? ~0u : 0u;
        each([&](int l) {
          const uint32_t v = static_cast<uint32_t>(W.in[l]);
          acc = r.op == WarpOp::reduce_min_u ? std::min(acc, v) : std::max(acc, v);
        });
        break;
      }
      case WarpOp::reduce_min_i:
      case WarpOp::reduce_max_i: {
        int32_t a = r.op == WarpOp::reduce_min_i ? INT32_MAX : INT32_MIN;
        each([&](int l) {
          const int32_t v = static_cast<int32_t>(static_cast<uint32_t>(W.in[l]));
          a = r.op == WarpOp::reduce_min_i ? std::min(a, v) : std::max(a, v);
        });
        acc = static_cast<uint32_t>(a);
        break;
      }
    }
    each([&](int l) { W.out[l] = acc; });
  }
};

Worker& this_worker() {
  static thread_local Worker w;
  return w;
}

// ---- worker pool ---------------------------------------------------------------------------------------------------
// Persistent threads, so that a test launching thousands of small kernels does not create thousands of threads.
class Pool {
 public:
  ~Pool() {
    {
      std::lock_guard lock(m_);
      stop_ = true;
    }
    wake_.notify_all();
    for (std::thread& t : threads_) t.join();
  }
  // Runs job on the calling thread and on helpers - 1 pool threads; returns when all have finished.
  void run(int helpers, const std::function<void()>& job) {
    std::unique_lock lock(m_);
    while (static_cast<int>(threads_.size()) < helpers - 1) {
      const int index = static_cast<int>(threads_.size());
      threads_.emplace_back([this, index] { loop(index); });
    }
    job_ = &job;
    wanted_ = helpers - 1;
    pending_ = helpers - 1;
    ++generation_;
    lock.unlock();
    wake_.notify_all();
    job();
    lock.lock();
    done_.wait(lock, [this] { return pending_ == 0; });
    job_ = nullptr;
  }

 private:
  void loop(int index) {
    uint64_t seen = 0;
    std::unique_lock lock(m_);
    for (;;) {
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      if (index >= wanted_) continue;
      const std::function<void()>* job = job_;
      lock.unlock();
      (*job)();
      lock.lock();
      if (--pending_ == 0) done_.notify_all();
    }
  }
  std::mutex m_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> threads_;
  const std::function<void()>* job_ = nullptr;
  int wanted_ = 0, pending_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

Pool& pool() {
  static Pool p;
  return p;
}

std::mutex launch_mutex;  // one kernel at a time, like a single device stream

#ifdef UNET_CHECKED
// When a sanitizer reports an error and is about to kill the process, name the emulated thread that caused it: the
// report's stack only shows the kernel function, not which block and thread ran it. (ASan reports only: GCC links
// UBSan as a separate runtime with its own death callbacks; its reports name the source line.)
void on_sanitizer_death() {
  if (const detail::Thread* t = detail::current)
    std::fprintf(stderr, "unet emulator: the error above happened in kernel code, block %s thread %s\n",
                 to_str(t->block_idx).c_str(), to_str(t->thread_idx).c_str());
}
[[maybe_unused]] const bool death_callback_set = (__sanitizer_set_death_callback(on_sanitizer_death), true);
#endif

}  // namespace

// ---- options -------------------------------------------------------------------------------------------------------
Schedule Schedule::parse(const std::string& text) {
  if (text == "forward") return {forward, 0};
  if (text == "reverse") return {reverse, 0};
  if (text == "random") return {random, 1};
  if (text.rfind("random:", 0) == 0 && text.size() > 7) {
    char* end = nullptr;
    const unsigned long long seed = std::strtoull(text.c_str() + 7, &end, 10);
    if (*end == '\0') return {random, seed};
  }
  throw std::invalid_argument("emulator schedule '" + text + "' is not forward, reverse, random or random:SEED");
}

Schedule Schedule::from_env() {
  const char* v = std::getenv("UNET_EMU_SCHEDULE");
  return v && *v ? parse(v) : Schedule{};
}

std::string Schedule::str() const {
  switch (kind) {
    case forward:
      return "forward";
    case reverse:
      return "reverse";
    case random:
      return "random:" + std::to_string(seed);
  }
  return "?";
}

void set_schedule(Schedule s) {
  std::lock_guard lock(options_mutex);
  current_schedule = s;
}

Schedule schedule() {
  std::lock_guard lock(options_mutex);
  if (!current_schedule) current_schedule = Schedule::from_env();
  return *current_schedule;
}

void set_workers(int n) {
  if (n < 1) throw std::invalid_argument("emulator workers must be at least 1");
  std::lock_guard lock(options_mutex);
  worker_count = n;
}

int workers() {
  std::lock_guard lock(options_mutex);
  if (worker_count == 0)
    worker_count =
        std::max(1, env_int("UNET_EMU_WORKERS", std::min(8, static_cast<int>(std::thread::hardware_concurrency()))));
  return worker_count;
}

// ---- kernel-facing entry points ------------------------------------------------------------------------------------
namespace detail {

void launch(dim3 grid, dim3 block, size_t smem_bytes, BoundKernel kernel) {
  if (current) throw std::logic_error("a kernel launched a kernel: dynamic parallelism is not emulated");
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  const uint64_t blocks = uint64_t{grid.x} * grid.y * grid.z;
  // The limits of every GPU since sm_30 (and 227 KiB of shared memory per block, sm_90's largest opt-in).
  if (threads == 0 || threads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64 || blocks == 0 ||
      grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535)
    throw std::invalid_argument("invalid launch configuration: grid " + to_str(uint3{grid.x, grid.y, grid.z}) +
                                ", block " + to_str(uint3{block.x, block.y, block.z}));
  if (smem_bytes > 227 * 1024)
    throw std::invalid_argument("launch asks for " + std::to_string(smem_bytes) +
                                " bytes of dynamic shared memory; a block can have at most 227 KiB");

  const Schedule sched = schedule();
#ifdef UNET_CHECKED
  const int helpers = 1;  // __shared__ is a plain static there: one block in flight at a time
#else
  const int helpers = static_cast<int>(std::min<uint64_t>(workers(), blocks));
#endif
  std::lock_guard lock(launch_mutex);
  const DeviceAccess access;  // device memory is readable by kernels only (device_memory.h)
  std::atomic<uint64_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex error_mutex;
  std::exception_ptr error;
  uint64_t error_block = UINT64_MAX;
  pool().run(helpers, [&] {
    Worker& w = this_worker();
    try {
      w.prepare(grid, block, smem_bytes, kernel, sched);
    } catch (...) {
      std::lock_guard elock(error_mutex);
      if (!error) error = std::current_exception();
      failed = true;
      return;
    }
    while (!failed.load(std::memory_order_relaxed)) {
      const uint64_t b = next.fetch_add(1, std::memory_order_relaxed);
      if (b >= blocks) break;
      try {
        w.run_block(b, grid);
      } catch (...) {
        // Of the blocks that failed before the others noticed, report the first, as a sequential run would.
        std::lock_guard elock(error_mutex);
        if (b < error_block) {
          error_block = b;
          error = std::current_exception();
        }
        failed = true;
      }
    }
  });
  if (error) std::rethrow_exception(error);
}

int barrier(int pred, int* live, const std::source_location& site) {
  Worker& w = *active_worker;
  w.publish_fence();
  w.ts[w.running].pred = pred != 0;
  w.ts[w.running].site = site;
  w.suspend(State::at_barrier);
  *live = w.barrier_live;
  return w.barrier_count;
}

void warp_all_gather(unsigned mask, const void* mine, void* all, size_t bytes, const std::source_location& site) {
  // The other lanes are suspended inside the collective until the last one has copied, so pointers to their stacks
  // stay valid for the whole round.
  const GatherArgs args{mine, all, bytes};
  warp_collective(WarpOp::all_gather, mask, reinterpret_cast<uint64_t>(&args), 0, site);
}

uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t value, int src, const std::source_location& site) {
  return active_worker->warp_collective(op, mask, value, src, site);
}

unsigned live_lanes() {
  const Worker& w = *active_worker;
  const int warp = w.running / 32;
  return w.warp_exists(warp) & ~w.warps[warp].exited;
}

void mbarrier_init(const void* bar, unsigned count, const std::source_location&) {
  active_worker->mbarrier_init(bar, count);
}

uint64_t mbarrier_arrive(const void* bar, unsigned count, unsigned tx, const std::source_location&) {
  Worker& w = *active_worker;
  const char* op = count > 0 ? "mbarrier.arrive" : "mbarrier.expect_tx";
  if (tx > static_cast<unsigned>(kMbarrierLimit))
    fail(std::string(op) + ": txCount " + std::to_string(tx) + " is not in [0, 2^20 - 1]");
  Mbarrier& m = w.mbarrier(bar, op);
  if (count > 0) w.publish_fence();
  const uint64_t state = m.phase;
  w.mbarrier_update(m, static_cast<int32_t>(count), tx, op);  // count is 0 or 1 (async_copy.cuh)
  return state;
}

bool mbarrier_test_wait_parity(const void* bar, unsigned parity, const std::source_location&) {
  return (active_worker->mbarrier(bar, "mbarrier.test_wait.parity").phase & 1) != (parity & 1);
}

bool mbarrier_try_wait_parity(const void* bar, unsigned parity, const std::source_location& site) {
  return active_worker->mbarrier_try_wait(bar, parity, site);
}

void async_copy(std::function<void()> land, const void* bar, unsigned bytes, const std::source_location& site) {
  Worker& w = *active_worker;
  w.mbarrier(bar, "asynchronous copy");  // its completion mechanism must exist when the copy is issued
  const bool late =
      w.schedule.kind == Schedule::reverse || (w.schedule.kind == Schedule::random && w.next_random() % 2);
  w.in_flight.push_back(AsyncCopy{std::move(land), bar, bytes, w.running, site, late});
}

void named_barrier(int id, int count, const std::source_location& site) {
  active_worker->named_barrier(id, count, site);
}

void fence_proxy_async() {
  active_worker->ts[active_worker->running].proxy_fenced = true;
}
void async_proxy_wrote(const void* p, size_t bytes) {
  active_worker->async_proxy_wrote(p, bytes);
}
void async_proxy_read(const void* p, size_t bytes, const char* op) {
  active_worker->async_proxy_read(p, bytes, op);
}

void warpgroup_collective(const char* op, const void* mine, const std::function<void(const void* const*)>& complete,
                          const std::source_location& site) {
  active_worker->warpgroup_collective(op, mine, complete, site);
}
void wgmma_fence() {
  active_worker->my_warpgroup().fenced = true;
}
void wgmma_issue(std::function<void()> op) {
  active_worker->wgmma_issue(std::move(op));
}
void wgmma_commit() {
  active_worker->wgmma_commit();
}
void wgmma_wait(int pending) {
  active_worker->wgmma_wait(pending);
}

uint32_t shared_window_address(const void* p) {
  if (!active_worker) throw std::logic_error("a shared-memory address was asked for outside a kernel");
  return active_worker->shared_window_address(p);
}
void* shared_window_pointer(uint32_t address, uint32_t bytes) {
  return active_worker->shared_window_pointer(address, bytes);
}

void* dynamic_smem() {
  return active_worker->smem.empty() ? nullptr : active_worker->smem.data();
}

void fail(const std::string& what) {
  throw active_worker->error_at(active_worker->running, what);
}

}  // namespace detail
}  // namespace unet::emu
