// Training step and validation helpers for the networks (models/network.h), and the Trainer that runs a whole training.
#include "models/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "engine/autograd.h"
#include "engine/device.h"
#include "engine/ops.h"
#include "engine/schedule.h"
#include "io/config.h"
#include "io/dle.h"
#include "io/image.h"
#include "io/json.h"
#include "io/loader.h"
#include "io/preprocess.h"
#include "io/safetensors.h"
#include "kernels/common/allocator.h"
#include "kernels/common/parallel.h"
#include "models/nnunet_plan.h"
#include "models/run_log.h"

namespace unet::models {

Tensor deep_supervision_loss(const std::vector<Tensor>& outputs, const Tensor& labels,
                             const std::vector<double>& weights, Tensor* parts, Comm* comm, const LossSpec& loss) {
  check_arg(!outputs.empty(), "deep_supervision_loss: no outputs");
  check_arg(weights.size() == outputs.size(), "deep_supervision_loss: " + std::to_string(weights.size()) +
                                                  " weights for " + std::to_string(outputs.size()) + " outputs");
  Tensor total;
  for (size_t i = 0; i < outputs.size(); ++i) {
    Tensor* p = i == 0 ? parts : nullptr;
    Tensor l = loss.hybrid ? ops::hybrid_loss(outputs[i], labels, p, comm, loss.hybrid_options)
                           : ops::dice_ce_loss(outputs[i], labels, p, comm, loss.dice_ce);
    Tensor weighted = weights[i] == 1.0 ? l : ops::scale(l, static_cast<float>(weights[i]));
    total = total.defined() ? ops::add(total, weighted) : weighted;
  }
  return total;
}

std::vector<Tensor> forward_in(const Network& net, const Tensor& x, bool training, Precision precision, uint64_t seed) {
  const DType dt = activation_dtype(precision);
  std::vector<Tensor> out = net.forward(ops::cast(network_input(net, x), dt), training, seed);
  for (Tensor& o : out) o = ops::cast(o, DType::f32);  // softmax and the loss in f32
  return out;
}

namespace {

// labels [B, spatial...] cut to the centre of the logits' spatial size (a network of valid convolutions predicts
// the centre of its input), as [B, logits' spatial...].
Tensor labels_for(const Tensor& labels, const Tensor& logits) {
  Shape spatial(logits.shape().begin() + 1, logits.shape().end() - 1);
  Tensor l = labels;
  if (l.rank() == static_cast<int>(spatial.size()) + 2 && spatial.size() == 2) {  // slices: the centre one
    const int64_t z = l.dim(1), h = l.dim(2), w = l.dim(3);
    l = z == 1 ? l.reshape({l.dim(0), h, w})
               : ops::crop(l.reshape({l.dim(0), z, h, w, 1}), {(z - 1) / 2, 0, 0}, {1, h, w}).reshape({l.dim(0), h, w});
  }
  if (Shape(l.shape().begin() + 1, l.shape().end()) == spatial) return l;
  Shape with_channel = l.shape();
  with_channel.push_back(1);
  std::vector<int64_t> start, size;
  for (size_t a = 0; a < spatial.size(); ++a) {
    start.push_back((l.dim(int(a) + 1) - spatial[a]) / 2);
    size.push_back(spatial[a]);
  }
  Shape out = {l.dim(0)};
  out.insert(out.end(), spatial.begin(), spatial.end());
  return ops::crop(l.reshape(with_channel), start, size).reshape(out);
}

}  // namespace

StepStats train_step(Network& net, Optimizer& optimizer, const Tensor& x, const Tensor& labels, Precision precision,
                     LossScaler* scaler, GradientReducer* reducer, uint64_t seed, const LossSpec& loss_spec) {
  StepStats stats;
  optimizer.zero_grad();
  Tensor parts;
  Comm* comm = reducer ? &reducer->comm() : nullptr;
  // Ranks hold consecutive slices of the global batch (io::PatchSampler): dropout's masks as in one process.
  const ops::DropoutSampleOffset samples(comm ? comm->rank() * x.dim(0) : 0);
  std::vector<Tensor> logits = forward_in(net, x, /*training=*/true, precision, seed);
  Tensor classification;  // UNet 3+'s classification-guided module: its logits come last
  if (net.classifies()) {
    classification = logits.back();
    logits.pop_back();
  }
  const Tensor target = labels_for(labels, logits[0]);
  Tensor loss = deep_supervision_loss(logits, target, net.output_weights(logits.size()), &parts, comm, loss_spec);
  if (classification.defined()) loss = ops::add(loss, ops::presence_bce_loss(classification, target, comm));
  {
    autograd::NoGradGuard no_grad;
    stats.losses = ops::concat_channels({loss.detach(), parts});
  }
  stats.loss_scale = scaler ? scaler->scale() : 1.0f;
  autograd::backward(loss, Tensor::full(loss.shape(), static_cast<float>(stats.loss_scale)).to(loss.device()));
  if (reducer) reducer->finish();
  stats.stepped = optimizer.step(static_cast<float>(1.0 / stats.loss_scale));  // the step's one wait for the device
  if (scaler) scaler->update(stats.stepped);
  return stats;
}

SlidingWindowOptions window_options(const Network& net, const std::vector<int>& patch) {
  SlidingWindowOptions o;
  o.context = net.context(patch);
  o.tta_axes = net.spatial_dims();
  for (size_t a = 0; a < patch.size(); ++a) o.patch.push_back(patch[a] - 2 * o.context[a]);
  return o;
}

Tensor predict_volume(const Network& net, const Tensor& image, const SlidingWindowOptions& options,
                      Precision precision) {
  // The network runs on its parameters' device (Module::to). Windows are cut and blended there too (blend.cu on a
  // GPU), unless the padded volume and the accumulation buffers would take more than kMaxDeviceBlendBytes: then the
  // host blends, and only the windows and their logits cross.
  constexpr double kMaxDeviceBlendBytes = 4.0 * (1 << 30);
  const std::vector<Tensor> params = net.parameters();
  const Device d = params.empty() ? Device::cpu : params[0].device();
  double voxels = 1;
  for (int a = 0; a + 1 < image.rank(); ++a)
    voxels *= static_cast<double>(std::max<int64_t>(image.dim(a), options.patch[static_cast<size_t>(a)]));
  const double bytes = voxels * 4.0 * static_cast<double>(image.dim(-1) + net.out_channels() + 1);
  SlidingWindowOptions o = options;
  o.device = bytes <= kMaxDeviceBlendBytes ? d : Device::cpu;
  return sliding_window_predict(
      image,
      [&](const Tensor& batch) {
        Tensor logits = forward_in(net, batch.to(d), /*training=*/false, precision)[0];
        if (logits.rank() < batch.rank()) {  // a 2D network on slices [B, 1, H, W, C]: back to [B, 1, H', W', K]
          Shape s = logits.shape();
          s.insert(s.begin() + 1, 1);
          logits = logits.reshape(s);
        }
        return logits.to(o.device);
      },
      o);
}

Tensor segment_volume(const Network& net, const Tensor& image, const SlidingWindowOptions& options,
                      Precision precision) {
  return ops::argmax_channels(predict_volume(net, image, options, precision));
}

}  // namespace unet::models

// ---- Trainer ----

