// Files that appear whole or not at all: written under a temporary name in the target's directory, then renamed over
// the target (atomic on POSIX file systems), so a crash or an error never leaves a half-written file under the final
// name. Every writer of the project's outputs (checkpoints, NIfTI, logs' companions, datasets) goes through this.
// The temporary name is hidden (".tmpPID.NAME"), readers of directories skip hidden files, and a process ended by
// SIGINT, SIGTERM or SIGHUP removes its temporary files first (remove_temporary_files_on_signals).
#pragma once
#include <string>

namespace unet::io {

class AtomicFile {
 public:
  explicit AtomicFile(const std::string& target);  // nothing is created yet
  ~AtomicFile();                                   // removes the temporary file unless commit() succeeded
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  const std::string& temp_path() const { return temp_; }  // write here (".tmpPID.NAME" beside the target)
  void commit();  // renames the temporary file over the target; throws std::runtime_error naming the target

 private:
  std::string target_, temp_;
  bool committed_ = false;
  int slot_ = -1;  // in the table the signal handler reads
};

// The name AtomicFile writes `target` under: ".tmpPID.NAME" for a target named NAME, in the same directory. Longer
// than NAME, so it is the name that must fit the file system's NAME_MAX.
std::string temporary_path(const std::string& target);

// What `path` is when it is not a regular file: readers open regular files only, since reading a FIFO (named pipe)
// blocks until someone writes to it and a directory fails with an obscure message. "" when `path` is a regular file
// (symbolic links followed) or does not exist (the caller says what a missing file means); else "not a regular file
// (a FIFO (named pipe))" and the like, or "not a file that can be examined (Too many levels of symbolic links)".
std::string regular_file_problem(const std::string& path);

// Why a write just failed, from errno: "File too large" (over ulimit -f), "No space left on device", ...; "disk
// full?" when errno says nothing.
std::string write_failure_reason();

// Writes `bytes` to path through an AtomicFile. Throws std::runtime_error naming the path.
void write_file_atomically(const std::string& path, const std::string& bytes);

// Installs handlers for SIGINT, SIGTERM and SIGHUP that remove the temporary files of every AtomicFile not yet
// committed or destroyed (with unlink, which a signal handler may call), then end the process as the signal would
// have. The tools install them first thing, so Ctrl-C never leaves a .tmpPID.NAME behind. A signal ignored when the
// process started (nohup's SIGHUP, SIGINT in a shell's background job) stays ignored. SIGXFSZ (a write beyond
// ulimit -f) is ignored, so that the write fails with EFBIG and the writer reports it and removes its temporary.
// SIGPIPE too: standard output into a pipe whose reader has gone (| head) fails with EPIPE instead of killing the
// tool before its files are written, and the tools report it at their end (tools/tool_main.h).
void remove_temporary_files_on_signals();

// A directory tree being built under a temporary name (unet_synth's staging directory, renamed into place when
// complete): while tracked, those handlers remove it too, with system calls a handler may make. One at a time;
// untrack it once it is renamed or removed.
void track_temporary_directory(const std::string& path);
void untrack_temporary_directory();

}  // namespace unet::io
