// libFuzzer harness: dataset.json of arbitrary bytes through io::read_dataset (a directory holding it and one
// image and label file that a well-formed input can name).
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <string>

#include "io/dataset.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string dir = [] {
    const std::string d = "/tmp/unet_fuzz_dataset_" + std::to_string(::getpid());
    std::filesystem::create_directories(d + "/imagesTr");
    std::filesystem::create_directories(d + "/labelsTr");
    for (const char* f : {"/imagesTr/a.nii.gz", "/labelsTr/a.nii.gz"}) std::fclose(std::fopen((d + f).c_str(), "wb"));
    return d;
  }();
  if (FILE* f = std::fopen((dir + "/dataset.json").c_str(), "wb")) {
    std::fwrite(data, 1, size, f);
    std::fclose(f);
  }
  try {
    unet::io::read_dataset(dir);
  } catch (const std::exception&) {
  }
  return 0;
}