namespace unet::models {
namespace {

std::unique_ptr<Optimizer> make_optimizer(const TrainerOptions& o, const std::vector<Tensor>& params) {
  if (o.optimizer == "sgd") {
    SgdOptions so;
    so.lr = o.lr;
    so.weight_decay = o.weight_decay;
    so.momentum = o.momentum;
    so.nesterov = o.nesterov;
    return std::make_unique<SGD>(params, so);
  }
  AdamOptions ao;
  ao.lr = o.lr;
  ao.weight_decay = o.weight_decay;
  if (o.optimizer == "adam") return std::make_unique<Adam>(params, ao);
  if (o.optimizer == "adamw") return std::make_unique<AdamW>(params, ao);
  throw TrainerOptionError("train.optimizer = " + o.optimizer + ": expected adamw, adam or sgd");
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / static_cast<double>(v.size());
}

// Adam's moments from zero, m = sum (1-b1) b1^k g_k and v = sum (1-b2) b2^k g_k^2, obey |m| <= K sqrt(v) by
// Cauchy-Schwarz, K = (1-b1) / sqrt((1-b2) (1 - b1^2/b2)) (7.27 for 0.9 / 0.999), and so bound every update by
// about lr K. A checkpoint whose moments break this (finite but absurd values, 3e38 in both: weights of 1e16 after one
// resumed step) is refused. The slack of eps (the optimizer's) covers rounding and second moments flushed to zero.
void check_adam_moments(const io::SafetensorsContent& ck, const std::string& path, const AdamBase& adam) {
  const AdamOptions& a = adam.options();
  const double k = (1 - a.beta1) / std::sqrt((1 - a.beta2) * (1 - a.beta1 * a.beta1 / a.beta2)) * 1.0001;
  const auto shown = [](double x) {
    char text[32];
    std::snprintf(text, sizeof text, "%.3g", x);
    return std::string(text);
  };
  for (size_t i = 0; i < adam.params().size(); ++i) {
    const std::vector<float> m = ck.get("optimizer.exp_avg." + std::to_string(i)).to_vector();
    const std::vector<float> v = ck.get("optimizer.exp_avg_sq." + std::to_string(i)).to_vector();
    if (m.size() != v.size()) continue;  // set_state names the shape that is wrong
    for (size_t j = 0; j < m.size(); ++j)
      if (std::abs(static_cast<double>(m[j])) > k * std::sqrt(static_cast<double>(v[j])) + a.eps)
        throw std::runtime_error(
            path + ": optimizer.exp_avg." + std::to_string(i) + "[" + std::to_string(j) + "] = " + shown(m[j]) +
            " with optimizer.exp_avg_sq." + std::to_string(i) + "[" + std::to_string(j) + "] = " + shown(v[j]) +
            ": Adam's moments cannot reach |exp_avg| > " + shown(k) + " sqrt(exp_avg_sq) (a damaged checkpoint?)");
  }
}

// "section.key" -> value for the keys of an effective configuration (Config::to_ini) that must agree between a run
// and its resumption: all but [runtime], output.dir, the step count (a run may be extended), the loader's workers and
// prefetch and the cache directory (they do not change the batches), the intervals of logging, validation and
// checkpoints, and train.precision (compared as resolved). A line that is neither a section, a key = value line nor a
// comment throws std::runtime_error.
std::map<std::string, std::string> resume_keys(const std::string& ini) {
  std::map<std::string, std::string> keys;
  std::istringstream in(ini);
  std::string section;
  const auto trim = [](std::string t) {
    const size_t b = t.find_first_not_of(" \t\r"), e = t.find_last_not_of(" \t\r");
    return b == std::string::npos ? std::string() : t.substr(b, e - b + 1);
  };
  for (std::string line; std::getline(in, line);) {
    line = trim(line);
    if (line.empty()) continue;
    if (line.front() == '[') {
      section = line.substr(1, line.size() - 2);
      continue;
    }
    if (line.front() == ';' || line.front() == '#') continue;
    const size_t eq = line.find('=');
    if (eq == std::string::npos || section.empty())
      throw std::runtime_error("line '" + line.substr(0, 80) + "' is not a key = value line of a section");
    const std::string key = section + "." + trim(line.substr(0, eq));
    // train.precision is compared as resolved (the checkpoint's "precision"): auto on a GPU is bf16 there, and the
    // same run resumed on the CPU sets bf16 explicitly.
    if (section == "runtime" || key == "output.dir" || key == "train.steps" || key == "train.log_every" ||
        key == "train.val_every" || key == "train.save_every" || key == "data.workers" || key == "data.prefetch" ||
        key == "data.cache" || key == "train.precision")
      continue;
    keys[key] = trim(line.substr(eq + 1));
  }
  return keys;
}

// A double as text that reads back to the same bits.
std::string exact(double v) {
  char b[40];
  std::snprintf(b, sizeof b, "%.17g", v);
  return b;
}

const std::string& metadata_entry(const io::Metadata& m, const std::string& key, const std::string& path) {
  const auto it = m.find(key);
  if (it == m.end()) throw std::runtime_error(path + ": not a training checkpoint (no '" + key + "' in its metadata)");
  return it->second;
}

int64_t metadata_int(const io::Metadata& m, const std::string& key, const std::string& path) {
  const std::string& text = metadata_entry(m, key, path);
  size_t used = 0;
  long long v = -1;
  try {
    v = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || v < 0)
    throw std::runtime_error(path + ": metadata '" + key + "' = '" + text + "' is not a whole number >= 0");
  return v;
}

// Whether every channel of an image [z, y, x, C] holds one value (to within the rounding of resampling): such an
// image tells the network nothing, and a dataset of only such images (all zero, say) would train a model without a
// word.
bool constant_image(const Tensor& image) {
  const int64_t channels = image.dim(-1), voxels = image.numel() / std::max<int64_t>(channels, 1);
  const float* x = image.data<float>();
  for (int64_t c = 0; c < channels; ++c) {
    float lo = x[c], hi = x[c];
    for (int64_t v = 0; v < voxels; ++v) {
      lo = std::min(lo, x[v * channels + c]);
      hi = std::max(hi, x[v * channels + c]);
    }
    if (!(hi - lo <= 1e-6f * std::max(std::abs(lo), std::abs(hi)))) return false;
  }
  return true;
}

// Training images that are constant: a warning naming them, or TrainerOptionError (exit 2) when every one is.
// Returns their case indices.
std::set<size_t> check_constant_images(const io::DatasetInfo& info, const std::vector<io::Case>& cases,
                                       const std::vector<size_t>& train, bool lead) {
  std::vector<std::string> constant;
  std::set<size_t> indices;
  for (size_t i : train)
    if (constant_image(cases[i].image)) {
      constant.push_back(info.training[i].image_paths.at(0));
      indices.insert(i);
    }
  if (constant.empty()) return indices;
  std::string names;
  for (size_t k = 0; k < constant.size() && k < 5; ++k) names += (k ? ", " : "") + constant[k];
  if (constant.size() > 5) names += " and " + std::to_string(constant.size() - 5) + " more";
  if (constant.size() == train.size())
    throw TrainerOptionError("data.dataset = " + info.dir + ": every training image is constant (one value per " +
                             "channel: " + names + "); expected images whose intensities vary");
  if (lead)
    std::fprintf(stderr,
                 "unet_train: warning: %zu of %zu training image(s) constant (one value per channel), "
                 "nothing to learn from: %s\n",
                 constant.size(), train.size(), names.c_str());
  return indices;
}

// After normalisation, what the network sees: a case whose values span <= 1e-6 has no contrast (one foreground value
// everywhere, which unet_infer refuses to segment), and a channel flat in every case carries nothing. Cases already
// reported constant before normalisation (`constant`) are not named again; every case flat (or constant) ends the run.
void check_normalised_contrast(const io::DatasetInfo& info, const std::vector<io::Case>& cases,
                               const std::vector<size_t>& train, const std::set<size_t>& constant, bool lead) {
  std::vector<std::string> flat;
  const int64_t channels = train.empty() ? 0 : cases[train[0]].image.dim(-1);
  std::vector<bool> varies(static_cast<size_t>(channels), false);
  for (size_t i : train) {
    const Tensor& image = cases[i].image;
    const float* x = image.data<float>();
    const int64_t voxels = image.numel() / std::max<int64_t>(channels, 1);
    double all_lo = x[0], all_hi = x[0];
    for (int64_t c = 0; c < channels; ++c) {
      double lo = x[c], hi = x[c];
      for (int64_t v = 0; v < voxels; ++v) {
        lo = std::min<double>(lo, x[v * channels + c]);
        hi = std::max<double>(hi, x[v * channels + c]);
      }
      if (hi - lo > 1e-6) varies[static_cast<size_t>(c)] = true;
      all_lo = std::min(all_lo, lo);
      all_hi = std::max(all_hi, hi);
    }
    if (all_hi - all_lo <= 1e-6 && constant.count(i) == 0) flat.push_back(info.training[i].image_paths.at(0));
  }
  if (!flat.empty()) {
    std::string names;
    for (size_t k = 0; k < flat.size() && k < 5; ++k) names += (k ? ", " : "") + flat[k];
    if (flat.size() > 5) names += " and " + std::to_string(flat.size() - 5) + " more";
    if (flat.size() + constant.size() == train.size())
      throw TrainerOptionError("data.dataset = " + info.dir +
                               ": no training image has contrast after cropping to its non-zero voxels and "
                               "normalisation (one foreground value everywhere: " +
                               names + "); expected images whose intensities vary (unet_infer refuses such images)");
    if (lead)
      std::fprintf(stderr,
                   "unet_train: warning: %zu of %zu training image(s) without contrast after cropping and "
                   "normalisation (one foreground value everywhere; unet_infer would refuse them): %s\n",
                   flat.size(), train.size(), names.c_str());
  }
  if (lead && channels > 1)
    for (int64_t c = 0; c < channels; ++c)
      if (!varies[static_cast<size_t>(c)])
        std::fprintf(stderr,
                     "unet_train: warning: channel %ld holds one value in every training image after normalisation: "
                     "the network cannot use it\n",
                     static_cast<long>(c));
}

// Classes of dataset.json that no training label holds: a warning naming them (all the foreground ones: the network
// can only learn background).
void check_label_classes(const io::DatasetInfo& info, const std::vector<io::Case>& cases,
                         const std::vector<size_t>& train, bool lead) {
  const size_t classes = info.labels.size();
  std::vector<bool> seen(classes, false);
  for (size_t i : train) {
    const uint8_t* l = cases[i].label.data<uint8_t>();
    for (int64_t v = 0; v < cases[i].label.numel(); ++v)
      if (l[v] < classes) seen[l[v]] = true;
  }
  std::string absent;
  size_t count = 0;
  for (size_t k = 1; k < classes; ++k)
    if (!seen[k]) absent += std::string(count++ ? ", " : "") + std::to_string(k) + " (" + info.labels[k] + ")";
  if (!lead || count == 0) return;
  if (count == classes - 1)
    std::fprintf(stderr,
                 "unet_train: warning: no training label holds a foreground class (%s): the network can only learn "
                 "background\n",
                 absent.c_str());
  else
    std::fprintf(stderr, "unet_train: warning: %zu of %zu foreground classes are in no training label: %s\n", count,
                 classes - 1, absent.c_str());
}

}  // namespace

struct Trainer::State {
  TrainerOptions o;
  std::FILE* out;
  io::DatasetInfo info;
  io::FoldSplit split;
  std::vector<io::Case> cases;
  ModelCard card;
  std::unique_ptr<Network> net;
  std::unique_ptr<Optimizer> opt;
  LossScaler scaler;
  SlidingWindowOptions sw;
  std::filesystem::path dir;
  double best_dice = -1;                     // the best validation mean Dice so far (model_best.safetensors)
  // The steps' [loss, Dice, CE] (or the hybrid loss's parts) summed on the device since the last log line, and how
  // many steps: in the checkpoint, so that a resumed run's next line averages the same steps as the run never
  // interrupted.
  Tensor loss_since_log;
  int64_t loss_since_log_steps = 0;
  bool loss_since_log_restored = false;  // resumed from a checkpoint that holds the sums (older ones do not)
  // "ID DIGEST" per line for every prepared case (case_summary's digest): in the checkpoint, so that --resume on
  // changed data (a regenerated dataset under the same names) is refused rather than trained on two datasets.
  std::string data_cases;
  // Training time of the earlier sessions of a resumed run, and when this session's training began.
  double earlier_seconds = 0;
  std::chrono::steady_clock::time_point session_start = std::chrono::steady_clock::now();
  double train_seconds() const {
    return earlier_seconds + std::chrono::duration<double>(std::chrono::steady_clock::now() - session_start).count();
  }
  Comm* comm = nullptr;                      // null: one process
  std::unique_ptr<GradientReducer> reducer;  // with more than one rank
  int rank() const { return comm ? comm->rank() : 0; }
  int ranks() const { return comm ? comm->size() : 1; }
  bool lead() const { return rank() == 0; }  // writes files and progress lines

