// The mixed-precision op table shared by the cpu test (tests/test_mixed_precision.cpp, bitwise) and the cuda-emu test
// (tests/test_cuda_mixed_precision.cpp, within a unit in the last place): every op of the network, f16 and bf16.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "engine/ops.h"
#include "engine/random.h"
#include "tests/test_util.h"

namespace unet::test {

// Every op through check_mixed_precision on device d, for f16 and bf16, within `ulps` units in the last place of the
// low precision (relative: 2^-10 for f16, 2^-7 for bf16) plus atol; bitwise when both are 0.
inline void check_every_op_mixed_precision(Device d, double ulps, double atol) {
  auto rnd = [](const Shape& s, uint64_t seed, float stddev = 1.f) {
    Rng rng(seed);
    return randn(s, rng, stddev);
  };
  using Fn = std::function<Tensor(const std::vector<Tensor>&)>;
  struct Case {
    const char* name;
    Fn f;
    std::vector<Tensor> inputs;
    std::vector<Role> roles;
  };
  const std::vector<Case> cases = {
      {"conv 3D 3x3x3 + bias",
       [](const std::vector<Tensor>& t) {
         return ops::conv(t[0], t[1], t[2], {1, 1, 1}, {1, 1, 1});
       },
       {rnd({2, 5, 6, 4, 8}, 1), rnd({16, 3, 3, 3, 8}, 2, 0.2f), rnd({16}, 3)},
       {Role::activation, Role::weight, Role::f32}},
      {"conv 2D 3x3 stride 2",
       [](const std::vector<Tensor>& t) {
         return ops::conv(t[0], t[1], Tensor(), {2, 2}, {1, 1});
       },
       {rnd({2, 9, 7, 16}, 4), rnd({8, 3, 3, 16}, 5, 0.2f)},
       {Role::activation, Role::weight}},
      {"conv_transpose 3D 2x2x2 + bias",
       [](const std::vector<Tensor>& t) { return ops::conv_transpose(t[0], t[1], t[2]); },
       {rnd({2, 3, 2, 4, 16}, 6), rnd({8, 2, 2, 2, 16}, 7, 0.3f), rnd({8}, 8)},
       {Role::activation, Role::weight, Role::f32}},
      {"instance_norm with gamma and beta",
       [](const std::vector<Tensor>& t) { return ops::instance_norm(t[0], t[1], t[2], 1e-5f); },
       {rnd({2, 6, 5, 4, 12}, 9, 3.f), rnd({12}, 10), rnd({12}, 11)},
       {Role::activation, Role::f32, Role::f32}},
      {"leaky_relu",
       [](const std::vector<Tensor>& t) { return ops::leaky_relu(t[0], 0.01f); },
       {rnd({3, 7, 5}, 12)},
       {Role::activation}},
      {"relu", [](const std::vector<Tensor>& t) { return ops::relu(t[0]); }, {rnd({3, 7, 5}, 13)}, {Role::activation}},
      {"add",
       [](const std::vector<Tensor>& t) { return ops::add(t[0], t[1]); },
       {rnd({4, 5, 6}, 14), rnd({4, 5, 6}, 15)},
       {Role::activation, Role::activation}},
      {"concat_channels",
       [](const std::vector<Tensor>& t) {
         return ops::concat_channels({t[0], t[1]});
       },
       {rnd({2, 3, 4, 5}, 16), rnd({2, 3, 4, 3}, 17)},
       {Role::activation, Role::activation}},
      {"upsample_nearest 2x2x1",
       [](const std::vector<Tensor>& t) {
         return ops::upsample_nearest(t[0], {2, 2, 1});
       },
       {rnd({2, 3, 2, 4, 5}, 18)},
       {Role::activation}},
      // UNet 3+'s ops: batch norm in training (fresh running statistics each call: the output uses the batch's) with
      // its fused ReLU, bilinear upsampling and max pooling.
      {"batch_norm training + relu",
       [](const std::vector<Tensor>& t) {
         ops::BatchNormOptions o;
         o.relu = true;
         o.eps = 1e-3f;
         const Device d = t[0].device();
         return ops::batch_norm(t[0], t[1], t[2], Tensor::zeros({12}).to(d), Tensor::full({12}, 1.f).to(d), o);
       },
       {rnd({3, 6, 5, 12}, 19, 3.f), rnd({12}, 20), rnd({12}, 21)},
       {Role::activation, Role::f32, Role::f32}},
      {"upsample_bilinear x4",
       [](const std::vector<Tensor>& t) {
         return ops::upsample_bilinear(t[0], {12, 8}, false);
       },
       {rnd({2, 3, 2, 5}, 22)},
       {Role::activation}},
      {"max_pool 4x4",
       [](const std::vector<Tensor>& t) {
         return ops::max_pool(t[0], {4, 4});
       },
       {rnd({2, 8, 12, 3}, 23)},
       {Role::activation}},
  };
  for (DType dt : {DType::f16, DType::bf16})
    for (const Case& c : cases) {
      const std::string name = c.name, type = dtype_name(dt);
      CAPTURE(name);
      CAPTURE(type);
      const double rtol = ulps * (dt == DType::bf16 ? 0x1p-7 : 0x1p-10);
      test::check_mixed_precision(d, dt, c.f, c.inputs, c.roles, rtol, atol);
    }
}

}  // namespace unet::test
