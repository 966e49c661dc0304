// Differentiable operations on tensors: the public op API of the engine.
// Each op validates its arguments (throwing std::invalid_argument that names the shapes), dispatches to the
// kernels of the tensor's device, and records one autograd node when an input requires grad.
// Layout: activations channels-last [N, (D,) H, W, C]; the spatial rank is rank - 2 (1..3).
// Implementations: engine/ops/<family>.cpp.
#pragma once
#include <vector>

#include "engine/tensor.h"

namespace unet {
class Comm;  // engine/comm.h
}  // namespace unet

namespace unet::ops {

// ---- elementwise (engine/ops/elementwise.cpp) ----
Tensor add(const Tensor& a, const Tensor& b);  // same shape and dtype
Tensor scale(const Tensor& a, float alpha);    // alpha * a
Tensor sum(const Tensor& a);                   // all elements -> shape [1]

// ---- convolution (engine/ops/conv.cpp) ----
// x [N, spatial..., C], w [K, kernel..., C] (KTRSC / KRSC), bias [K] or undefined; stride and pad per spatial axis.
// Output spatial size (in + 2 pad - k) / stride + 1 (floor); cross-correlation as in PyTorch.
// Process-wide: f32 convolutions on CUDA devices run on TF32 tensor cores (inputs rounded to 10 mantissa bits, f32
// accumulation; about 1e-3 relative from fp32) instead of fp32 SIMT. Off by default; no effect on the CPU.
void set_conv_allow_tf32(bool allow);
Tensor conv(const Tensor& x, const Tensor& w, const Tensor& bias, const std::vector<int>& stride,
            const std::vector<int>& pad);
// conv, with the statistics of y for the instance norm that follows: stats f32 [N, K, 2], per (sample, channel) the
// sum and the sum of squares of y as stored, computed by the convolution's epilogue (kernels/conv.h; no pass of its
// own over y on CUDA). Not differentiable: the norm that reads them differentiates through y.
struct ConvStats {
  Tensor y, stats;
};
ConvStats conv_stats(const Tensor& x, const Tensor& w, const Tensor& bias, const std::vector<int>& stride,
                     const std::vector<int>& pad);
// Transposed convolution with kernel == stride (non-overlapping windows), as nnU-Net's upsampling:
// x [N, spatial..., C], w [K, kernel..., C] (K = output channels), bias [K] or undefined; out spatial = in * kernel.
Tensor conv_transpose(const Tensor& x, const Tensor& w, const Tensor& bias);
// Transposed convolution with any kernel, stride and padding, as PyTorch's ConvTranspose2d / 3d
// (engine/ops/conv_transpose_general.cpp): x [N, spatial..., C_in], w [C_in, kernel..., C_out] (PyTorch's
// [C_in, C_out, kernel...] with C_out moved last), bias [C_out] or undefined; out spatial =
// (in - 1) * stride - 2 pad + kernel + output_pad, 0 <= output_pad < stride (empty: zeros).
Tensor conv_transpose_general(const Tensor& x, const Tensor& w, const Tensor& bias, const std::vector<int>& stride,
                              const std::vector<int>& pad, const std::vector<int>& output_pad = {});

// ---- normalisation and activations (engine/ops/norm.cpp, engine/ops/activation.cpp) ----
// Instance norm: per (sample, channel) over all spatial positions, biased variance, then gamma * xhat + beta.
// gamma and beta [C] (either may be undefined: no affine part).
Tensor instance_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps = 1e-5f);
// leaky_relu(instance_norm(x, gamma, beta, eps), negative_slope) as one op (nnU-Net's norm + activation): the same
// bits forward and backward, without storing the normalised value (one activation less saved per normalisation).
// negative_slope must be >= 0.
Tensor instance_norm_leaky_relu(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps,
                                float negative_slope);
// The same from the statistics of x that conv_stats returned with it: one pass over x instead of two. The variance is
// E[x^2] - mean^2 from f32 sums (in double from there), where the form above merges exact per-chunk two-pass
// statistics: the two agree to about 1e-6 relative unless |mean| >> std.
Tensor instance_norm_leaky_relu(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps,
                                float negative_slope, const Tensor& stats);
