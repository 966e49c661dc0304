// Tensor: shape + dtype + device + shared storage, plus the autograd fields (docs/architecture.md, "Autograd").
// Tensors are always contiguous. Activations are channels-last: 3D NDHWC, 2D NHWC; convolution weights KTRSC / KRSC.
// A Tensor is a cheap handle: copies share the same storage and autograd state (like torch.Tensor).
#pragma once
#include <functional>
#include <initializer_list>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/common/dtype.h"

namespace unet {

enum class Device : uint8_t { cpu, cuda, cuda_emu };
const char* device_name(Device d);

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);

// Bytes on one device, from engine/device: CPU bytes from the pooled HostAllocator, cuda-emu bytes from the
// emulator's own pool (host memory), cuda bytes from the stream-ordered CUDA pool.
struct Storage {
  Storage(size_t bytes, Device device, bool pinned = false);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data = nullptr;
  size_t bytes = 0;
  Device device = Device::cpu;
  bool pinned = false;  // cpu bytes from device::allocate_pinned
};

class Tensor;
namespace autograd {
struct Node;
}
using GradHook = std::function<void(const Tensor& grad)>;

struct TensorImpl {
  Shape shape;
  DType dtype = DType::f32;
  Device device = Device::cpu;
  std::shared_ptr<Storage> storage;
  // autograd
  bool requires_grad = false;                   // set on leaves (parameters, inputs under test)
  std::shared_ptr<autograd::Node> grad_fn;      // the node that produced this tensor, if recorded
  int output_nr = 0;                            // which output of grad_fn this is
  std::shared_ptr<TensorImpl> grad;             // accumulated gradient of a leaf
  std::vector<GradHook> grad_ready_hooks;       // fired once per backward when the leaf's gradient is final
  std::string name;                             // parameter name, for messages
};

// Maps a C++ element type to its dtype; f16 and bf16 are both stored as uint16_t and checked by dtype alone.
template <class T>
constexpr bool dtype_matches(DType d);
template <>
constexpr bool dtype_matches<float>(DType d) { return d == DType::f32; }
template <>
constexpr bool dtype_matches<uint16_t>(DType d) { return d == DType::f16 || d == DType::bf16; }
template <>
constexpr bool dtype_matches<int32_t>(DType d) { return d == DType::i32; }
template <>
constexpr bool dtype_matches<uint8_t>(DType d) { return d == DType::u8; }

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  static Tensor empty(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu);
  static Tensor zeros(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu);
  // A cpu tensor in page-locked memory (device::allocate_pinned): uploads from it are asynchronous in the GPU build.
  // Fill it, copy it to the device, drop it; do not write it again after queuing a copy from it.
  static Tensor empty_pinned(const Shape& shape, DType dtype = DType::f32);
  static Tensor full(const Shape& shape, float value, DType dtype = DType::f32);
  // Values converted to dtype (f16/bf16 rounded to nearest even, i32/u8 truncated).
  static Tensor from_vector(const Shape& shape, const std::vector<float>& values, DType dtype = DType::f32);

  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const { return impl().shape; }
  int rank() const { return static_cast<int>(impl().shape.size()); }
  int64_t dim(int i) const;  // negative i counts from the end
  int64_t numel() const { return shape_numel(impl().shape); }
  DType dtype() const { return impl().dtype; }
  Device device() const { return impl().device; }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype()); }
  std::string describe() const;  // "f32[2, 8, 8, 3] cpu" for messages

  void* raw() const { return impl().storage ? impl().storage->data : nullptr; }
  template <class T>
  T* data() const {
    if (!dtype_matches<T>(dtype())) throw std::runtime_error("tensor data<T>() called with the wrong type for " + describe());
    return static_cast<T*>(raw());
  }

  Tensor clone() const;                     // deep copy, no autograd history
  // A copy on device d (this tensor itself when it is already there), no autograd history: move inputs and
  // parameters (Module::to) before the forward pass.
  Tensor to(Device d) const;
  Tensor detach() const;                    // same storage, no autograd history
  Tensor reshape(const Shape& shape) const; // same storage, no autograd history; numel must match
  std::vector<float> to_vector() const;     // every dtype converted to float (copied to the cpu first)
  float item() const;                       // the single element, as float

  // autograd
  bool requires_grad() const { return impl().requires_grad || impl().grad_fn != nullptr; }
  Tensor& set_requires_grad(bool on);
  bool is_leaf() const { return impl().grad_fn == nullptr; }
  Tensor grad() const { return Tensor(impl().grad); }
  void set_grad(const Tensor& g) { impl().grad = g.impl_; }
  void add_grad_ready_hook(GradHook hook) { impl().grad_ready_hooks.push_back(std::move(hook)); }
  const std::string& name() const { return impl().name; }
  Tensor& set_name(std::string n) {
    impl().name = std::move(n);
    return *this;
  }

  TensorImpl& impl() const {
    if (!impl_) throw std::runtime_error("use of an undefined tensor");
    return *impl_;
  }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool same(const Tensor& o) const { return impl_ == o.impl_; }

 private:
  std::shared_ptr<TensorImpl> impl_;
};

// A contiguous copy with axes reordered: result dim i = t dim perm[i]. No autograd (used for layout conversion).
Tensor permute_copy(const Tensor& t, const std::vector<int>& perm);

// Throws std::invalid_argument naming `what` unless cond holds. Used by ops to validate shapes and dtypes.
void check_arg(bool cond, const std::string& what);

}  // namespace unet
