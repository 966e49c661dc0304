// libFuzzer harness: io::read_tiff on arbitrary bytes, written to a .tif file (the reader takes paths).
// Any exception is a clean refusal; a crash, a sanitizer report or a hang is a finding.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>

#include "io/tiff.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/tmp/unet_fuzz_tiff_" + std::to_string(::getpid()) + ".tif";
  if (FILE* f = std::fopen(path.c_str(), "wb")) {
    std::fwrite(data, 1, size, f);
    std::fclose(f);
  }
  try {
    unet::io::read_tiff(path);
  } catch (const std::exception&) {
  }
  return 0;
}
