// safetensors files (the Hugging Face format PyTorch users load with safetensors.torch.load_file):
// 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}, "__metadata__": {..}},
// then the raw little-endian tensor bytes. Written atomically (temporary file, then rename); every field is
// validated on read before anything is allocated.
#pragma once
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"
#include "io/atomic_file.h"  // write_file_atomically, used with these files

namespace unet::io {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;
using Metadata = std::map<std::string, std::string>;

struct SafetensorsContent {
  NamedTensors tensors;  // in file order of their data
  Metadata metadata;
  std::string path;                                  // the file read
  const Tensor& get(const std::string& name) const;  // throws naming the file and the missing tensor
};

void write_safetensors(const std::string& path, const NamedTensors& tensors, const Metadata& metadata = {});
SafetensorsContent read_safetensors(const std::string& path);
// The header's __metadata__ only (what --resume checks before the data loads); the tensors are not read or checked.
Metadata read_safetensors_metadata(const std::string& path);

}  // namespace unet::io