// conv(instance_norm_leaky_relu(x, gamma, beta, eps, negative_slope, x_stats), w, bias, stride, pad) as one op, with
// the statistics of its output as conv_stats (engine/ops/norm_act_conv.cpp): the same bits, but the normalised
// activation is never stored (CUDA applies it as the convolution loads x) and only x is kept for backward, which makes
// the activation again.
ConvStats norm_act_conv(const Tensor& x, const Tensor& x_stats, const Tensor& gamma, const Tensor& beta, float eps,
                        float negative_slope, const Tensor& w, const Tensor& bias, const std::vector<int>& stride,
                        const std::vector<int>& pad);
// Batch normalisation of x [N, spatial..., C] per channel over batch and space (torch.nn.BatchNorm2d / 3d), then
// ReLU when `relu` (one op). training: normalised by the batch's statistics (biased variance); running_mean and
// running_var (f32 [C] buffers, no gradient) are updated in place with `momentum` and the unbiased variance;
// differentiable in x, gamma, beta. Evaluation: normalised by the running statistics, without a gradient (an error
// when autograd would record). gamma and beta f32 [C] or undefined; x f32, f16 or bf16.
struct BatchNormOptions {
  bool training = true;
  float momentum = 0.1f;  // PyTorch's convention: new = (1 - momentum) * old + momentum * batch (Keras' is 1 - this)
  float eps = 1e-5f;
  bool relu = false;
  // Training with a comm of several ranks: SyncBatchNorm. The statistics are those of every rank's x together (each
  // rank passes the same shape), reduced over the ranks, and so are the sums the backward needs; dgamma and dbeta
  // are this rank's share (a GradientReducer sums them). The comm's collectives run inside forward and backward: a
  // GradientReducer beside it must not overlap (overlap = false), so that every rank calls them in the same order.
  Comm* comm = nullptr;
};
Tensor batch_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& running_mean,
                  const Tensor& running_var, const BatchNormOptions& options);
Tensor leaky_relu(const Tensor& x, float negative_slope);
Tensor relu(const Tensor& x);

// ---- shape and type ops (engine/ops/shape.cpp) ----
Tensor concat_channels(const std::vector<Tensor>& xs);                     // along the last (channel) axis
Tensor upsample_nearest(const Tensor& x, const std::vector<int>& factor);  // integer factor per spatial axis
Tensor cast(const Tensor& x, DType dtype);  // f32 <-> f16 <-> bf16, round to nearest even; gradient cast back
Tensor argmax_channels(const Tensor& x);    // [N, spatial..., C] -> i32 [N, spatial...]; first maximum wins; no grad
// The box [start, start + size) of the spatial axes, zeros where it leaves x (start may be negative, the box larger
// than x): UNet2D's centre crop and zero padding alike (engine/ops/crop.cpp). Any dtype.
Tensor crop(const Tensor& x, const std::vector<int64_t>& start, const std::vector<int64_t>& size);
// Bilinear resampling of x [N, H, W, C] to [N, size[0], size[1], C], as PyTorch's F.interpolate(x, size,
// mode="bilinear", align_corners) (engine/ops/resize.cpp, kernels/resize.h); align_corners = false is also Keras'
// UpSampling2D(interpolation="bilinear"), UNet 3+'s upsampling in DLE. f32, f16 or bf16, computed in f32.
Tensor upsample_bilinear(const Tensor& x, const std::vector<int64_t>& size, bool align_corners);

// ---- pooling and dropout (engine/ops/pool.cpp, engine/ops/dropout.cpp) ----
// Max pooling of x [N, H, W, C] or [N, D, H, W, C] with window == stride (PyTorch's MaxPool2d(k) / MaxPool3d(k)):
// out size floor(in / window); ties go to the first element of the window, NaN propagates.
Tensor max_pool(const Tensor& x, const std::vector<int>& window);
// Inverted dropout: each element kept with probability 1 - p and scaled by 1 / (1 - p), else 0; 0 <= p < 1. The mask is
// a function of (seed, element index) only: the same on every backend, recomputed by backward. Call it in training
// only, with a seed per step and layer.
Tensor dropout(const Tensor& x, float p, uint64_t seed);
// While one lives (on this thread), dropout numbers its input's elements from `first` samples (dim 0) on: a rank
// holding samples [first, first + b) of the global batch drops what one process holding the whole batch drops there.
class DropoutSampleOffset {
 public:
  explicit DropoutSampleOffset(int64_t first);
  ~DropoutSampleOffset();
  DropoutSampleOffset(const DropoutSampleOffset&) = delete;
  DropoutSampleOffset& operator=(const DropoutSampleOffset&) = delete;

 private:
  int64_t previous_;
};

