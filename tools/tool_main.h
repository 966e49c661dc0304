// The command-line tools' one front-end contract: exit status 0 on success, 2 for a usage or configuration
// error, 1 for a runtime failure, each failure one line on stderr that starts with the tool's name.
#pragma once
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>

#include "engine/comm.h"
#include "io/atomic_file.h"
#include "io/config.h"
#include "io/synthetic.h"
#include "models/trainer.h"

namespace unet::tools {

// A bad argument or option value found by a tool itself (exit status 2).
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// What an option's value must be, for messages: "a number (window overlap in [0, 1))", from its type and description.
inline std::string expected_value(const CLI::Option& opt) {
  const std::string type = opt.get_type_name();
  const char* what = type == "INT"     ? "a whole number"
                     : type == "UINT"  ? "a whole number >= 0"
                     : type == "FLOAT" ? "a number"
                                       : "a non-empty value";
  return what + (" (" + opt.get_description() + ")");
}

// Parses the command line: nothing when the tool should go on; otherwise its exit status (0 after --help, 2 after a
// parse error, reported as "TOOL: message" and a hint). An option given an empty value (--overlap '') is a
// parse error too, for every option of every tool: CLI11 would take it as "not given", or as 0 for a number.
inline std::optional<int> parse_command_line(CLI::App& app, int argc, char** argv, const char* tool) {
  std::string message;
  // "--model=" with nothing after the '=': CLI11 would take the next argument ("--input") as the value.
  for (int i = 1; i < argc && message.empty(); ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--") break;
    if (arg.starts_with("--") && arg.size() > 3 && arg.ends_with("=") && arg.find('=') == arg.size() - 1)
      if (const CLI::Option* opt = app.get_option_no_throw(std::string(arg.substr(0, arg.size() - 1))))
        if (opt->get_expected_min() > 0) message = opt->get_name() + " '': expected " + expected_value(*opt);
  }
  try {
    if (message.empty()) app.parse(argc, argv);
    for (const CLI::Option* opt : app.get_options())
      if (opt->get_expected_min() > 0)  // takes a value (flags do not)
        for (const std::string& value : opt->results())
          if (value.empty() && message.empty()) message = opt->get_name() + " '': expected " + expected_value(*opt);
    if (message.empty()) return std::nullopt;
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ConversionError& e) {
    // CLI11 names the option and the value ("Could not convert: --batch = 99999999999") but not what was expected.
    message = e.what();
    const std::string prefix = "Could not convert: ";
    if (const size_t eq = message.find(" = "); message.starts_with(prefix) && eq != std::string::npos)
      if (const CLI::Option* opt = app.get_option_no_throw(message.substr(prefix.size(), eq - prefix.size())))
        message = message.substr(prefix.size()) +
                  (opt->get_expected_min() == 0 ? ": " + opt->get_name() + " is a flag and takes no value; expected " +
                                                      opt->get_name() + " alone"
                                                : ": expected " + expected_value(*opt));
  } catch (const CLI::ParseError& e) {
    message = e.what();
  }
  std::fprintf(stderr, "%s: %s\nRun with --help for usage.\n", tool, message.c_str());
  return 2;
}

using io::regular_file_problem;  // every reader's one probe (io/atomic_file.h)

// This machine's memory in bytes (0 when unknown), for refusing settings that cannot fit before any work.
inline double physical_memory_bytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? static_cast<double>(pages) * static_cast<double>(page) : 0.0;
}

inline double gib(double bytes) {
  return bytes / (1024.0 * 1024 * 1024);
}

// "12.3 GiB"
inline std::string gib_text(double bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f GiB", gib(bytes));
  return text;
}

// Why no file can be created in the existing directory `dir`, or "" when one can: found by creating (and removing at
// once) a hidden ".tmpPID.probe", which also catches read-only file systems and permissions that access() would not.
inline std::string directory_write_problem(const std::filesystem::path& dir) {
  const std::filesystem::path probe = dir / (".tmp" + std::to_string(::getpid()) + ".probe");
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return "cannot create files in " + dir.string() + ": " + std::strerror(errno);
  ::close(fd);
  ::unlink(probe.c_str());
  return "";
}