  // Validation case k is segmented by rank k % ranks. Each class's Dice is the mean over the cases of each case's
  // Dice, as unet_eval scores (and nnU-Net's validation summary): each case's Dice comes back to every rank (its
  // rank's value plus zeros, exact) and is summed in case order, so any rank count gives the same bits.
  std::vector<double> validate() const {
    use_rank0_buffers();
    const int classes = info.num_classes();
    const size_t k_classes = static_cast<size_t>(classes - 1), n = split.val.size();
    std::vector<double> per_case(n * k_classes, 0.0);
    for (size_t k = static_cast<size_t>(rank()); k < n; k += static_cast<size_t>(ranks())) {
      const io::Case c = io::unpadded(cases[split.val[k]]);  // as unet_infer sees it, not the sampler's padding
      DiceCounts counts;
      counts.add(segment_volume(*net, c.image, sw, o.precision), c.label, classes);
      const std::vector<double> d = counts.dice();
      std::copy(d.begin(), d.end(), per_case.begin() + static_cast<std::ptrdiff_t>(k * k_classes));
    }
    if (ranks() > 1)
      comm->allreduce(per_case.data(), static_cast<int64_t>(per_case.size()), ScalarType::f64, ReduceOp::sum,
                      Device::cpu);
    std::vector<double> sum(k_classes, 0.0), per_class(k_classes, 0.0);
    for (size_t k = 0; k < n; ++k)
      for (size_t c = 0; c < k_classes; ++c) sum[c] += per_case[k * k_classes + c];
    for (size_t c = 0; c < k_classes && n > 0; ++c) per_class[c] = sum[c] / static_cast<double>(n);
    return per_class;
  }

  // Batch norm's running statistics of rank 0, those the model file gets, on every rank: without SyncBatchNorm each
  // rank updated its own from its samples, so the cases validated on the other ranks were scored with a network that
  // is never written (as PyTorch DDP's broadcast_buffers gives every rank rank 0's buffers before a forward pass).
  void use_rank0_buffers() const {
    if (ranks() < 2) return;
    for (const auto& [name, b] : net->named_buffers()) {
      const Tensor host = b.to(Device::cpu);  // b itself on the cpu
      comm->broadcast(host.raw(), static_cast<int64_t>(host.nbytes()), 0);
      if (!host.same(b)) device::copy(b.raw(), b.device(), host.raw(), Device::cpu, host.nbytes());
    }
  }

  // The loss can stay finite while the weights or an optimizer moment overflow (a moment of 3e38 in a damaged
  // checkpoint that passed as finite): such a state is not written as the run's result, and the files of the last
  // good save stay.
  void check_state_finite(int64_t step) const {
    const auto check = [&](const std::string& what, const std::string& name, const Tensor& t) {
      int64_t first = -1;
      if (const int64_t bad = count_non_finite(t, &first); bad > 0)
        throw std::runtime_error("training diverged: after step " + std::to_string(step) + " " + what + " '" + name +
                                 "' holds " + std::to_string(bad) + " NaN or infinite values (first at element " +
                                 std::to_string(first) +
                                 "); nothing was written for this step (lower train.lr, or "
                                 "resume from an earlier checkpoint)");
    };
    for (auto& [name, p] : net->named_state()) check("the weight", name, p);
    for (auto& [name, t] : opt->state()) check("the optimizer state", name, t);
  }

  // checkpoint.safetensors: everything resume() needs, in one file replaced atomically (the previous one stays whole
  // until the new one is complete). Tensors go to the host first (they may live on a GPU).
  void save_checkpoint(int64_t step) const {
    if (!lead()) return;
    check_state_finite(step);
    write_checkpoint(step);
  }

  // The checkpoint and the weights for inference, in that order: the model is never ahead of what --resume continues
  // from. A checkpoint that cannot be written (disk full) leaves both files of the last save; a model that cannot be
  // written, a checkpoint one save ahead, whose resumed run writes the model again.
  void save(int64_t step) const {
    if (!lead()) return;
    check_state_finite(step);
    write_checkpoint(step);
    save_weights((dir / "model.safetensors").string(), *net, card_to_metadata(card));
  }

