// Tensor construction, conversion to float vectors, and shape helpers.
#include "engine/tensor.h"

#include <cstring>
#include <sstream>

#include "kernels/common/allocator.h"
#include "engine/autograd.h"
#include "engine/device.h"

namespace unet {

const char* device_name(Device d) {
  switch (d) {
    case Device::cpu: return "cpu";
    case Device::cuda: return "cuda";
    case Device::cuda_emu: return "cuda-emu";
  }
  return "?";
}

std::string shape_str(const Shape& s) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << "]";
  return o.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

void check_arg(bool cond, const std::string& what) {
  if (!cond) throw std::invalid_argument(what);
}

Storage::Storage(size_t nbytes, Device dev, bool pin) : bytes(nbytes), device(dev), pinned(pin) {
  check_arg(!pin || dev == Device::cpu, std::string("pinned storage is host memory, not ") + device_name(dev));
  data = pinned ? device::allocate_pinned(nbytes) : device::allocate(dev, nbytes);
}

Storage::~Storage() {
  if (pinned)
    device::free_pinned(data, bytes);
  else
    device::free(device, data, bytes);
}

namespace {
Tensor make_empty(const Shape& shape, DType dtype, Device device, bool pinned) {
  for (int64_t d : shape) check_arg(d >= 0, "negative dimension in shape " + shape_str(shape));
  auto impl = std::make_shared<TensorImpl>();
  impl->shape = shape;
  impl->dtype = dtype;
  impl->device = device;
  impl->storage =
      std::make_shared<Storage>(static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype), device, pinned);
  return Tensor(std::move(impl));
}
}  // namespace

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) { return make_empty(shape, dtype, device, false); }

Tensor Tensor::empty_pinned(const Shape& shape, DType dtype) { return make_empty(shape, dtype, Device::cpu, true); }

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  device::memset(device, t.raw(), 0, t.nbytes());
  return t;
}

Tensor Tensor::full(const Shape& shape, float value, DType dtype) {
  return from_vector(shape, std::vector<float>(static_cast<size_t>(shape_numel(shape)), value), dtype);
}

Tensor Tensor::from_vector(const Shape& shape, const std::vector<float>& v, DType dtype) {
  check_arg(static_cast<int64_t>(v.size()) == shape_numel(shape),
            "from_vector: " + std::to_string(v.size()) + " values for shape " + shape_str(shape));
  Tensor t = empty(shape, dtype);
  size_t n = v.size();
  switch (dtype) {
    case DType::f32: std::memcpy(t.raw(), v.data(), n * 4); break;
    case DType::f16: {
      auto* p = static_cast<uint16_t*>(t.raw());
      for (size_t i = 0; i < n; ++i) p[i] = float_to_f16(v[i]);
      break;
    }
    case DType::bf16: {
      auto* p = static_cast<uint16_t*>(t.raw());
      for (size_t i = 0; i < n; ++i) p[i] = float_to_bf16(v[i]);
      break;
    }
    case DType::i32: {
      auto* p = static_cast<int32_t*>(t.raw());
      for (size_t i = 0; i < n; ++i) p[i] = static_cast<int32_t>(v[i]);
      break;
    }
    case DType::u8: {
      auto* p = static_cast<uint8_t*>(t.raw());
      for (size_t i = 0; i < n; ++i) p[i] = static_cast<uint8_t>(v[i]);
      break;
    }
  }
  return t;
}

int64_t Tensor::dim(int i) const {
  int r = rank();
  int j = i < 0 ? i + r : i;
  check_arg(j >= 0 && j < r, "dimension " + std::to_string(i) + " out of range for " + describe());
  return impl().shape[j];
}

std::string Tensor::describe() const {
  if (!impl_) return "undefined tensor";
  return std::string(dtype_name(dtype())) + shape_str(shape()) + " " + device_name(device());
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape(), dtype(), device());
  device::copy(t.raw(), device(), raw(), device(), nbytes());
  return t;
}