// Why the output file `file` cannot be written for its name's length, or "": it is written as ".tmpPID.NAME" first
// (io::AtomicFile), and that longer name must fit NAME_MAX (its directory's, or Linux's 255 when the directory does
// not exist yet); otherwise the write fails with "File name too long" after the work.
inline std::string output_name_problem(const std::filesystem::path& file) {
  const std::string temporary = std::filesystem::path(io::temporary_path(file.string())).filename().string();
  const std::string dir = file.parent_path().empty() ? "." : file.parent_path().string();
  const long name_max = ::pathconf(dir.c_str(), _PC_NAME_MAX);
  const size_t limit = name_max > 0 ? static_cast<size_t>(name_max) : 255;
  if (temporary.size() <= limit) return "";
  const size_t extra = temporary.size() - file.filename().string().size();
  return "a file name of " + std::to_string(file.filename().string().size()) + " characters; at most " +
         std::to_string(limit > extra ? limit - extra : 0) + " are allowed (written as " + temporary.substr(0, extra) +
         "NAME first, and names are limited to " + std::to_string(limit) + ")";
}

// Why the output file `file` cannot be written, or "": it is something other than a regular file, its name is too
// long (output_name_problem), or its directory does not exist, is not a directory or refuses new files. Tools check
// their outputs before the work, so a typo in an output path costs a message rather than the work.
inline std::string output_file_problem(const std::filesystem::path& file) {
  namespace fs = std::filesystem;
  if (std::string p = regular_file_problem(file.string()); !p.empty()) return p;
  if (std::string p = output_name_problem(file); !p.empty()) return p;
  const fs::path dir = file.parent_path().empty() ? fs::path(".") : file.parent_path();
  std::error_code ec;
  const fs::file_status st = fs::status(dir, ec);
  if (st.type() == fs::file_type::not_found) return "the directory " + dir.string() + " does not exist";
  if (ec) return "cannot examine the directory " + dir.string() + ": " + ec.message();
  if (st.type() != fs::file_type::directory) return dir.string() + " is not a directory";
  return directory_write_problem(dir);
}

// Why the output directory `dir` cannot be used, or "": when it exists, it must be a directory that takes new files;
// when it does not, its nearest existing ancestor must be (create_directories makes the rest).
inline std::string output_directory_problem(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  for (const fs::path& part : dir)  // Linux's NAME_MAX; found here rather than by create_directories after the work
    if (part.string().size() > 255)
      return "a name of " + std::to_string(part.string().size()) + " characters in the path; at most 255 are allowed";
  std::error_code ec;
  if (fs::exists(dir, ec))
    return fs::is_directory(dir, ec) ? directory_write_problem(dir) : "exists and is not a directory";
  if (ec) return "cannot be examined: " + ec.message();  // a symbolic link loop, a path too long, no permission
  fs::path p = fs::absolute(dir, ec).lexically_normal();
  for (; !fs::exists(p, ec) && p.has_relative_path(); p = p.parent_path())
    if (fs::is_symlink(fs::symlink_status(p, ec)))  // create_directories would fail on it with "File exists"
      return (p == fs::absolute(dir, ec).lexically_normal() ? std::string() : p.string() + " ") +
             "is a dangling symbolic link (to " + fs::read_symlink(p, ec).string() + ")";
  if (!fs::is_directory(p, ec)) return "cannot be created: " + p.string() + " is not a directory";
  if (std::string why = directory_write_problem(p); !why.empty()) return "cannot be created: " + why;
  return "";
}

// An exclusive flock(2) on a directory, held until the process ends (the kernel releases it at any exit, SIGKILL
// included): a second tool writing into the same directory is refused instead of mixing its files with this one's.
// Returns false when another process holds it; true when this process holds it, or when the directory is not there
// yet (called again once it is made). One directory per process.
inline bool lock_directory(const std::string& dir) {
  static int held = -1;
  if (held >= 0) return true;
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return true;
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    ::close(fd);
    return false;
  }
  held = fd;
  return true;
}

