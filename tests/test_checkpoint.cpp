// Checkpoint loading against hostile weights files: a NaN or infinite weight is an error naming the file and the
// tensor, and a refused checkpoint leaves the model as it was.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>

#include "models/checkpoint.h"
#include "models/nnunet.h"
#include "models/nnunet_plan.h"
#include "tests/test_util.h"

using namespace unet;
using namespace unet::models;

namespace {
DynUNetConfig small_config() {
  UNetPlan plan = plan_unet({16, 16}, {1, 1});
  return DynUNetConfig{1, 3, plan.kernels, plan.strides, plan.filters};
}

// The weights of `model` written to `path` with tensor `name` changed at `element` (PyTorch layout) to `value`.
void save_with_value(const std::string& path, const DynUNet& model, const std::string& name, int64_t element,
                     float value) {
  io::NamedTensors tensors;
  for (auto& [n, p] : model.named_parameters()) {
    Tensor t = to_pytorch_layout(n, p).clone();
    if (n == name) t.data<float>()[element] = value;
    tensors.emplace_back(n, t);
  }
  io::write_safetensors(path, tensors);
}
}  // namespace

TEST_CASE("a NaN or infinite weight in a checkpoint is an error naming the file and the tensor") {
  test::TempDir tmp("checkpoint_nan");
  DynUNet source(small_config());
  source.initialize(1);
  const std::string name = source.named_parameters().front().first;  // input_block.conv1.conv.weight
  std::string path = tmp / "nan.safetensors";
  save_with_value(path, source, name, 5, std::nanf(""));
  DynUNet target(small_config());
  target.initialize(2);
  const std::vector<float> before = target.named_parameters().front().second.to_vector();
  CHECK_THROWS_WITH_AS(load_weights(read_weights(path), target, path),
                       (path + ": tensor '" + name +
                        "' has 1 NaN or infinite values (first at element 5 in the file); "
                        "expected finite weights (a diverged run or a damaged file?)")
                           .c_str(),
                       std::runtime_error);
  CHECK(target.named_parameters().front().second.to_vector() == before);  // nothing was copied

  const std::string last = source.named_parameters().back().first;
  path = tmp / "inf.safetensors";
  save_with_value(path, source, last, 0, -std::numeric_limits<float>::infinity());
  CHECK_THROWS_WITH_AS(
      load_weights(read_weights(path), target, path),
      doctest::Contains(("tensor '" + last + "' has 1 NaN or infinite values (first at element 0").c_str()),
      std::runtime_error);
}

TEST_CASE("a checkpoint with finite weights loads into the model") {
  test::TempDir tmp("checkpoint_ok");
  DynUNet source(small_config());
  source.initialize(1);
  std::string path = tmp / "ok.safetensors";
  save_with_value(path, source, "", 0, 0.f);
  DynUNet target(small_config());
  target.initialize(2);
  load_weights(read_weights(path), target, path);
  for (size_t i = 0; i < source.named_parameters().size(); ++i)
    CHECK(target.named_parameters()[i].second.to_vector() == source.named_parameters()[i].second.to_vector());
}
