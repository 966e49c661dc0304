// AtomicFile and write_file_atomically (io/atomic_file.h).
#include "io/atomic_file.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <system_error>

namespace unet::io {

AtomicFile::AtomicFile(const std::string& target) : target_(target) {
  const std::filesystem::path t(target);
  // ".tmpPID.NAME": hidden, unique to the process, and ending as the target does (nifticlib reads the format from the
  // ending). Built with append: GCC 12 warns falsely about "literal" + std::string temporaries (its bug 105329).
  std::string name(".tmp");
  name.append(std::to_string(::getpid())).append(".").append(t.filename().string());
  temp_ = (t.parent_path() / name).string();
}

AtomicFile::~AtomicFile() {
  if (committed_) return;
  std::error_code ec;
  std::filesystem::remove(temp_, ec);
}

void AtomicFile::commit() {
  std::error_code ec;
  std::filesystem::rename(temp_, target_, ec);
  if (ec) throw std::runtime_error(target_ + ": cannot rename the temporary file into place: " + ec.message());
  committed_ = true;
}

void write_file_atomically(const std::string& path, const std::string& bytes) {
  AtomicFile file(path);
  {
    std::ofstream f(file.temp_path(), std::ios::binary | std::ios::trunc);
    if (!f) throw std::runtime_error(path + ": cannot create " + file.temp_path());
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    f.flush();
    if (!f) throw std::runtime_error(path + ": write failed (disk full?)");
  }
  file.commit();
}

}  // namespace unet::io