  // save_checkpoint's file, the state already checked.
  void write_checkpoint(int64_t step) const {
    io::NamedTensors tensors;
    for (auto& [name, p] : net->named_state()) tensors.emplace_back("model." + name, p.to(Device::cpu));
    for (auto& [name, t] : opt->state()) tensors.emplace_back("optimizer." + name, t.to(Device::cpu));
    io::Metadata metadata = scaler.to_metadata();
    metadata.insert({{"step", std::to_string(step)},
                     {"seed", std::to_string(o.seed)},
                     {"optimizer", opt->name()},
                     {"optimizer_steps", std::to_string(opt->step_count())},
                     {"precision", precision_name(o.precision)},
                     {"global_batch", std::to_string(static_cast<int64_t>(o.sampling.batch) * ranks())},
                     {"best_val_mean_dice", exact(best_dice)},
                     {"train_seconds", exact(train_seconds())},
                     {"config", o.config_text},
                     {"loss_since_log_steps", std::to_string(loss_since_log_steps)},
                     {"data_cases", data_cases}});
    if (loss_since_log_steps > 0) tensors.emplace_back("train.loss_since_log", loss_since_log.to(Device::cpu));
    io::write_safetensors((dir / "checkpoint.safetensors").string(), tensors, metadata);
  }

  // checkpoint.safetensors of --resume DIR, refused when absent.
  std::string checkpoint_path(const std::string& run_dir) const {
    const std::string path = (std::filesystem::path(run_dir) / "checkpoint.safetensors").string();
    if (!std::filesystem::exists(path))
      throw TrainerOptionError("--resume " + run_dir +
                               ": no checkpoint.safetensors there (a run writes it every "
                               "train.save_every steps; start without --resume, with --overwrite if the directory "
                               "holds a run that stopped before its first checkpoint)");
    return path;
  }

  // The checkpoint's metadata against this configuration: the same training (configuration, precision, global batch)
  // and a step within train.steps. Returns the step. The trainer checks it before the data loads, so that a changed
  // key costs no preprocessing, and again on the file resume() reads.
  int64_t check_resume(const io::Metadata& m, const std::string& path) const {
    const int64_t step = metadata_int(m, "step", path);
    const std::map<std::string, std::string> mine = resume_keys(o.config_text);
    const std::map<std::string, std::string> theirs = [&] {
      try {
        return resume_keys(metadata_entry(m, "config", path));
      } catch (const std::runtime_error& e) {
        throw std::runtime_error(path + ": metadata 'config' is not the configuration a run writes (" + e.what() +
                                 "; a damaged checkpoint?)");
      }
    }();
    if (theirs.empty())
      throw std::runtime_error(path + ": metadata 'config' holds no configuration key (a damaged checkpoint?)");
    // Each step either updated the weights or was skipped for inf/nan gradients: a step count that is not their sum
    // (an edited or mixed-up file) would continue a run that matches no uninterrupted one.
    const int64_t updated = metadata_int(m, "optimizer_steps", path), skipped = metadata_int(m, "skipped_steps", path);
    if (updated < 0 || skipped < 0 || updated + skipped != step)
      throw std::runtime_error(path + ": metadata 'step' = " + std::to_string(step) + ", but 'optimizer_steps' = " +
                               std::to_string(updated) + " and 'skipped_steps' = " + std::to_string(skipped) +
                               "; expected step = optimizer_steps + skipped_steps (a damaged checkpoint?)");
    for (const auto* keys : {&mine, &theirs})
      for (const auto& [key, value] : *keys) {
        const auto a = mine.find(key), b = theirs.find(key);
        const std::string here = a == mine.end() ? "(absent)" : a->second;
        const std::string there = b == theirs.end() ? "(absent)" : b->second;
        // By value (8e-4 and 0.0008 agree), and the dataset by the directory it names ("ds/" and an absolute path).
        std::error_code ec;
        const bool same =
            a != mine.end() && b != theirs.end() &&
            (io::same_value(here, there) || (key == "data.dataset" && std::filesystem::equivalent(here, there, ec)));
        if (!same)
          throw TrainerOptionError(
              key + " = " + here + " here, but " + there + " in the run being resumed (" + path +
              "): a resumed run must train as the original (only [runtime], output.dir, train.steps, "
              "data.workers, data.prefetch, data.cache and the log, validation and checkpoint "
              "intervals may change)");
      }
    if (metadata_entry(m, "precision", path) != precision_name(o.precision))
      throw TrainerOptionError("precision " + std::string(precision_name(o.precision)) + " here, but " +
                               metadata_entry(m, "precision", path) + " in " + path +
                               " (train.precision = auto depends on the device: set train.precision = " +
                               metadata_entry(m, "precision", path) + ")");
    const int64_t global_batch = static_cast<int64_t>(o.sampling.batch) * ranks();
    if (metadata_int(m, "global_batch", path) != global_batch)
      throw TrainerOptionError("global batch " + std::to_string(global_batch) + " (" + std::to_string(ranks()) +
                               " rank(s) x data.batch_size) here, but " + metadata_entry(m, "global_batch", path) +
                               " in " + path + ": resume with as many ranks as the original run");
    if (step > o.steps)
      throw TrainerOptionError(path + " is at step " + std::to_string(step) +
                               ", beyond train.steps = " + std::to_string(o.steps));
    return step;
  }

  // The prepared cases against those the checkpoint was trained on (absent from checkpoints written before it was
  // kept): the first case changed, added or removed is named.
  void check_same_data(const io::Metadata& m, const std::string& path) const {
    const auto it = m.find("data_cases");
    if (it == m.end() || it->second == data_cases) return;
    const auto parse = [](const std::string& text) {
      std::map<std::string, std::string> cases;
      std::istringstream in(text);
      for (std::string line; std::getline(in, line);)  // "ID DIGEST": the id may hold spaces, the digest does not
        if (const size_t at = line.rfind(' '); at != std::string::npos) cases[line.substr(0, at)] = line.substr(at + 1);
      return cases;
    };
    const std::map<std::string, std::string> mine = parse(data_cases), theirs = parse(it->second);
    std::string what = "the cases differ";
    for (const auto& [id, digest] : mine)
      if (!theirs.contains(id) || theirs.at(id) != digest) {
        what = "case " + id + (theirs.contains(id) ? " changed" : " is new");
        break;
      }
    if (what == "the cases differ")
      for (const auto& [id, digest] : theirs)
        if (!mine.contains(id)) {
          what = "case " + id + " is gone";
          break;
        }
    if (mine == theirs)  // the same cases in another order: the folds hold other cases
      throw TrainerOptionError("--resume: " + info.json_path + " lists the run's cases in another order than when " +
                               path + " was trained on them, so the folds would hold other cases; expected the " +
                               "original order (restore dataset.json's training list)");
    throw TrainerOptionError("--resume: " + o.dataset + ": " + what + " since the run in " + path +
                             " was trained on it (its images, labels or spacing, or their preparation: dataset.json's "
                             "modality or labels); a resumed run must train on the "
                             "same data: start a new run, or restore the data");
  }

