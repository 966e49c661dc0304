// Precision names and their activation types (engine/precision.h).
#include "engine/precision.h"

#include <stdexcept>

namespace unet {

const char* precision_name(Precision p) {
  switch (p) {
    case Precision::fp32: return "fp32";
    case Precision::tf32: return "tf32";
    case Precision::fp16: return "fp16";
    case Precision::bf16: return "bf16";
  }
  return "?";
}

Precision parse_precision(const std::string& name) {
  for (Precision p : {Precision::fp32, Precision::tf32, Precision::fp16, Precision::bf16})
    if (name == precision_name(p)) return p;
  throw std::invalid_argument("precision '" + name + "': expected auto, fp32, tf32, fp16 or bf16");
}

Precision resolve_precision(const std::string& name, Device device) {
  if (name == "auto") return device == Device::cuda ? Precision::bf16 : Precision::fp32;
  return parse_precision(name);
}

DType activation_dtype(Precision p) {
  return p == Precision::fp16 ? DType::f16 : p == Precision::bf16 ? DType::bf16 : DType::f32;
}

}  // namespace unet