Tensor Tensor::to(Device d) const {
  if (d == device()) return *this;
  Tensor t = empty(shape(), dtype(), d);
  device::copy(t.raw(), d, raw(), device(), nbytes());
  return t;
}

Tensor Tensor::detach() const {
  auto impl = std::make_shared<TensorImpl>();
  impl->shape = shape();
  impl->dtype = dtype();
  impl->device = device();
  impl->storage = impl_->storage;
  return Tensor(std::move(impl));
}

Tensor Tensor::reshape(const Shape& s) const {
  check_arg(shape_numel(s) == numel(), "reshape of " + describe() + " to " + shape_str(s) + ": element counts differ");
  Tensor t = detach();
  t.impl().shape = s;
  return t;
}

std::vector<float> Tensor::to_vector() const {
  if (device() != Device::cpu) return to(Device::cpu).to_vector();
  size_t n = static_cast<size_t>(numel());
  std::vector<float> v(n);
  switch (dtype()) {
    case DType::f32: std::memcpy(v.data(), raw(), n * 4); break;
    case DType::f16:
      for (size_t i = 0; i < n; ++i) v[i] = f16_to_float(static_cast<const uint16_t*>(raw())[i]);
      break;
    case DType::bf16:
      for (size_t i = 0; i < n; ++i) v[i] = bf16_to_float(static_cast<const uint16_t*>(raw())[i]);
      break;
    case DType::i32:
      for (size_t i = 0; i < n; ++i) v[i] = static_cast<float>(static_cast<const int32_t*>(raw())[i]);
      break;
    case DType::u8:
      for (size_t i = 0; i < n; ++i) v[i] = static_cast<float>(static_cast<const uint8_t*>(raw())[i]);
      break;
  }
  return v;
}

float Tensor::item() const {
  check_arg(numel() == 1, "item() of " + describe() + ": tensor must hold exactly one element");
  return to_vector()[0];
}

Tensor& Tensor::set_requires_grad(bool on) {
  check_arg(is_leaf(), "set_requires_grad on a non-leaf tensor " + describe());
  check_arg(!on || dtype() == DType::f32 || dtype() == DType::f16 || dtype() == DType::bf16,
            "only floating-point tensors can require gradients, got " + describe());
  impl().requires_grad = on;
  return *this;
}

Tensor permute_copy(const Tensor& t, const std::vector<int>& perm) {
  int r = t.rank();
  check_arg(static_cast<int>(perm.size()) == r, "permute of " + t.describe() + ": permutation has the wrong length");
  Shape out_shape(r);
  std::vector<int64_t> in_strides(r, 1), src_stride(r);
  for (int i = r - 2; i >= 0; --i) in_strides[i] = in_strides[i + 1] * t.shape()[i + 1];
  std::vector<bool> seen(r, false);
  for (int i = 0; i < r; ++i) {
    check_arg(perm[i] >= 0 && perm[i] < r && !seen[perm[i]], "permute of " + t.describe() + ": not a permutation");
    seen[perm[i]] = true;
    out_shape[i] = t.shape()[perm[i]];
    src_stride[i] = in_strides[perm[i]];
  }
  // Device memory (a GPU's, or the emulator's, which is kept unreadable outside kernels and copies) cannot be read here.
  check_arg(t.device() == Device::cpu, "permute_copy of " + t.describe() + ": host memory only (copy to the cpu first)");
  Tensor out = Tensor::empty(out_shape, t.dtype(), t.device());
  size_t es = dtype_size(t.dtype());
  const char* src = static_cast<const char*>(t.raw());
  char* dst = static_cast<char*>(out.raw());
  std::vector<int64_t> idx(r, 0);
  for (int64_t n = 0; n < out.numel(); ++n) {
    int64_t off = 0;
    for (int i = 0; i < r; ++i) off += idx[i] * src_stride[i];
    std::memcpy(dst + n * es, src + off * es, es);
    for (int i = r - 1; i >= 0; --i) {
      if (++idx[i] < out_shape[i]) break;
      idx[i] = 0;
    }
  }
  return out;
}

}  // namespace unet