  // Restores the state save_checkpoint wrote (every rank reads the file) and returns its step. Every tensor and entry
  // is checked before anything changes.
  int64_t resume(const std::string& run_dir) {
    const std::string path = checkpoint_path(run_dir);
    const io::SafetensorsContent ck = io::read_safetensors(path);
    const int64_t step = check_resume(ck.metadata, path);
    // Every rank continues from rank 0's checkpoint: ranks started in other directories (a copy of the run on each
    // machine) holding other ones would train replicas that differ, and then wait for each other forever.
    if (ranks() > 1) {
      if (const auto d =
              comm->compare_with_rank0({{"step", std::to_string(step)}, {"content digest", file_digest_text(path)}}))
        throw TrainerOptionError(path + ": " + d->name + " " + d->here + " on this rank, " + d->on_rank0 +
                                 " on rank 0; expected every rank to resume the same checkpoint (give each machine a "
                                 "copy of rank 0's run directory)");
      comm->barrier();  // a rank that differs ends the run (its error aborts every rank) while the others wait here
    }
    check_same_data(ck.metadata, path);
    // Weights: every parameter and buffer present with its shape, checked before any is copied.
    std::vector<std::pair<Tensor, const Tensor*>> copies;
    for (auto& [name, p] : net->named_state()) {
      const Tensor& t = ck.get("model." + name);
      if (t.shape() != p.shape() || t.dtype() != DType::f32)
        throw std::runtime_error(path + ": model." + name + " is " + t.describe() + ", expected " + p.describe());
      copies.emplace_back(p, &t);
    }
    LossScaler restored = scaler;
    try {
      restored.from_metadata(ck.metadata);
    } catch (const std::invalid_argument& e) {
      throw std::runtime_error(path + ": " + e.what());
    }
    const int64_t optimizer_steps = metadata_int(ck.metadata, "optimizer_steps", path);
    // The same optimizer and seed as this configuration's, every tensor finite, and after a step every parameter's
    // optimizer state present: a damaged checkpoint is refused (as unet_infer refuses damaged weights).
    if (metadata_entry(ck.metadata, "optimizer", path) != opt->name())
      throw std::runtime_error(path + ": metadata 'optimizer' = '" + metadata_entry(ck.metadata, "optimizer", path) +
                               "', but train.optimizer makes " + opt->name() + " (a damaged checkpoint?)");
    if (metadata_entry(ck.metadata, "seed", path) != std::to_string(o.seed))
      throw std::runtime_error(path + ": metadata 'seed' = '" + metadata_entry(ck.metadata, "seed", path) +
                               "', but train.seed is " + std::to_string(o.seed) + " (a damaged checkpoint?)");
    for (const auto& [name, t] : ck.tensors) {
      check_finite(path, name, t);
      if (name.rfind("optimizer.exp_avg_sq.", 0) == 0) {  // Adam's second moments are running means of squares
        const std::vector<float> v = t.to_vector();
        if (std::any_of(v.begin(), v.end(), [](float x) { return x < 0; }))
          throw std::runtime_error(path + ": " + name +
                                   " holds negative values; expected Adam's second moments, means of squares, >= 0 "
                                   "(a damaged checkpoint?)");
      }
    }
    if (optimizer_steps > 0)
      for (size_t i = 0; i < opt->params().size(); ++i)
        for (const std::string& kind : opt->state_kinds()) {
          const std::string name = "optimizer." + kind + "." + std::to_string(i);
          bool found = false;
          for (const auto& entry : ck.tensors) found = found || entry.first == name;
          if (!found)
            throw std::runtime_error(path + ": no tensor '" + name + "' (the " + opt->name() + " state of parameter " +
                                     std::to_string(i) + ") after " + std::to_string(step) +
                                     " steps; expected every parameter's (a damaged "
                                     "checkpoint?)");
        }
    // Adam's bias correction uses each parameter's own step count: every parameter takes a step at each update, so
    // each count is the checkpoint's optimizer_steps (one removed, or edited to 3 of 30, resumed to other weights).
    const std::vector<std::string>& kinds = opt->state_kinds();
    if (optimizer_steps > 0 && std::find(kinds.begin(), kinds.end(), "exp_avg") != kinds.end())
      for (size_t i = 0; i < opt->params().size(); ++i) {
        const std::string name = "optimizer.step." + std::to_string(i);
        const auto it =
            std::find_if(ck.tensors.begin(), ck.tensors.end(), [&](const auto& entry) { return entry.first == name; });
        const double count = it == ck.tensors.end() || it->second.numel() != 1 ? -1.0 : it->second.item();
        if (count != static_cast<double>(optimizer_steps))
          throw std::runtime_error(
              path + ": " +
              (count < 0 ? "no one-element tensor '" + name + "'" : "'" + name + "' = " + io::real_text(count)) +
              "; expected parameter " + std::to_string(i) + "'s Adam step count, " + std::to_string(optimizer_steps) +
              " as optimizer_steps (a damaged checkpoint?)");
      }
    if (const auto* adam = dynamic_cast<const AdamBase*>(opt.get()); adam != nullptr && optimizer_steps > 0)
      check_adam_moments(ck, path, *adam);
    for (auto& [p, t] : copies) device::copy(p.raw(), p.device(), t->raw(), Device::cpu, t->nbytes());
    const std::string prefix = "optimizer.";
    for (const auto& [name, t] : ck.tensors)
      if (name.compare(0, prefix.size(), prefix) == 0) {
        try {
          opt->set_state(name.substr(prefix.size()), t);
        } catch (const std::invalid_argument& e) {
          throw std::runtime_error(path + ": " + e.what());
        }
      }
    opt->set_step_count(optimizer_steps);
    scaler = restored;
    // Absent from checkpoints written before it was kept: the next log line then averages fewer steps.
    loss_since_log = Tensor();
    loss_since_log_steps = 0;
    loss_since_log_restored = ck.metadata.count("loss_since_log_steps") != 0;
    if (loss_since_log_restored) {
      loss_since_log_steps = metadata_int(ck.metadata, "loss_since_log_steps", path);
      if (loss_since_log_steps > step)
        throw std::runtime_error(path + ": metadata 'loss_since_log_steps' = " + std::to_string(loss_since_log_steps) +
                                 ", more than the checkpoint's " + std::to_string(step) +
                                 " steps (a damaged checkpoint?)");
    }
    if (loss_since_log_steps > 0) {
      const Tensor& sums = ck.get("train.loss_since_log");
      const auto parts = static_cast<int64_t>(1 + o.loss.parts());  // StepStats::losses: the loss and its parts
      if (sums.dtype() != DType::f32 || sums.shape() != std::vector<int64_t>{parts})
        throw std::runtime_error(path + ": train.loss_since_log is " + sums.describe() + ", expected f32 [" +
                                 std::to_string(parts) + "] (the loss sums since the last log line)");
      loss_since_log = sums.to(o.device);
    }
    // Absent from checkpoints written before it was recorded: their earlier time is then unknown (0).
    if (const auto it = ck.metadata.find("train_seconds"); it != ck.metadata.end()) {
      char* end = nullptr;
      earlier_seconds = std::strtod(it->second.c_str(), &end);
      if (end == it->second.c_str() || *end != '\0' || !(earlier_seconds >= 0 && earlier_seconds < 1e10))
        throw std::runtime_error(path + ": metadata 'train_seconds' = '" + it->second +
                                 "'; expected the seconds trained so far, >= 0");
    }
    if (const auto it = ck.metadata.find("best_val_mean_dice"); it != ck.metadata.end()) {
      char* end = nullptr;
      best_dice = std::strtod(it->second.c_str(), &end);
      // -1 before the first validation, then a Dice: NaN, inf or 1e20 would keep model_best.safetensors forever.
      if (end == it->second.c_str() || *end != '\0' || !(best_dice == -1 || (best_dice >= 0 && best_dice <= 1)))
        throw std::runtime_error(path + ": metadata 'best_val_mean_dice' = '" + it->second +
                                 "'; expected -1 (no validation yet) or a mean Dice in [0, 1]");
    }
    return step;
  }
};

namespace {

// A prepared case in a line: its shapes, spacing and a digest of every byte of its image and label.
std::string case_summary(const io::Case& k) {
  const uint64_t digest =
      content_digest(k.image.raw(), k.image.nbytes()) * 31 + content_digest(k.label.raw(), k.label.nbytes());
  char text[64];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(digest));
  const auto sizes = [](const Tensor& t) {
    std::string out;
    for (int64_t d : t.shape()) out += (out.empty() ? "" : "x") + std::to_string(d);
    return out;
  };
  return "image " + sizes(k.image) + ", label " + sizes(k.label) + ", spacing " + io::real_text(k.spacing[0]) + " x " +
         io::real_text(k.spacing[1]) + " x " + io::real_text(k.spacing[2]) + " mm, digest " + text;
}

// Every rank must train on the same cases: a different dataset.json, or other data behind the same path on another
// machine, would train another model on each rank without a word, or end in a reduction of mismatched sizes. Each
// prepared case (cropped, resampled, normalised) compared with rank 0's by its id, shapes, spacing and a digest of
// every byte of its image and label.
void check_same_cases(Comm& comm, const std::vector<io::Case>& cases, const std::string& json_path) {
  std::vector<std::pair<std::string, std::string>> items;
  for (const io::Case& k : cases) items.emplace_back("training case " + k.id, case_summary(k));
  if (const auto d = comm.compare_with_rank0(items))
    throw TrainerOptionError(json_path + ": " + d->name + ": " + d->here + " on this rank, " + d->on_rank0 +
                             " on rank 0; expected every rank to read the same dataset");
  comm.barrier();  // a rank that differs ends the run (its error aborts every rank) while the others wait here
}
}  // namespace

