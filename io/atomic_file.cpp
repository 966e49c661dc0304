// AtomicFile and write_file_atomically (io/atomic_file.h).
#include "io/atomic_file.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <system_error>

namespace unet::io {

namespace {

// The temporary files being written, for the signal handler: fixed slots of plain characters (no allocation, no
// lock), each claimed with an atomic flag. A path that does not fit, or a 65th file at once, is not tracked (it is
// still removed by its AtomicFile on any normal exit).
struct TempSlot {
  std::atomic<bool> used{false};
  char path[4096];
};
TempSlot g_slots[64];

int track(const std::string& path) {
  if (path.size() >= sizeof TempSlot::path) return -1;
  for (int i = 0; i < 64; ++i) {
    bool expected = false;
    if (g_slots[i].used.load() || !g_slots[i].used.compare_exchange_strong(expected, true)) continue;
    std::memcpy(g_slots[i].path, path.c_str(), path.size() + 1);
    std::atomic_signal_fence(std::memory_order_seq_cst);
    return i;
  }
  return -1;
}

void untrack(int slot) {
  if (slot >= 0) g_slots[slot].used.store(false);
}

TempSlot g_directory;  // the tracked temporary directory tree

bool is_dot_or_dotdot(const char* n) {
  return n[0] == '.' && (n[1] == '\0' || (n[1] == '.' && n[2] == '\0'));
}

// rm -r of `name` in the directory parent_fd, with system calls only (no allocation, no stdio: a signal handler may
// run it): entries are read with getdents64 into a buffer on the stack, and read again from the start until a pass
// finds nothing left, since removing entries while reading may skip some. Subdirectories up to `depth` levels.
void remove_tree(int parent_fd, const char* name, int depth) {
  const int fd = ::openat(parent_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    ::unlinkat(parent_fd, name, 0);
    return;
  }
  alignas(8) char buf[4096];
  for (bool removed = true; removed;) {
    removed = false;
    ::lseek(fd, 0, SEEK_SET);
    for (ssize_t n; (n = ::getdents64(fd, buf, sizeof buf)) > 0;)
      for (ssize_t off = 0; off < n;) {
        const auto* d = reinterpret_cast<const dirent64*>(buf + off);
        off += d->d_reclen;
        if (is_dot_or_dotdot(d->d_name)) continue;
        if (d->d_type == DT_DIR && depth > 0)
          remove_tree(fd, d->d_name, depth - 1);
        else
          ::unlinkat(fd, d->d_name, 0);
        removed = true;
      }
  }
  ::close(fd);
  ::unlinkat(parent_fd, name, AT_REMOVEDIR);
}

extern "C" void remove_temporaries_and_reraise(int sig) {
  for (TempSlot& s : g_slots)
    if (s.used.load()) ::unlink(s.path);
  if (g_directory.used.load()) remove_tree(AT_FDCWD, g_directory.path, 4);
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

}  // namespace

void remove_temporary_files_on_signals() {
  std::signal(SIGXFSZ, SIG_IGN);
  std::signal(SIGPIPE, SIG_IGN);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) {
    // A signal the process was started ignoring stays ignored (nohup's SIGHUP, SIGINT in a background job).
    struct sigaction old {};
    if (::sigaction(sig, nullptr, &old) == 0 && old.sa_handler == SIG_IGN) continue;
    std::signal(sig, remove_temporaries_and_reraise);
  }
}

void track_temporary_directory(const std::string& path) {
  if (path.size() >= sizeof g_directory.path) return;  // not tracked: removed on errors, not on signals
  g_directory.used.store(false);
  std::memcpy(g_directory.path, path.c_str(), path.size() + 1);
  std::atomic_signal_fence(std::memory_order_seq_cst);
  g_directory.used.store(true);
}

void untrack_temporary_directory() {
  g_directory.used.store(false);
}

std::string temporary_path(const std::string& target) {
  const std::filesystem::path t(target);
  // ".tmpPID.NAME": hidden, unique to the process, and ending as the target does (nifticlib reads the format from the
  // ending). Built with append: GCC 12 warns falsely about "literal" + std::string temporaries (its bug 105329).
  std::string name(".tmp");
  name.append(std::to_string(::getpid())).append(".").append(t.filename().string());
  return (t.parent_path() / name).string();
}

AtomicFile::AtomicFile(const std::string& target) : target_(target), temp_(temporary_path(target)) {
  slot_ = track(temp_);
}

AtomicFile::~AtomicFile() {
  if (!committed_) {
    std::error_code ec;
    std::filesystem::remove(temp_, ec);
  }
  untrack(slot_);
}

void AtomicFile::commit() {
  std::error_code ec;
  std::filesystem::rename(temp_, target_, ec);
  if (ec) throw std::runtime_error(target_ + ": cannot rename the temporary file into place: " + ec.message());
  committed_ = true;
  untrack(slot_);
  slot_ = -1;
}

std::string write_failure_reason() {
  return errno != 0 ? std::strerror(errno) : "disk full?";
}

void write_file_atomically(const std::string& path, const std::string& bytes) {
  AtomicFile file(path);
  {
    std::ofstream f(file.temp_path(), std::ios::binary | std::ios::trunc);
    if (!f) throw std::runtime_error(path + ": cannot create " + file.temp_path());
    errno = 0;
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    f.flush();
    if (!f) throw std::runtime_error(path + ": write failed: " + write_failure_reason());
  }
  file.commit();
}

std::string regular_file_problem(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (st.type() == fs::file_type::not_found || st.type() == fs::file_type::regular) return "";
  // A loop of symbolic links, a directory without search permission; a name too long is the caller's to say (with
  // the limit, as output names are checked).
  if (ec) return ec == std::errc::filename_too_long ? "" : "not a file that can be examined (" + ec.message() + ")";
  const char* kind = st.type() == fs::file_type::directory ? "a directory"
                     : st.type() == fs::file_type::fifo    ? "a FIFO (named pipe)"
                     : st.type() == fs::file_type::socket  ? "a socket"
                     : st.type() == fs::file_type::block || st.type() == fs::file_type::character ? "a device"
                                                                                                  : "unknown kind";
  return std::string("not a regular file (") + kind + ")";
}

}  // namespace unet::io
