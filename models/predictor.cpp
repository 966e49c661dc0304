// The inference pipeline (models/predictor.h).
#include "models/predictor.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>
#include <stdexcept>

#include "engine/ops.h"
#include "io/config.h"
#include "io/dataset.h"
#include "io/dle.h"
#include "io/image.h"
#include "io/resample.h"
#include "models/trainer.h"

namespace unet::models {
namespace {

// The model card of a checkpoint, without the training-only heads.
ModelCard inference_card(const io::SafetensorsContent& weights, const std::string& path) {
  ModelCard card = card_from_metadata(weights.metadata, path);
  card.net.deep_supervision = false;
  card.unet3plus.deep_supervision = false;
  return card;
}

// Every tensor of the file must belong to the network its card describes, training-only heads included: another one
// means the card describes another network (a residual DynUNet under a card that says plain blocks: its projections
// would be dropped and another function run), as PyTorch's strict load_state_dict says of unexpected keys.
// `net` is the inference network: the full one (with its training-only heads) is built only when a tensor is not
// in `net`.
void check_tensors_belong(const io::SafetensorsContent& weights, const Module& net, const std::string& path) {
  std::set<std::string> names;
  for (const auto& [name, p] : net.named_state()) names.insert(name);
  bool full = false;
  for (const auto& [name, t] : weights.tensors) {
    if (names.count(name) == 0 && !full) {
      for (const auto& [n, p] : make_network(card_from_metadata(weights.metadata, path))->named_state())
        names.insert(n);
      full = true;
    }
    if (names.count(name) == 0)
      throw std::runtime_error(path + ": tensor '" + name +
                               "' belongs to no layer of the network its model card describes (another network's "
                               "weights, or a card that does not match them); expected only that network's tensors");
  }
}

}  // namespace

Predictor::Predictor(const std::string& checkpoint, const PredictorOptions& o)
    : Predictor(read_weights(checkpoint), checkpoint, o) {}

Predictor::Predictor(const io::SafetensorsContent& weights, const std::string& checkpoint, const PredictorOptions& o)
    : checkpoint_(checkpoint), card_(inference_card(weights, checkpoint)), precision_(o.precision) {
  try {
    net_ = make_network(card_);
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error(checkpoint + ": " + e.what());
  }
  load_weights(weights, *net_, checkpoint);
  check_tensors_belong(weights, *net_, checkpoint);
  net_->to(o.device);
  window_ = window_options(*net_, card_.patch);
  window_.overlap = o.overlap;
  window_.blend = o.blend;
  window_.tta = o.tta;
  window_.batch_size = o.batch;
}

namespace {
// The model's spacing (the card's; the volume's own when the card has none) and whether `spacing` differs from it by
// more than 0.1% on some axis.
bool needs_resampling(const std::array<double, 3>& spacing, const ModelCard& card, std::array<double, 3>* target) {
  *target = spacing;
  if (card.spacing.size() == 3) *target = {card.spacing[0], card.spacing[1], card.spacing[2]};
  bool resample = false;
  for (size_t a = 0; a < 3; ++a) resample = resample || std::abs(spacing[a] - (*target)[a]) > 1e-3 * (*target)[a];
  return resample;
}

// The input and the checkpoint are both named: finite weights too large for f32 overflow the logits of any input.
void check_logits(const Tensor& logits, const std::string& source, const std::string& checkpoint) {
  if (std::string why = io::nonfinite_problem(logits); !why.empty())
    throw std::runtime_error(source + ": the network's output (logits) with the weights of " + checkpoint + ": " + why +
                             "; expected finite values (a damaged model or extreme input values?)");
}

// An image without contrast gives the network nothing to segment: its label map would be the same whatever the model
// learnt (an all-zero volume came out 20% foreground). Refused naming the file: one value everywhere (all zero, a
// constant).
void check_contrast(const Tensor& image, const std::string& source) {
  const float* x = image.data<float>();
  const auto [lo, hi] = std::minmax_element(x, x + image.numel());
  if (*lo == *hi)
    throw std::runtime_error(source + ": every voxel holds the value " + io::real_text(*lo) +
                             " (an empty or constant image); expected an image with contrast to segment");
}

std::string size_text(const std::array<int64_t, 3>& s) {
  return std::to_string(s[0]) + " x " + std::to_string(s[1]) + " x " + std::to_string(s[2]);
}
std::string spacing_text(const std::array<double, 3>& s) {  // 6 digits: a NIfTI's f32 0.1 is 0.10000000149
  char b[96];
  std::snprintf(b, sizeof b, "%.6g x %.6g x %.6g mm", s[0], s[1], s[2]);
  return b;
}
double value_span(const Tensor& image) {
  const float* x = image.data<float>();
  const auto [lo, hi] = std::minmax_element(x, x + image.numel());
  return static_cast<double>(*hi) - static_cast<double>(*lo);
}

// Once cropped, resampled and normalised, values within 1e-6 of each other (a single non-zero voxel, values near
// 1e-40 that z-scoring maps to about 0, a field of view under one of the model's voxels, values all outside a CT
// channel's clip window) are refused too, naming the step that led there. `raw_span`: the span before normalisation.
void check_normalised_contrast(const Tensor& image, double raw_span, const std::string& source,
                               const std::array<int64_t, 3>& box, const std::array<double, 3>& spacing,
                               const std::array<double, 3>* target, const io::NormalizationPlan& plan) {
  const double span = value_span(image);
  if (span > 1e-6) return;
  const std::array<int64_t, 3> grid{image.dim(0), image.dim(1), image.dim(2)};
  std::string steps = "cropping to its non-zero voxels (" + size_text(box) + ")", why;
  if (target) {
    steps += ", resampling from " + spacing_text(spacing) + " to the model's " + spacing_text(*target) + " (" +
             size_text(grid) + ")";
    for (size_t a = 0; a < 3; ++a)
      if (grid[a] == 1 && box[a] > 1)
        why = "resampling left one voxel along an axis: the field of view is under about one of the model's voxels";
  }
  for (size_t c = 0; c < plan.channels.size() && why.empty() && raw_span > 1e-6; ++c)
    if (plan.channels[c].ct)
      why = "the model's CT normalisation clips channel " + std::to_string(c) + " to " +
            io::real_text(plan.channels[c].lower) + ".." + io::real_text(plan.channels[c].upper) +
            ": are the image's values outside that window?";
  if (why.empty()) why = "a single non-zero voxel, or values too small to tell apart";
  throw std::runtime_error(source + ": after " + steps + " and normalisation its values span " + io::real_text(span) +
                           " (" + why + "); expected an image with contrast to segment");
}
}  // namespace

std::array<int64_t, 3> Predictor::grid(const io::Image& volume) const {
  if (card_.pipeline == "dle_isbi")  // every slice resized to the network's output size
    return {volume.data.dim(0), window_.patch[window_.patch.size() - 2], window_.patch.back()};
  const std::array<int64_t, 3> box = io::nonzero_box(volume.data).size();
  std::array<double, 3> target{};
  return needs_resampling(volume.spacing, card_, &target) ? io::resampled_size(box, volume.spacing, target) : box;
}

Segmentation Predictor::segment(const io::Image& volume, const std::string& source) const {
  if (volume.data.dim(-1) != card_.image_channels())
    throw std::runtime_error(source + ": has " + std::to_string(volume.data.dim(-1)) +
                             " channel(s), the model expects " + std::to_string(card_.image_channels()));
  check_contrast(volume.data, source);
  const std::array<int64_t, 3> full{volume.data.dim(0), volume.data.dim(1), volume.data.dim(2)};
  Segmentation out;
  Tensor probabilities;
  if (card_.pipeline == "dle_isbi") {
    // DLE UNet_Medical's (io/dle.h): x / 127.5 - 1, each slice resized to the output size, one window with the
    // context zero-padded, the probabilities resized back to the slice's size.
    Tensor image = volume.data.clone();
    io::dle_normalize(image, source);
    const int64_t h = window_.patch[window_.patch.size() - 2], w = window_.patch.back();
    image = io::resize_planes(image, h, w);
    const Tensor logits = predict_volume(*net_, image, window_, precision_);
    check_logits(logits, source, checkpoint_);
    probabilities = io::resize_planes(softmax_channels(logits), full[1], full[2]);
    out.grid = {full[0], h, w};
    out.resampled = h != full[1] || w != full[2];
  } else if (card_.slice_cases && full[0] > 1) {
    probabilities = slice_probabilities(volume, source, &out);
  } else {
    probabilities = nnunet_probabilities(volume, source, &out);
  }
  out.probabilities = probabilities;
  const Tensor labels = ops::argmax_channels(probabilities);  // i32, on the cpu
  out.labels = Tensor::empty(labels.shape(), DType::u8);
  const int32_t* l = labels.data<int32_t>();
  uint8_t* u = out.labels.data<uint8_t>();
  for (int64_t i = 0; i < labels.numel(); ++i) u[i] = static_cast<uint8_t>(l[i] * card_.label_scale);
  return out;
}

Tensor Predictor::slice_probabilities(const io::Image& volume, const std::string& source, Segmentation* out) const {
  const int64_t Z = volume.data.dim(0), H = volume.data.dim(1), W = volume.data.dim(2), C = volume.data.dim(3);
  const int64_t K = card_.out_channels();
  Tensor probabilities = Tensor::zeros({Z, H, W, K});
  float* p = probabilities.data<float>();
  out->grid = {Z, 0, 0};
  for (int64_t z = 0; z < Z; ++z) {
    io::Image slice{Tensor::empty({1, H, W, C}), volume.spacing};
    std::copy_n(volume.data.data<float>() + z * H * W * C, H * W * C, slice.data.data<float>());
    // A slice with one value within its non-zero box (blank, or a single voxel) holds nothing to segment:
    // background, where a volume of them is refused (check_contrast).
    const Tensor inside = io::crop(slice.data, io::nonzero_box(slice.data));
    if (value_span(inside) <= 1e-6) {
      for (int64_t v = 0; v < H * W; ++v) p[(z * H * W + v) * K] = 1;
      continue;
    }
    Segmentation part;
    const Tensor one = nnunet_probabilities(slice, source + " (slice " + std::to_string(z) + ")", &part);
    std::copy_n(one.data<float>(), H * W * K, p + z * H * W * K);
    out->grid = {Z, std::max(out->grid[1], part.grid[1]), std::max(out->grid[2], part.grid[2])};
    out->resampled = out->resampled || part.resampled;
  }
  return probabilities;
}

Tensor Predictor::nnunet_probabilities(const io::Image& volume, const std::string& source, Segmentation* out) const {
  // As in training (models/trainer.h): crop to the non-zero box, resample to the training spacing, normalise.
  const std::array<int64_t, 3> full{volume.data.dim(0), volume.data.dim(1), volume.data.dim(2)};
  const io::Box box = io::nonzero_box(volume.data);
  Tensor image = io::crop(volume.data, box);
  const std::array<double, 3> spacing = volume.spacing;
  std::array<double, 3> target{};
  const bool resample = needs_resampling(spacing, card_, &target);
  const int separate = io::separate_axis(spacing, target);
  if (resample)
    image = io::resize_image(image, io::resampled_size(box.size(), spacing, target), io::image_orders(separate));
  const double raw_span = value_span(image);
  io::normalize_image(image, card_.normalization);
  if (std::string why = io::nonfinite_problem(image); !why.empty())
    throw std::runtime_error(source + ": after " + (resample ? "resampling and " : "") +
                             "normalisation with the model's plan, " + why +
                             "; expected finite values (values near the f32 limit?)");
  check_normalised_contrast(image, raw_span, source, box.size(), spacing, resample ? &target : nullptr,
                            card_.normalization);

  // Probabilities on the model's grid, back on the cropped grid (linear, nearest along a separate axis, as nnU-Net),
  // then in the whole volume (background outside the box).
  const Tensor logits = predict_volume(*net_, image, window_, precision_);
  check_logits(logits, source, checkpoint_);
  Tensor probabilities = softmax_channels(logits);
  if (resample) probabilities = io::resize_image(probabilities, box.size(), io::label_orders(separate));
  if (box.size() != full) {
    const int64_t C = probabilities.dim(3);
    Tensor background = Tensor::zeros({1, 1, 1, C});
    background.data<float>()[0] = 1;
    Tensor whole = Tensor::empty({full[0], full[1], full[2], C});
    float* w = whole.data<float>();
    for (int64_t v = 0; v < full[0] * full[1] * full[2]; ++v) std::copy_n(background.data<float>(), C, w + v * C);
    const Tensor inside = io::uncrop(probabilities, box, full);
    const float* in = inside.data<float>();
    for (int64_t z = box.begin[0]; z < box.end[0]; ++z)
      for (int64_t y = box.begin[1]; y < box.end[1]; ++y) {
        const int64_t row = ((z * full[1] + y) * full[2] + box.begin[2]) * C;
        std::copy_n(in + row, box.size()[2] * C, w + row);
      }
    probabilities = whole;
  }
  out->grid = {image.dim(0), image.dim(1), image.dim(2)};
  out->resampled = resample;
  return probabilities;
}

}  // namespace unet::models
