// libFuzzer harness: io::read_nifti on arbitrary bytes, written to a file as NIfTI-1 (.nii) (nifticlib reads paths).
// Any exception is a clean refusal; a crash, a sanitizer report or a hang is a finding.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>

#include "io/nifti.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/tmp/unet_fuzz_nifti_" + std::to_string(::getpid()) + ".nii";
  if (FILE* f = std::fopen(path.c_str(), "wb")) {
    std::fwrite(data, 1, size, f);
    std::fclose(f);
  }
  try {
    unet::io::read_nifti(path);
  } catch (const std::exception&) {
  }
  return 0;
}