// ---- losses (engine/ops/loss.cpp) ----
// nnU-Net DiceCE (docs/reference.md, "DiceCE loss"): p = softmax over channels of logits [N, spatial..., C] (f32);
// labels i32 or u8, [N, spatial...] or [N, spatial..., 1], values in [0, C).
// D = mean over foreground classes c >= 1 of 1 - (2 sum p y + 1e-5) / (sum p + sum y + 1e-5), sums over batch and
// space; CE = mean over all voxels of -log p[label]. Returns D + CE as a [1] tensor on the logits' device; *parts (when
// given) receives [D, CE] there too, so nothing waits for a device. A label outside [0, C) is an error naming the voxel
// on the cpu; on a CUDA device (where checking would mean waiting) it makes the loss and its parts NaN.
// With a comm of several ranks (data parallel, engine/comm.h), logits and labels are this rank's share of the global
// batch (the same shape on every rank): the sums are reduced over the ranks before D is formed and CE is the mean over
// every rank's voxels, so every rank gets the global batch's loss, and backward gives this rank's share of its
// gradient (summed over ranks by engine/data_parallel.h).
//
// form picks the Dice (kernels/loss.h, DiceForm): the default is nnU-Net's above; kDleDiceCe is DLE UNet_Medical's
// (SPEC 1.2): per sample and class, background included, 1 - (2 sum p y + 1e-6) / (sum p^2 + sum y^2 + 1e-6), the
// mean over samples and classes; CE as above. With a comm, that mean is over every rank's samples.
struct DiceCeForm {
  bool per_sample = false;  // one Dice per sample, averaged, instead of one over the batch
  bool squared = false;     // sum p^2 + sum y^2 in the denominator instead of sum p + sum y
  bool background = false;  // class 0 in the Dice mean
  double smooth = 1e-5;     // MONAI DiceLoss smooth_nr = smooth_dr = 1e-5 (DLE nnU-Net)
};
inline constexpr DiceCeForm kDleDiceCe{true, true, true, 1e-6};
Tensor dice_ce_loss(const Tensor& logits, const Tensor& labels, Tensor* parts = nullptr, Comm* comm = nullptr,
                    const DiceCeForm& form = {});

// UNet 3+'s hybrid loss (SPEC 1.3, DLE UNet3P's unet3p_hybrid_loss) on 2D logits [N, H, W, C] (H, W >= 11) and
// labels [N, H, W] (i32 or u8): focal + (1 - SSIM) + IoU loss of the softmax against the one-hot labels, each term
// weighted 1 (kernels/cpu/hybrid_loss.h has the formulas: focal alpha 4, gamma 2, eps 1e-9; tf.image.ssim's 11 x 11
// Gaussian window; IoU over every pixel and class). Returns the loss [1] on the logits' device; *parts receives
// [focal, 1 - SSIM, IoU loss]. With a comm of several ranks the sums are reduced first, so every rank gets the
// global batch's loss and backward gives this rank's share of its gradient. A label outside [0, C) is an error
// naming the pixel.
struct HybridLossOptions {
  double focal_alpha = 4;  // DLE's focal_loss
  double focal_gamma = 2;
  bool multiscale = false;  // MS-SSIM (the paper's, tf.image.ssim_multiscale) instead of SSIM (DLE's)
  // The least H and W: the 11 x 11 window must fit (at MS-SSIM's coarsest scale, 1/16 of the image).
  int64_t min_side() const { return multiscale ? 161 : 11; }
};
Tensor hybrid_loss(const Tensor& logits, const Tensor& labels, Tensor* parts = nullptr, Comm* comm = nullptr,
                   const HybridLossOptions& options = {});

// UNet 3+'s classification-guided module (engine/ops/classification.cpp, kernels/classification.h).
// presence_mask: f32 logits [N, 2] (absent, present) -> f32 [N], 1 where "present" wins the argmax (ties: absent); no
// gradient. scale_samples: x [N, ...] (f32, f16 or bf16) times mask[n] per sample, the gradient to x only.
// presence_bce_loss: the mean over the global batch's 2N logits of BCE with logits against {absent, present}, present
// when any of the sample's labels is > 0 (comm: the sum reduced over its ranks, so the loss is the global batch's).
Tensor presence_mask(const Tensor& z);
Tensor scale_samples(const Tensor& x, const Tensor& mask);
Tensor presence_bce_loss(const Tensor& z, const Tensor& labels, Comm* comm = nullptr);

}  // namespace unet::ops