// An exclusive flock(2) on the hidden file .NAME.lock beside an output file, made for it and held until this object
// goes, which removes it: a second tool writing the same file at the same time is refused (busy()) instead of leaving
// one run's label map beside the other's probabilities. A shared one on the file's directory too: a run writing the
// whole directory (lock_directory) excludes it, runs into other files of the directory do not. A process that opened
// the lock file before its removal finds, once it holds the lock, that the name now points elsewhere and starts again.
// A killed run leaves the file (hidden: no reader takes it) for the next run to take over. Where it cannot be made (a
// read-only directory) nothing is held and the output's own write reports the problem.
class OutputFileLock {
 public:
  explicit OutputFileLock(const std::filesystem::path& file)
      : path_((file.parent_path() / ("." + file.filename().string() + ".lock")).string()) {
    const std::filesystem::path parent = file.parent_path().empty() ? "." : file.parent_path();
    dir_ = ::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_ >= 0 && ::flock(dir_, LOCK_SH | LOCK_NB) != 0) {
      busy_ = true;
      return;
    }
    for (int attempt = 0; attempt < 100; ++attempt) {
      const int fd = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
      if (fd < 0) return;
      if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
        ::close(fd);
        busy_ = true;
        return;
      }
      struct stat held {
      }, named{};
      if (::fstat(fd, &held) == 0 && ::lstat(path_.c_str(), &named) == 0 && held.st_dev == named.st_dev &&
          held.st_ino == named.st_ino) {
        fd_ = fd;
        return;
      }
      ::close(fd);  // removed or replaced by its holder after this process opened it
    }
    busy_ = true;
  }
  ~OutputFileLock() {
    if (fd_ >= 0) {
      ::unlink(path_.c_str());  // while still held: see above
      ::close(fd_);
    }
    if (dir_ >= 0) ::close(dir_);
  }
  OutputFileLock(const OutputFileLock&) = delete;
  OutputFileLock& operator=(const OutputFileLock&) = delete;
  bool busy() const { return busy_; }

 private:
  std::string path_;
  int fd_ = -1, dir_ = -1;
  bool busy_ = false;
};

// OMP_NUM_THREADS (its first value: a list sets nested levels) held to the bound runtime.threads has, twice the
// hardware threads: OpenMP takes it before anything the tools set, 100000 crashed libgomp at the first parallel region
// and 1000 on 2 cores turned a 2-second run into minutes. Checked before any parallel region; values OpenMP itself
// rejects (it warns and uses its default) are left to it.
inline void check_omp_num_threads() {
  const char* v = std::getenv("OMP_NUM_THREADS");
  if (!v) return;
  char* end = nullptr;
  errno = 0;
  const long n = std::strtol(v, &end, 10);
  if (end == v || n <= 0) return;
  const long cores = std::max(1u, std::thread::hardware_concurrency());
  if (errno == ERANGE || n > 2 * cores)
    throw UsageError("OMP_NUM_THREADS = " + std::string(v) + " (environment): expected 1.." +
                     std::to_string(2 * cores) + " threads per process (twice this machine's " + std::to_string(cores) +
                     " hardware threads), or unset to use them all");
}

// Runs the tool's body and maps what it throws to the exit statuses above: the usage and configuration errors of
// every layer (UsageError, io::ConfigError, io::SynthOptionsError, models::TrainerOptionError) to 2 as
// "TOOL: message", anything else to 1 as "TOOL: error: message" (std::bad_alloc as "out of memory").
// In a run of several ranks (engine/comm.h) the message names the rank ("TOOL: rank 1 of 4: ...") and the rank ends
// the whole run with its status (MPI_Abort): the others may be waiting for it in a collective and would never return.
template <class Body>
int run_tool(const char* tool, Body&& body) {
  io::remove_temporary_files_on_signals();  // Ctrl-C leaves no half-written file behind
  int status = 2;
  std::string message;
  try {
    check_omp_num_threads();
    const int done = body();
    // What the tool printed must have reached its destination (a full disk, > /dev/full), as coreutils check.
    errno = 0;
    if (std::fflush(stdout) != 0 || std::ferror(stdout))
      throw std::runtime_error(std::string("writing to standard output failed") +
                               (errno != 0 ? std::string(": ") + std::strerror(errno) : std::string()));
    return done;
  } catch (const UsageError& e) {
    message = e.what();
  } catch (const io::ConfigError& e) {
    message = e.what();
  } catch (const io::SynthOptionsError& e) {
    message = e.what();
  } catch (const models::TrainerOptionError& e) {
    message = e.what();
  } catch (const std::filesystem::filesystem_error& e) {  // its what() is "filesystem error: ...: REASON [PATH]"
    status = 1;
    message = "error: " + e.path1().string() + ": " + e.code().message() +
              (e.path2().empty() ? std::string() : " (with " + e.path2().string() + ")");
  } catch (const std::bad_alloc&) {  // its what() is "std::bad_alloc", which tells a user nothing
    status = 1;
    message = "error: out of memory (the data or the settings need more memory than is available)";
  } catch (const std::exception& e) {
    status = 1;
    message = std::string("error: ") + e.what();
  }
  if (world_is_distributed()) {
    std::fprintf(stderr, "%s: rank %d of %d: %s\n", tool, world().rank(), world().size(), message.c_str());
    std::fflush(stderr);
    world().abort(status);
  }
  std::fprintf(stderr, "%s: %s\n", tool, message.c_str());
  return status;
}

}  // namespace unet::tools
