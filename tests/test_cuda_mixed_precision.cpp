// Mixed precision on cuda-emu: the real CUDA kernels (tensor-core convolutions in f16 / bf16, the f16 / bf16 instance
// norm, activations and shape kernels) run through the emulator, against the f32 cpu ops on inputs rounded to the low
// precision, rounded once (tests/mixed_precision_cases.h). They sum in another order than the cpu, so a result may
// round to the neighbouring value: one unit in the last place, plus 1e-5 for sums that cancel to near zero.
#include <doctest/doctest.h>

#include "tests/mixed_precision_cases.h"

namespace unet {

TEST_CASE("every op in f16 and bf16 on cuda-emu is the f32 op on rounded inputs, rounded once, to one ulp") {
  test::check_every_op_mixed_precision(Device::cuda_emu, 1.0, 1e-5);
}

}  // namespace unet
