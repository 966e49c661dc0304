// Training step and validation helpers for the DynUNet.
#include "models/trainer.h"

#include "engine/autograd.h"
#include "engine/ops.h"

namespace unet::models {

Tensor deep_supervision_loss(const std::vector<Tensor>& outputs, const Tensor& labels, StepStats* stats) {
  check_arg(!outputs.empty(), "deep_supervision_loss: no outputs");
  Tensor total;
  double weight = 1.0, weight_sum = 0.0;
  for (size_t i = 0; i < outputs.size(); ++i, weight *= 0.5) weight_sum += weight;
  weight = 1.0;
  for (size_t i = 0; i < outputs.size(); ++i, weight *= 0.5) {
    float dice = 0, ce = 0;
    Tensor l = ops::dice_ce_loss(outputs[i], labels, &dice, &ce);
    if (i == 0 && stats) stats->dice_loss = dice, stats->ce = ce;
    Tensor weighted = ops::scale(l, static_cast<float>(weight / weight_sum));
    total = total.defined() ? ops::add(total, weighted) : weighted;
  }
  return total;
}

StepStats train_step(DynUNet& net, Optimizer& optimizer, const Tensor& x, const Tensor& labels) {
  StepStats stats;
  optimizer.zero_grad();
  Tensor loss = deep_supervision_loss(net.forward(x, /*training=*/true), labels, &stats);
  stats.loss = loss.item();
  autograd::backward(loss);
  stats.stepped = optimizer.step();
  return stats;
}

Tensor predict_volume(const DynUNet& net, const Tensor& image, const SlidingWindowOptions& options) {
  // The network runs on its parameters' device (Module::to); windows go there and logits come back for blending.
  const std::vector<Tensor> params = net.parameters();
  const Device d = params.empty() ? Device::cpu : params[0].device();
  return sliding_window_predict(
      image,
      [&](const Tensor& batch) { return net.forward(batch.to(d), /*training=*/false)[0].to(Device::cpu); }, options);
}

Tensor segment_volume(const DynUNet& net, const Tensor& image, const SlidingWindowOptions& options) {
  return ops::argmax_channels(predict_volume(net, image, options));
}

}  // namespace unet::models