Trainer::Trainer(TrainerOptions options, std::FILE* out) : s_(std::make_unique<State>()) {
  State& s = *s_;
  s.o = std::move(options);
  s.out = out;
  const TrainerOptions& o = s.o;
  s.comm = o.comm && o.comm->size() > 1 ? o.comm : nullptr;
  if (!s.lead()) s.out = out = nullptr;  // progress lines from rank 0 only
  if (out) {
    std::fprintf(out, "unet_train: %s on the %s backend in %s (%d host threads%s)\n", o.dataset.c_str(),
                 device_name(o.device), precision_name(o.precision), num_threads(), s.comm ? " per rank" : "");
    if (s.comm)
      std::fprintf(out, "unet_train: %d ranks (%s%s), batch %d per rank, global batch %d\n", s.ranks(),
                   s.comm->backend(), s.comm->reduces_on_device(o.device) ? ", gradients by NCCL" : "",
                   o.sampling.batch, o.sampling.batch * s.ranks());
  }
  if (out && o.precision == Precision::tf32 && o.device == Device::cpu)
    std::fprintf(out, "unet_train: precision tf32 computes fp32 on the cpu backend (no TF32 arithmetic)\n");
  s.scaler = LossScaler(o.loss_scaling);
  // A --resume that cannot continue (another configuration, precision or batch, or a step past train.steps) is
  // refused before the data is read and preprocessed.
  if (!o.resume_dir.empty()) {
    const std::string path = s.checkpoint_path(o.resume_dir);
    s.check_resume(io::read_safetensors_metadata(path), path);
  }

  // Data: every case loaded once; normalisation planned on the training cases of the fold.
  s.info = io::read_dataset(o.dataset);
  const size_t n = s.info.training.size();
  if (n < 2 && o.folds > 1)
    throw TrainerOptionError("data.folds: " + s.info.json_path + " lists " + std::to_string(n) +
                             " case(s); set data.folds = 1");
  if (o.folds > 1 && n < static_cast<size_t>(o.folds))
    throw TrainerOptionError("data.folds = " + std::to_string(o.folds) + ": " + s.info.json_path + " lists only " +
                             std::to_string(n) + " cases; expected at least one case per fold (or data.folds = 1)");
  if (o.folds == 1) {
    for (size_t i = 0; i < n; ++i) s.split.train.push_back(i);
  } else {
    s.split = io::kfold_split(n, o.fold, o.folds);
  }
  std::array<double, 3> target{};
  io::NormalizationPlan norm;
  if (o.pipeline == "dle_isbi") {
    // DLE UNet_Medical's (io/dle.h): x / 127.5 - 1 and each slice resized to the network's output size; the sampler
    // zero-pads it by the context to the input size, validation slides one window over it. No crop, no resampling.
    const int64_t out_h = UNet2D::output_size(o.sampling.patch[1]), out_w = UNet2D::output_size(o.sampling.patch[2]);
    if (o.model != "unet2d")
      throw TrainerOptionError("data.pipeline = dle_isbi: DLE UNet_Medical's pipeline takes model.name = unet2d, not " +
                               o.model);
    try {  // as make_network says it, before the pipeline's own demand below
      for (size_t a = 1; a < 3; ++a) check_unet2d_patch_size(o.sampling.patch[a]);
    } catch (const std::invalid_argument& e) {
      throw TrainerOptionError(std::string("data.patch_size: ") + e.what());
    }
    if (out_h != out_w)
      throw TrainerOptionError("data.patch_size = " + std::to_string(o.sampling.patch[1]) + ", " +
                               std::to_string(o.sampling.patch[2]) +
                               ": data.pipeline = dle_isbi resizes each slice to a square output; expected a square "
                               "patch (DLE: 572, 572)");
    for (size_t i = 0; i < n; ++i) s.cases.push_back(io::load_case(s.info, i));
    check_constant_images(s.info, s.cases, s.split.train, s.lead());
    check_label_classes(s.info, s.cases, s.split.train, s.lead());
    target = s.cases[0].spacing;
    norm = io::plan_normalization(s.info, {s.cases[0]});  // kept in the card for its form; dle_isbi does not use it
    for (size_t i = 0; i < n; ++i)
      io::dle_isbi_case(s.cases[i], out_h, s.info.num_classes(), s.info.training[i].image_paths.at(0));
    if (out)
      std::fprintf(out, "unet_train: DLE's ISBI pipeline: %zu slices as x / 127.5 - 1, resized to %ldx%ld\n", n,
                   static_cast<long>(out_h), static_cast<long>(out_w));
  } else {
    // nnU-Net's preprocessing (io/preprocess.h): each case cropped to the box of its non-zero voxels and resampled to
    // the target spacing planned from all training cases (every fold's the same); kept in the cache directory for the
    // next run.
    io::PreprocessOptions po;
    po.cache_dir = o.cache_dir;
    po.write_cache = s.lead();
    io::PreprocessedDataset pre = io::preprocess_dataset(s.info, po);
    if (s.lead())
      for (const std::string& w : pre.warnings) std::fprintf(stderr, "unet_train: warning: %s\n", w.c_str());
    s.cases = std::move(pre.cases);
    const std::set<size_t> constant = check_constant_images(s.info, s.cases, s.split.train, s.lead());
    check_label_classes(s.info, s.cases, s.split.train, s.lead());
    target = pre.target;
    if (out)
      std::fprintf(out, "unet_train: target spacing %.4g, %.4g, %.4g mm (z, y, x); %d of %zu cases resampled%s\n",
                   target[0], target[1], target[2], pre.resampled, n,
                   o.cache_dir.empty()
                       ? ""
                       : (", " + std::to_string(pre.from_cache) + " read from the cache " + o.cache_dir).c_str());
    // From every training case, as nnU-Net's fingerprint: every fold normalises alike (as it plans alike).
    norm = io::plan_normalization(s.info, s.cases);
    for (size_t i = 0; i < s.cases.size(); ++i) {
      io::Case& k = s.cases[i];
      io::normalize_image(k.image, norm);
      if (std::string why = io::nonfinite_problem(k.image); !why.empty())
        throw std::runtime_error(s.info.training[i].image_paths[0] + ": training case " + k.id +
                                 ": after cropping, resampling and normalisation, " + why +
                                 "; expected finite values (values near the f32 limit?)");
      io::pad_case_to(k, o.sampling.patch);
    }
    check_normalised_contrast(s.info, s.cases, s.split.train, constant, s.lead());
  }

  if (s.comm) check_same_cases(*s.comm, s.cases, s.info.json_path);
  for (const io::Case& k : s.cases) {
    char digest[24];
    const std::string summary = case_summary(k);
    std::snprintf(digest, sizeof digest, "%016llx",
                  static_cast<unsigned long long>(content_digest(summary.data(), summary.size())));
    // (A case file name need not be UTF-8, and the checkpoint's header is JSON.)
    s.data_cases += io::json_safe(k.id) + " " + digest + "\n";
  }

  // Model: DynUNet from the nnU-Net plan rule (the target spacing), or UNet2D on slices.
  const std::vector<int> patch(o.sampling.patch.begin(), o.sampling.patch.end());
  const std::vector<double> spacing(target.begin(), target.end());
  const UNetPlan plan = plan_unet(patch, spacing, o.depth);
  ModelCard& card = s.card;
  card.model = o.model;
  if (o.model == "unet2d") {
    card.unet2d = {s.info.num_channels(), s.info.num_classes(), {}, o.dropout};
    for (int i = 0; i < 5; ++i) card.unet2d.filters.push_back(o.filters << i);
  } else if (o.model == "unet3plus") {
    card.unet3plus.in_channels = s.info.num_channels() * patch[0];  // Z adjacent slices in (patch [Z, H, W])
    card.unet3plus.out_channels = s.info.num_classes();
    card.unet3plus.filters.clear();
    for (int i = 0; i < 5; ++i) card.unet3plus.filters.push_back(o.filters << i);
    card.unet3plus.deep_supervision = o.deep_supervision;
    card.unet3plus.cgm = o.cgm;
  } else if (o.model == "dynunet") {
    if (plan.strides.size() < 2)  // no downsampling at all: a network of one level, which DynUNet is not
      throw TrainerOptionError(
          "data.patch_size = " + std::to_string(patch[0]) + ", " + std::to_string(patch[1]) + ", " +
          std::to_string(patch[2]) +
          ": too small to downsample (nnU-Net's plan halves an axis while it keeps at least " +
          "4 voxels and its spacing is within 2x of the finest; target spacing " + io::real_text(spacing[0]) + ", " +
          io::real_text(spacing[1]) + ", " + io::real_text(spacing[2]) +
          " mm), so the network would have a single level; expected a size of at least 8 along an axis of the finest "
          "spacing");
    // The patch must halve evenly at every downsampling of the plan (else the skip connections do not line up).
    std::vector<int> multiple(patch.size(), 1);
    for (const std::vector<int>& stride : plan.strides)
      for (size_t a = 0; a < patch.size(); ++a) multiple[a] *= stride[a];
    std::string sizes, nearest, multiples;
    bool divisible = true;
    for (size_t a = 0; a < patch.size(); ++a) {
      divisible = divisible && patch[a] % multiple[a] == 0;
      const int m = multiple[a], near = std::max(m, (patch[a] + m / 2) / m * m);
      for (auto [text, value] : {std::pair{&sizes, patch[a]}, std::pair{&nearest, near}, std::pair{&multiples, m}})
        text->append(a ? ", " : "").append(std::to_string(value));  // append: GCC 12's false -Wrestrict on "" + s
    }
    if (!divisible)
      throw TrainerOptionError(
          "data.patch_size = " + sizes + ": the network planned for it (model.depth = " + std::to_string(o.depth) +
          ") downsamples by " + multiples +
          " (z, y, x), so each size must be a multiple of that; the nearest valid patch is " + nearest);
    card.net = {s.info.num_channels(), s.info.num_classes(), plan.kernels, plan.strides, {}};
    for (size_t i = 0; i < plan.kernels.size(); ++i)
      card.net.filters.push_back(std::min(o.filters << i, o.max_filters));
    card.net.deep_supervision = o.deep_supervision && plan.kernels.size() >= 4;
    if (o.deep_supervision && !card.net.deep_supervision && out)  // said, not dropped silently
      std::fprintf(out,
                   "unet_train: model.deep_supervision: the planned network has %zu levels, and its heads at 1/2 and "
                   "1/4 resolution need 4 (model.depth >= 3 and a patch that halves 3 times): trained without them\n",
                   plan.kernels.size());
    card.net.res_block = o.res_block;
  } else {
    throw TrainerOptionError("model.name = " + o.model + ": expected dynunet, unet2d or unet3plus");
  }
  card.patch = patch;
  card.spacing = spacing;
  card.normalization = norm;
  for (size_t k = 0; k < s.info.labels.size(); ++k) card.labels[static_cast<int>(k)] = s.info.labels[k];
  card.label_scale = static_cast<int>(s.info.label_divisor);  // labels written as the dataset stores them
  card.pipeline = o.pipeline;
  card.slice_cases = std::all_of(s.cases.begin(), s.cases.end(), [](const io::Case& k) {
    return (k.unpadded_extent[0] > 0 ? k.unpadded_extent[0] : k.image.dim(0)) == 1;
  });
  try {
    s.net = make_network(card);
  } catch (const std::invalid_argument& e) {
    throw TrainerOptionError(std::string("data.patch_size: ") + e.what());
  }
  s.net->initialize(o.seed);
  s.net->to(o.device);  // before the optimizer, which creates its state on the parameters' device
  s.opt = make_optimizer(o, s.net->parameters());
  // SyncBatchNorm runs the comm's collectives inside forward and backward: the reducer then reduces its buckets after
  // backward (no overlap), so that every rank calls them in the same order.
  const bool sync_bn = s.comm && o.sync_batch_norm && s.net->set_batch_norm_comm(s.comm);
  if (s.comm) s.reducer = std::make_unique<GradientReducer>(s.net->parameters(), *s.comm, int64_t(25) << 20, !sync_bn);

  s.sw = window_options(*s.net, patch);
  if (o.loss.hybrid) {  // the SSIM's window (at MS-SSIM's coarsest scale) must fit the logits the loss sees
    const int64_t least = o.loss.hybrid_options.min_side();
    for (size_t a = s.sw.patch.size() - 2; a < s.sw.patch.size(); ++a)
      if (s.sw.patch[a] < least)
        throw TrainerOptionError(
            "train.loss = " + std::string(o.loss.hybrid_options.multiscale ? "hybrid_ms" : "hybrid") +
            ": the network's output is " + std::to_string(s.sw.patch[a]) + " pixels across, the " +
            (o.loss.hybrid_options.multiscale ? "MS-SSIM" : "SSIM") + " needs at least " + std::to_string(least) +
            " (data.patch_size)");
  }
  s.sw.overlap = o.overlap;
  s.sw.blend = o.blend;
  s.dir = o.output_dir;
  if (out)
    std::fprintf(out,
                 "unet_train: %zu training / %zu validation cases (fold %d of %d), patch %ldx%ldx%ld, %lld parameters, "
                 "%s\n",
                 s.split.train.size(), s.split.val.size(), o.fold, o.folds, static_cast<long>(patch[0]),
                 static_cast<long>(patch[1]), static_cast<long>(patch[2]),
                 static_cast<long long>(s.net->parameter_count()),
                 o.model == "unet2d"
                     ? ("UNet2D, logits " + std::to_string(s.sw.patch[1]) + "x" + std::to_string(s.sw.patch[2])).c_str()
                 : o.model == "unet3plus" ? "UNet 3+"
                                          : (std::to_string(plan.kernels.size()) + " levels").c_str());
}

