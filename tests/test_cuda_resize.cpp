// CUDA bilinear resampling (kernels/cuda/resize.cu) under the device emulator: forward and backward equal the CPU
// kernels bit for bit, in f32, f16 and bf16, under every thread schedule.
#include <cstring>
#include <vector>

#include "engine/random.h"
#include "kernels/common/dtype.h"
#include "kernels/cpu/resize.h"
#include "kernels/cuda/resize.cuh"
#include "tests/emu_test_util.h"
#include "tests/test_util.h"

using namespace unet;
using test::under_every_schedule;

namespace {
// n normal values stored as dt (f32 bits, or f16 / bf16 16-bit patterns).
std::vector<uint8_t> random_buffer(int64_t n, DType dt, Rng& rng) {
  std::vector<uint8_t> out(size_t(n) * dtype_size(dt));
  for (int64_t i = 0; i < n; ++i) {
    const float v = static_cast<float>(rng.normal());
    if (dt == DType::f32) {
      std::memcpy(out.data() + 4 * i, &v, 4);
    } else {
      const uint16_t h = dt == DType::f16 ? float_to_f16(v) : float_to_bf16(v);
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
  }
  return out;
}
}  // namespace

TEST_CASE("bilinear resampling: CUDA equals the CPU bit for bit, forward and backward, every dtype and schedule") {
  struct Case {
    kernels::ResizeShape s;
    bool align_corners;
  };
  const Case cases[] = {{{2, 5, 6, 3, 10, 12}, false},
                        {{1, 3, 2, 2, 24, 16}, true},
                        {{2, 5, 7, 2, 9, 4}, false},
                        {{1, 4, 3, 5, 1, 5}, true}};
  Rng rng(11);
  for (const Case& k : cases) {
    const kernels::ResizeShape& s = k.s;
    const kernels::ResizeAxis ah = kernels::bilinear_axis(s.h, s.oh, k.align_corners),
                              aw = kernels::bilinear_axis(s.w, s.ow, k.align_corners);
    const std::vector<int32_t> ih = ah.packed_index(), iw = aw.packed_index();
    const std::vector<float> wh = ah.packed_weight(), ww = aw.packed_weight();
    const int64_t in_n = s.n * s.h * s.w * s.c, out_n = s.n * s.oh * s.ow * s.c;
    for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
      CAPTURE(dtype_name(dt));
      const std::vector<uint8_t> x = random_buffer(in_n, dt, rng), dy = random_buffer(out_n, dt, rng);
      std::vector<uint8_t> y(dy.size(), 0xab), dx(x.size(), 0xab);
      kernels::cpu::bilinear_forward(s, dt, ih.data(), wh.data(), iw.data(), ww.data(), x.data(), y.data());
      kernels::cpu::bilinear_backward(s, dt, ih.data(), wh.data(), iw.data(), ww.data(), dy.data(), dx.data());
      const auto cy = under_every_schedule([&] {
        std::vector<uint8_t> out(y.size(), 0xee);
        kernels::cuda::bilinear_forward(s, dt, ih.data(), wh.data(), iw.data(), ww.data(), x.data(), out.data(),
                                        nullptr);
        return out;
      });
      CHECK(cy == y);
      const auto cdx = under_every_schedule([&] {
        std::vector<uint8_t> out(dx.size(), 0xee);
        kernels::cuda::bilinear_backward(s, dt, ih.data(), wh.data(), iw.data(), ww.data(), dy.data(), out.data(),
                                         nullptr);
        return out;
      });
      CHECK(cdx == dx);
    }
  }
}
