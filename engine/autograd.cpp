// The tape, backward traversal and gradient accumulation.
#include "engine/autograd.h"

#include <unordered_map>

#include "engine/backend.h"

namespace unet::autograd {
namespace {

thread_local bool g_grad_enabled = true;
thread_local std::vector<std::shared_ptr<Node>> g_tape;

}  // namespace

bool grad_enabled() { return g_grad_enabled; }

NoGradGuard::NoGradGuard() : previous_(g_grad_enabled) { g_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { g_grad_enabled = previous_; }

bool should_record(const std::vector<Tensor>& inputs) {
  if (!g_grad_enabled) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

bool should_record(std::initializer_list<Tensor> inputs) { return should_record(std::vector<Tensor>(inputs)); }

void record(std::string name, const std::vector<Tensor>& inputs, const std::vector<Tensor>& outputs, BackwardFn fn) {
  auto node = std::make_shared<Node>();
  node->name = std::move(name);
  node->inputs.resize(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& t = inputs[i];
    if (!t.defined() || !t.requires_grad()) continue;
    if (t.is_leaf()) {
      node->inputs[i].leaf = t.impl_ptr();
    } else {
      node->inputs[i].node = t.impl().grad_fn.get();
      node->inputs[i].output_nr = t.impl().output_nr;
    }
  }
  node->grad_outputs.resize(outputs.size());
  node->backward = std::move(fn);
  for (size_t i = 0; i < outputs.size(); ++i) {
    outputs[i].impl().grad_fn = node;
    outputs[i].impl().output_nr = static_cast<int>(i);
  }
  g_tape.push_back(std::move(node));
}

void accumulate(std::shared_ptr<TensorImpl>& grad, const Tensor& g) {
  if (!grad) {
    grad = g.impl_ptr();
    return;
  }
  Tensor acc(grad);
  check_arg(acc.shape() == g.shape() && acc.dtype() == g.dtype(),
            "gradient accumulation: " + acc.describe() + " += " + g.describe());
  // Someone else (another leaf, a user copy) may hold this gradient: then never modify it in place.
  bool exclusive = grad.use_count() == 1 && acc.impl().storage.use_count() == 1;
  Tensor out = exclusive ? acc : Tensor::empty(acc.shape(), acc.dtype(), acc.device());
  check_arg(acc.device() == g.device(), "gradient accumulation: " + acc.describe() + " += " + g.describe());
  backend::add_into(acc, g, out);
  grad = out.impl_ptr();
}

void backward(const Tensor& root, Tensor grad) {
  check_arg(root.requires_grad(), "backward: " + root.describe() + " does not require grad");
  if (!grad.defined()) grad = Tensor::full(root.shape(), 1.0f, root.dtype()).to(root.device());
  check_arg(grad.shape() == root.shape(), "backward: gradient " + grad.describe() + " for " + root.describe());

  std::vector<std::shared_ptr<Node>> tape;
  tape.swap(g_tape);  // consumed whatever happens, so a throwing backward leaves no half-used tape behind

  if (root.is_leaf()) {
    accumulate(root.impl().grad, grad);
    for (auto& hook : root.impl().grad_ready_hooks) hook(Tensor(root.impl().grad));
    return;
  }

  // How many tape edges point at each leaf: its gradient is final when all of them have been processed.
  std::unordered_map<TensorImpl*, int> pending;
  for (auto& node : tape)
    for (Edge& e : node->inputs)
      if (e.leaf) ++pending[e.leaf.get()];

  Node* root_node = root.impl().grad_fn.get();
  root_node->grad_outputs[root.impl().output_nr] = grad.impl_ptr();
  grad = Tensor();

  for (auto it = tape.rbegin(); it != tape.rend(); ++it) {
    Node& node = **it;
    bool any = false;
    std::vector<Tensor> grads_out;
    for (auto& g : node.grad_outputs) {
      any = any || g != nullptr;
      grads_out.emplace_back(std::move(g));
    }
    std::vector<Tensor> grads_in;
    if (any && node.backward) grads_in = node.backward(grads_out);
    grads_out.clear();
    check_arg(!any || grads_in.size() == node.inputs.size(),
              "backward of " + node.name + " returned " + std::to_string(grads_in.size()) + " gradients for " +
                  std::to_string(node.inputs.size()) + " inputs");
    node.backward = nullptr;  // frees the saved tensors
    for (size_t i = 0; i < node.inputs.size(); ++i) {
      Edge& e = node.inputs[i];
      const Tensor* g = (any && grads_in[i].defined()) ? &grads_in[i] : nullptr;
      if (e.node && g) {
        accumulate(e.node->grad_outputs[e.output_nr], *g);
      } else if (e.leaf) {
        if (g) accumulate(e.leaf->grad, *g);
        if (--pending[e.leaf.get()] == 0 && e.leaf->grad)
          for (auto& hook : e.leaf->grad_ready_hooks) hook(Tensor(e.leaf->grad));
      }
    }
    node.inputs.clear();  // releases the leaves held by this node
  }
}

size_t tape_size() { return g_tape.size(); }
void clear_tape() { g_tape.clear(); }

}  // namespace unet::autograd
