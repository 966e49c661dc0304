// The nnU-Net plan rule on the three examples of docs/reference.md, "nnU-Net plan rule".
#include <doctest/doctest.h>

#include <stdexcept>

#include "models/nnunet_plan.h"

using unet::models::plan_unet;
using V = std::vector<std::vector<int>>;

TEST_CASE("an isotropic 128^3 patch gives 6 levels of 3x3x3 kernels, 5 of them strided") {
  auto p = plan_unet({128, 128, 128}, {1, 1, 1});
  CHECK(p.kernels == V(6, {3, 3, 3}));
  CHECK(p.strides == V{{1, 1, 1}, {2, 2, 2}, {2, 2, 2}, {2, 2, 2}, {2, 2, 2}, {2, 2, 2}});
  CHECK(p.filters == std::vector<int>{32, 64, 128, 256, 320, 320});
}

TEST_CASE("an anisotropic patch keeps the coarse axis until its spacing catches up") {
  auto p = plan_unet({20, 320, 256}, {3.6, 0.62, 0.62});
  CHECK(p.kernels == V{{1, 3, 3}, {1, 3, 3}, {3, 3, 3}, {3, 3, 3}, {3, 3, 3}, {3, 3, 3}});
  CHECK(p.strides == V{{1, 1, 1}, {1, 2, 2}, {1, 2, 2}, {2, 2, 2}, {2, 2, 2}, {1, 2, 2}});
}

TEST_CASE("a 2D patch of 192x160 gives five downsamplings and filters capped at 512") {
  auto p = plan_unet({192, 160}, {1, 1});
  CHECK(p.strides == V{{1, 1}, {2, 2}, {2, 2}, {2, 2}, {2, 2}, {2, 2}});
  CHECK(p.filters == std::vector<int>{32, 64, 128, 256, 512, 512});
}

TEST_CASE("a small patch stops downsampling at the minimum feature map size") {
  auto p = plan_unet({32, 32, 16}, {1, 1, 1});
  // 32 -> 16 -> 8 -> 4 on the first two axes (3 downsamplings), 16 -> 8 -> 4 on the last (2).
  CHECK(p.strides == V{{1, 1, 1}, {2, 2, 2}, {2, 2, 2}, {2, 2, 1}});
}

TEST_CASE("mismatched patch and spacing lengths are rejected") {
  CHECK_THROWS_AS(plan_unet({64, 64, 64}, {1, 1}), std::invalid_argument);
}