Trainer::~Trainer() = default;

const ModelCard& Trainer::card() const {
  return s_->card;
}

void Trainer::run() {
  State& s = *s_;
  const TrainerOptions& o = s.o;
  namespace fs = std::filesystem;
  const int64_t first_step = o.resume_dir.empty() ? 0 : s.resume(o.resume_dir);
  std::unique_ptr<RunLog> log;  // rank 0's
  if (s.lead()) {
    fs::create_directories(s.dir);
    log = std::make_unique<RunLog>(
        s.dir, first_step,
        "unet_train: " + o.dataset + " (fold " + std::to_string(o.fold) + " of " + std::to_string(o.folds) + ")");
    if (!log->warning().empty()) std::fprintf(stderr, "unet_train: warning: %s\n", log->warning().c_str());
    // The checkpoint's loss sums cannot hold more steps than those since the log's last training line. (Fewer is
    // possible: a crash of the machine can lose the log's last lines, written but not yet on disk, and keep the
    // checkpoint.)
    if (s.loss_since_log_restored && log->warning().empty()) {
      int64_t last_line = 0;
      for (const auto& l : log->lines())
        if (!l.contains("val_dice")) last_line = std::max<int64_t>(last_line, l["step"].get<int64_t>());
      if (s.loss_since_log_steps > first_step - last_line)
        throw std::runtime_error((fs::path(o.resume_dir) / "checkpoint.safetensors").string() +
                                 ": metadata 'loss_since_log_steps' = " + std::to_string(s.loss_since_log_steps) +
                                 ", but log.jsonl's last training line is at step " + std::to_string(last_line) +
                                 "; expected at most " + std::to_string(first_step - last_line) +
                                 ", the steps since (a damaged checkpoint or log?)");
    }
    io::write_file_atomically((s.dir / "config.ini").string(), o.config_text);
    if (first_step > 0 && s.out)
      std::fprintf(s.out, "unet_train: resuming %s at step %ld of %ld\n", o.resume_dir.c_str(),
                   static_cast<long>(first_step), static_cast<long>(o.steps));
  }
  ProgressBar bar(s.out, first_step, o.steps, static_cast<int64_t>(o.sampling.batch) * s.ranks());
  double last_loss = NAN;
  auto last_report = std::chrono::steady_clock::now();
  // A validation: logged, printed, the best model kept (rank 0 writes; every rank takes part in validate()). Resuming
  // a finished run validates again without logging it twice (its log already ends with that validation; a run resumed
  // at its last step from an earlier checkpoint, train.steps lowered to it, logs its validation as the run never
  // interrupted does).
  const bool finished = first_step == o.steps && s.lead() &&
                        std::any_of(log->lines().begin(), log->lines().end(),
                                    [&](const auto& l) { return l.contains("val_dice") && l["step"] == first_step; });
  const auto validation = [&](int64_t at) {
    const std::vector<double> d = s.validate();
    const double m = mean(d);
    const bool best = m > s.best_dice;
    if (best) s.best_dice = m;
    if (s.lead()) {
      if (!(finished && at == first_step)) log->add({{"step", at}, {"val_dice", d}, {"val_mean_dice", m}});
      bar.clear();
      std::fprintf(s.out, "validation at step %ld: mean Dice %.4f%s\n", static_cast<long>(at), m,
                   best ? " (best so far: model_best.safetensors)" : "");
      std::fflush(s.out);
      if (best) {
        s.check_state_finite(at);
        save_weights((s.dir / "model_best.safetensors").string(), *s.net, card_to_metadata(s.card));
      }
      log->write_report();
    }
    return d;
  };

  LrSchedule schedule{o.scheduler, o.lr, o.steps, o.warmup_steps};
  io::PatchSamplerOptions so = o.sampling;
  so.seed = o.seed;
  so.rank = s.rank();
  so.ranks = s.ranks();
  so.augment.in_plane = s.net->spatial_dims() == 2;  // slices: nothing moves across z
  so.augment.dle_isbi = o.pipeline == "dle_isbi";
  so.augment.classes = s.info.num_classes();
  so.pinned = o.device == Device::cuda;  // asynchronous uploads of the batches
  // On a GPU the transforms run on the uploaded batch (io::augment_batch), not on the loader's threads; the rotation,
  // which needs the region around the patch, stays with the sampler.
  so.augment.on_device = o.device != Device::cpu && !so.augment.dle_isbi;
  io::PatchSampler sampler(s.cases, s.split.train, so);
  // Each step's batch depends only on (seed, step): resuming draws what was next, whatever the number of workers.
  io::BatchLoader loader(sampler, first_step, o.loader_workers, o.prefetch);

  using clock = std::chrono::steady_clock;
  auto start = clock::now(), last = start;
  s.session_start = start;
  const int64_t log_every = std::max<int64_t>(1, o.log_every);
  Tensor& loss_acc = s.loss_since_log;  // read from the device once per log line
  int64_t& loss_n = s.loss_since_log_steps;
  int64_t timed_n = 0;  // steps of this session since the last line (samples/s)
  ops::set_conv_allow_tf32(o.precision == Precision::tf32);
  HostAllocator::instance().reset_peak();
  device::reset_peak(o.device);
  // The log line of the steps since the last one, ending at step `at`.
  const auto log_line = [&](int64_t at) {
    std::vector<float> sums = loss_acc.to_vector();  // the wait for the device that logging costs
    const double loss = sums[0] / loss_n;
    if (!std::isfinite(loss))
      throw std::runtime_error("training diverged: the loss of steps " + std::to_string(at + 1 - loss_n) + " to " +
                               std::to_string(at) + " is not finite");
    const double dt = std::chrono::duration<double>(clock::now() - last).count();
    last = clock::now();
    const double sps = timed_n * so.batch * s.ranks() / dt;  // the global batch's samples
    nlohmann::json line = {{"step", at}, {"loss", loss}};
    // The full-resolution loss's parts under their names (models/run_log.cpp plots dice_loss and ce).
    const std::vector<const char*> names = o.loss.hybrid ? std::vector<const char*>{"focal", "ssim_loss", "iou_loss"}
                                                         : std::vector<const char*>{"dice_loss", "ce"};
    for (size_t i = 0; i < names.size(); ++i) line[names[i]] = sums[i + 1] / loss_n;
    // Host memory: the CPU pool's peak, plus the GPU build's pinned batches.
    const size_t host_peak = HostAllocator::instance().stats().peak_bytes + device::pinned_memory_stats().peak_bytes;
    line.update(nlohmann::json{{"lr", s.opt->lr()},
                               {"samples_per_s", sps},
                               {"loss_scale", s.scaler.scale()},
                               {"loss_scale_growth_tracker", s.scaler.growth_tracker()},
                               {"skipped_steps", s.scaler.skipped_steps()},
                               {"peak_memory_mb", host_peak / 1048576.0}});
    // Tensors on a GPU (or the emulated one) are not in the host's figure: the device's peak beside it.
    if (o.device != Device::cpu) line["device_peak_memory_mb"] = device::memory_stats(o.device).peak_bytes / 1048576.0;
    if (s.reducer) {
      const ReducerTimes t = s.reducer->last_times();  // of the last step: the communication and what was exposed
      line["allreduce_ms"] = t.communication_s * 1e3;
      line["allreduce_exposed_ms"] = t.exposed_s * 1e3;
    }
    last_loss = loss;
    if (s.lead()) {
      log->add(line);
      if (!bar.active()) {  // on a terminal the bar shows it
        std::fprintf(s.out, "step %6ld/%ld  loss %.4f  %.2f samples/s  %.0f s\n", static_cast<long>(at),
                     static_cast<long>(o.steps), loss, sps,
                     std::chrono::duration<double>(clock::now() - start).count());
        std::fflush(s.out);
      }
      if (clock::now() - last_report > std::chrono::seconds(30)) {
        log->write_report();
        last_report = clock::now();
      }
    }
    loss_acc = Tensor();
    loss_n = 0;
    timed_n = 0;
  };
  // A run resumed at its last step from a checkpoint written before that step's log line (train.steps lowered to the
  // checkpoint's step): the line the run never interrupted writes there.
  if (first_step == o.steps && loss_n > 0) {
    s.opt->set_lr(schedule.at(o.steps - 1));
    log_line(o.steps);
  }
  for (int64_t step = first_step; step < o.steps; ++step) {
    s.opt->set_lr(schedule.at(step));
    io::PatchBatch batch = loader.next();
    // The step's dropout draws from (seed, step), as its batch does: a resumed run repeats it.
    const uint64_t step_seed = o.seed * 0x9e3779b97f4a7c15ull + static_cast<uint64_t>(step) + 1;
    Tensor image = batch.image.to(o.device), label = batch.label.to(o.device);
    if (so.augment.on_device) io::augment_batch(image, label, batch.augment, so.augment.in_plane);
    const StepStats st =
        train_step(*s.net, *s.opt, image, label, o.precision, &s.scaler, s.reducer.get(), step_seed, o.loss);
    {
      autograd::NoGradGuard no_grad;
      loss_acc = loss_acc.defined() ? ops::add(loss_acc, st.losses) : st.losses;
    }
    ++loss_n;
    ++timed_n;
    if ((step + 1) % log_every == 0 || step + 1 == o.steps) log_line(step + 1);
    if (s.lead()) bar.update(step + 1, last_loss);
    if (o.val_every > 0 && (step + 1) % o.val_every == 0 && step + 1 < o.steps && !s.split.val.empty()) {
      validation(step + 1);
      s.save(step + 1);
    } else if (o.save_every > 0 && (step + 1) % o.save_every == 0 && step + 1 < o.steps) {
      s.save_checkpoint(step + 1);
    }
  }
  if (s.lead()) bar.finish();
  // Every step skipped for inf/nan gradients (fp16 with too large a loss scale, or gradients that overflow at any
  // scale): the weights are the initial ones, which must not be written as a trained model.
  if (s.opt->step_count() == 0)
    throw std::runtime_error("no optimizer step was taken: all " + std::to_string(o.steps) +
                             " steps were skipped for inf or nan gradients (loss scale now " +
                             io::real_text(s.scaler.scale()) +
                             "); expected a smaller train.loss_scale_init, train.precision = bf16 or fp32, or a "
                             "smaller train.lr");
  if (s.scaler.skipped_steps() > 0 && s.lead())
    std::fprintf(s.out, "unet_train: %ld of %ld steps skipped for inf or nan gradients (loss scale now %s)\n",
                 static_cast<long>(s.scaler.skipped_steps()), static_cast<long>(o.steps),
                 io::real_text(s.scaler.scale()).c_str());
  nlohmann::json result = {{"steps", o.steps},
                           {"train_seconds", s.train_seconds()}};  // every session's, for a resumed run
  if (!s.split.val.empty()) {
    const std::vector<double> d = validation(o.steps);
    result["val_dice"] = d;
    result["val_mean_dice"] = mean(d);
    result["best_val_mean_dice"] = s.best_dice;
    if (s.lead())
      std::fprintf(s.out, "validation (fold %d, %zu cases): mean Dice %.4f\n", o.fold, s.split.val.size(), mean(d));
  }
  s.save(o.steps);  // after the last validation, so that a resumed run knows the best Dice
  if (!s.lead()) return;
  log->write_report();
  io::write_file_atomically((s.dir / "validation.json").string(),
                            result.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
  std::fprintf(s.out, "unet_train: wrote %s\n", (s.dir / "model.safetensors").string().c_str());
}

}  // namespace unet::models
