#include "models/network.h"

#include <stdexcept>
#include <string>

#include "engine/ops.h"
#include "models/checkpoint.h"
#include "models/nnunet.h"
#include "models/unet2d.h"
#include "models/unet3plus.h"

namespace unet::models {

Tensor network_input(const Network& net, const Tensor& x) {
  if (net.spatial_dims() != 2 || x.rank() != 5) return x;
  const int64_t B = x.dim(0), Z = x.dim(1), H = x.dim(2), W = x.dim(3), C = x.dim(4);
  if (Z == 1) return x.reshape({B, H, W, C});
  // Adjacent slices: slice z's channels at z C .. z C + C - 1 (DLE UNet3P's three CT slices as three channels).
  std::vector<Tensor> slices;
  for (int64_t z = 0; z < Z; ++z) slices.push_back(ops::crop(x, {z, 0, 0}, {1, H, W}).reshape({B, H, W, C}));
  return ops::concat_channels(slices);
}

std::vector<double> Network::output_weights(size_t outputs) const {
  std::vector<double> w(outputs);
  double weight = 1.0, sum = 0.0;
  for (double& v : w) sum += (v = weight), weight *= 0.5;
  for (double& v : w) v /= sum;
  return w;
}

void check_unet2d_patch_size(int64_t size) {
  if (UNet2D::output_size(size) < 1)
    throw std::invalid_argument(
        "unet2d: patch size " + std::to_string(size) + " does not fit the network's valid convolutions and poolings; " +
        std::to_string(UNet2D::valid_input_size(size)) + " is the next that does (572 gives 388)");
}

std::unique_ptr<Network> make_network(const ModelCard& card) {
  if (card.model == "unet3plus") {
    // A 2D network: patches [H, W], slices [1, H, W], or [Z, H, W] with Z odd: Z adjacent slices in as channels, the
    // centre one segmented. H and W multiples of 16.
    const size_t n = card.patch.size();
    if (n < 2 || (n == 3 && (card.patch[0] < 1 || card.patch[0] % 2 == 0 || card.patch[0] > 15)) || n > 3)
      throw std::invalid_argument("unet3plus: patch must be 2D (H, W) or Z, H, W with Z slices in, Z odd, 1..15 (got " +
                                  std::to_string(card.patch[0]) + ")");
    for (size_t a = n - 2; a < n; ++a)
      if (card.patch[a] < UNet3Plus::kDivisor || card.patch[a] % UNet3Plus::kDivisor != 0)
        throw std::invalid_argument("unet3plus: patch size " + std::to_string(card.patch[a]) +
                                    " must be a multiple of 16 (its four poolings; DLE trains at 320)");
    if (card.unet3plus.in_channels % card.slices() != 0)
      throw std::invalid_argument("unet3plus: in_channels " + std::to_string(card.unet3plus.in_channels) +
                                  " is not a multiple of the " + std::to_string(card.slices()) + " adjacent slices");
    return std::make_unique<UNet3Plus>(card.unet3plus);
  }
  if (card.model == "unet2d") {
    // A 2D network: patches [1, H, W] (slices) or [H, W], each of H and W a size the network fits.
    const size_t n = card.patch.size();
    if (n < 2 || (n == 3 && card.patch[0] != 1) || n > 3)
      throw std::invalid_argument("unet2d: patch must be 2D (H, W) or slices (1, H, W)");
    for (size_t a = n - 2; a < n; ++a) check_unet2d_patch_size(card.patch[a]);
    return std::make_unique<UNet2D>(card.unet2d);
  }
  return std::make_unique<DynUNet>(card.net);
}

}  // namespace unet::models
