// libFuzzer harness: an INI file of arbitrary bytes through io::Config with a schema of every key type, then every
// getter (the values a tool would read) and to_ini.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>

#include "io/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using unet::io::KeyType;
  static const std::string path = "/tmp/unet_fuzz_config_" + std::to_string(::getpid()) + ".ini";
  if (FILE* f = std::fopen(path.c_str(), "wb")) {
    std::fwrite(data, 1, size, f);
    std::fclose(f);
  }
  unet::io::Config c({{"data", "dataset", KeyType::string, "", "a path"},
                      {"data", "patch_size", KeyType::int_list, "64, 64, 64", "sizes"},
                      {"data", "batch_size", KeyType::integer, "2", "an integer"},
                      {"train", "lr", KeyType::real, "8e-4", "a real"},
                      {"train", "betas", KeyType::real_list, "0.9, 0.999", "reals"},
                      {"train", "nesterov", KeyType::boolean, "true", "a boolean"},
                      {"train", "optimizer", KeyType::string, "adamw", "a choice", {"adamw", "adam", "sgd"}}});
  try {
    c.load_file(path);
    c.get_string("data", "dataset");
    c.get_int_list("data", "patch_size");
    c.get_int("data", "batch_size");
    c.get_real("train", "lr");
    c.get_real_list("train", "betas");
    c.get_bool("train", "nesterov");
    c.get_string("train", "optimizer");
    c.to_ini();
  } catch (const std::exception&) {
  }
  return 0;
}
