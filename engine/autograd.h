// Reverse-mode autograd on a tape (docs/architecture.md, "Autograd").
// Ops record one Node per differentiable call while grad mode is on and an input requires grad. backward(loss) walks
// the tape in reverse (a valid topological order), accumulates gradients, frees each node's saved tensors right after
// its backward runs, and fires a leaf's gradient-ready hooks as soon as no remaining node can add to its gradient.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace unet::autograd {

// Given the gradients of the node's outputs (undefined where no gradient flowed), returns one gradient per input
// (undefined for inputs that need none). Saved tensors live in the closure and die with it.
using BackwardFn = std::function<std::vector<Tensor>(const std::vector<Tensor>& grad_outputs)>;

struct Edge {
  Node* node = nullptr;               // producer of a non-leaf input (owned by the tape)
  int output_nr = 0;
  std::shared_ptr<TensorImpl> leaf;   // a leaf input that requires grad
  bool needs_grad() const { return node != nullptr || leaf != nullptr; }
};

struct Node {
  std::string name;
  std::vector<Edge> inputs;
  std::vector<std::shared_ptr<TensorImpl>> grad_outputs;  // accumulated during backward, one slot per output
  BackwardFn backward;
};

bool grad_enabled();

// Disables recording in its scope (inference, optimizer steps).
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

// True when grad mode is on and any defined input requires grad: the op should then call record().
bool should_record(std::initializer_list<Tensor> inputs);
bool should_record(const std::vector<Tensor>& inputs);

// Records a node whose backward maps output gradients to input gradients, and marks the outputs as its products.
void record(std::string name, const std::vector<Tensor>& inputs, const std::vector<Tensor>& outputs, BackwardFn fn);

// Runs backward from `root`. grad defaults to ones (a scalar loss). The whole tape is consumed and cleared.
void backward(const Tensor& root, Tensor grad = Tensor());

size_t tape_size();
void clear_tape();  // drops recorded nodes (and their saved tensors) without running backward

// grad += g in place when grad is exclusively owned, otherwise a new tensor; undefined grad takes g as is.
void accumulate(std::shared_ptr<TensorImpl>& grad, const Tensor& g);

}  // namespace unet::autograd
