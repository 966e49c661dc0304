// libFuzzer harness: io::read_safetensors and read_safetensors_metadata on arbitrary bytes (written to a file: the
// reader takes a path).
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>

#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/tmp/unet_fuzz_safetensors_" + std::to_string(::getpid()) + ".safetensors";
  if (FILE* f = std::fopen(path.c_str(), "wb")) {
    std::fwrite(data, 1, size, f);
    std::fclose(f);
  }
  try {
    unet::io::read_safetensors_metadata(path);
  } catch (const std::exception&) {
  }
  try {
    unet::io::read_safetensors(path);
  } catch (const std::exception&) {
  }
  return 0;
}
