// Files that appear whole or not at all: written under a temporary name in the target's directory, then renamed over
// the target (atomic on POSIX file systems), so a crash or an error never leaves a half-written file under the final
// name. Every writer of the project's outputs (checkpoints, NIfTI, logs' companions, datasets) goes through this.
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
};

// Writes `bytes` to path through an AtomicFile. Throws std::runtime_error naming the path.
void write_file_atomically(const std::string& path, const std::string& bytes);

}  // namespace unet::io
