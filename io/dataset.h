// Medical Segmentation Decathlon datasets for training: dataset.json parsing and validation, case loading (image
// [Z, Y, X, C] f32 + label [Z, Y, X] u8 on the same grid), nnU-Net intensity normalisation (CT and z-score, below),
// zero-padding to the patch size, the 5-fold split, and PatchSampler, which cuts random training patches with
// foreground oversampling and flips into batch tensors. Volumes are held once; patches are copies.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/random.h"
#include "engine/tensor.h"
#include "io/augment.h"

namespace unet::io {

// ---- dataset.json ------------------------------------------------------------------------------------------------

struct DatasetCase {
  std::string id;                        // "case_000": the image's file stem (MSD), the case identifier (nnU-Net v2)
  std::vector<std::string> image_paths;  // resolved: one file of every channel (MSD), or one file per channel (v2)
  std::string label_path;
  int64_t page = -1;  // ISBI 2012: the case is this page (z slice) of the image and label stacks; -1: whole files
};

struct DatasetInfo {
  std::string format;        // "msd", "nnunetv2" or "isbi2012"
  double label_divisor = 1;  // label file values / this = class (ISBI 2012 stores its two classes as 0 and 255)
  std::string dir;           // the dataset directory
  std::string json_path;     // dir/dataset.json
  std::string name, description;
  std::vector<std::string> modalities;  // per channel, from "modality" {"0": "CT", ...}
  std::vector<std::string> labels;      // per label value, from "labels" {"0": "background", ...}
  std::vector<DatasetCase> training;
  std::vector<std::string> test;  // resolved image paths
  int num_channels() const { return static_cast<int>(modalities.size()); }
  int num_classes() const { return static_cast<int>(labels.size()); }
};

// Reads a dataset directory in any of the layouts below: ISBI 2012 (train-volume.tif and train-labels.tif, no
// dataset.json), or dir/dataset.json of nnU-Net v2 ("channel_names") or of the Medical Segmentation Decathlon
// ("modality"). Throws std::runtime_error naming the json file, the key and what was expected, or the missing file.
DatasetInfo read_dataset(const std::string& dir);

// ISBI 2012 (EM segmentation of neuronal structures): train-volume.tif (8-bit pages), train-labels.tif (the same pages,
// 0 = membrane, 255 = cell), optional test-volume.tif (listed in `test`). Each page is a case ("train-volume_00", ...),
// so folds split the slices as DLE's UNet_Medical does; classes "membrane" (0) and "cell" (1).
DatasetInfo read_isbi_dataset(const std::string& dir);

// MSD: keys modality, labels, training required; name, description, numTraining, numTest, test optional but checked
// when present. Paths are relative to dir ("./imagesTr/x.nii.gz"). Every listed file must exist.
DatasetInfo read_msd_dataset(const std::string& dir);

// nnU-Net v2 raw data: keys channel_names ({"0": "CT", ...}), labels ({"background": 0, "liver": 1, ...}: consecutive
// values from 0; region-based labels are not supported), numTraining and file_ending (".nii.gz", ".tif", ...)
// required. The cases are the label files labelsTr/CASE{file_ending}; each has one image file per channel,
// imagesTr/CASE_0000{file_ending}, CASE_0001..., which must all exist; numTraining must count them.
DatasetInfo read_nnunet_v2_dataset(const std::string& dir);

// ---- cases -------------------------------------------------------------------------------------------------------

struct Case {
  std::string id;
  Tensor image;                   // f32 [Z, Y, X, C]
  Tensor label;                   // u8 [Z, Y, X]
  std::array<double, 3> spacing;  // mm (z, y, x)
  // What pad_case_to added before the case along z, y, x, and the extent it had ({0, 0, 0}: never padded).
  std::array<int64_t, 3> pad_before{}, unpadded_extent{};
};

// Loads training case i: the image must have num_channels() channels (channel files of nnU-Net v2: one each, on one
// grid), the label one channel on the image's grid (same dimensions and spacing), and integer values in
// [0, num_classes()). Errors name the files.
Case load_case(const DatasetInfo& info, size_t i);

// ---- intensity normalisation (nnU-Net) -----------------------------------------------------------------------------
// Per channel, by modality: "CT" (case-insensitive) -> clip to the 0.5 / 99.5 percentiles of the foreground voxels
// (label > 0) of the training set, then subtract their mean and divide by their std (statistics of the unclipped
// voxels, as nnU-Net). Any other modality -> z-score per case over the non-zero mask (voxels where any channel is
// non-zero; the whole volume when it has no zeros), voxels outside the mask set to 0.

struct ChannelNormalization {
  bool ct = false;
  double mean = 0, std = 1, lower = 0, upper = 0;  // CT statistics (unused for z-score channels)
  // What makes CT statistics unusable, or "": each finite, std > 0, lower <= upper, |mean| and std below 1e30 (beyond,
  // (x - mean) / std loses the image in f32). unet_train refuses to plan them, unet_infer to load them.
  std::string ct_problem() const;
};

struct NormalizationPlan {
  std::vector<ChannelNormalization> channels;
  std::string to_json() const;  // for checkpoint metadata
  static NormalizationPlan from_json(const std::string& text);
};

// CT statistics from every `ct_sample_stride`-th foreground voxel of each case (nnU-Net samples every 10th).
NormalizationPlan plan_normalization(const DatasetInfo& info, const std::vector<Case>& training_cases,
                                     int ct_sample_stride = 10);

// Normalises image ([Z, Y, X, C] f32) in place: every Tensor sharing its storage (copies of a Case) sees the change.
void normalize_image(Tensor& image, const NormalizationPlan& plan);

// np.percentile's linear interpolation (q in [0, 100]) of `values` (reordered). Throws on an empty vector.
double percentile(std::vector<float>& values, double q);

// ---- padding -----------------------------------------------------------------------------------------------------

// Zero-pads image and label (background) so that every spatial dimension is at least min_size, centred as nnU-Net
// (the odd voxel goes after). No-op when already large enough.
void pad_case_to(Case& c, const std::array<int64_t, 3>& min_size);
// The case as it was before pad_case_to (a copy; the case itself when never padded): validation segments what
// unet_infer would be given, not the zeros the sampler needs around a case smaller than the patch (a 64x64 page padded
// to a 188x188 UNet2D patch took 9 times the windows, and its zeros could count as false positives).
Case unpadded(const Case& c);

// ---- cross-validation --------------------------------------------------------------------------------------------

struct FoldSplit {
  std::vector<size_t> train, val;  // case indices, ascending
};

// k-fold split: the indices 0..n-1 are shuffled by a Fisher-Yates shuffle driven by Rng(seed); fold k validates on
// positions [n*k/folds, n*(k+1)/folds) of the shuffled order and trains on the rest. Every case is validated in
// exactly one fold. (Same idea as DLE's sklearn KFold(shuffle=True, random_state=12345), not the same permutation.)
FoldSplit kfold_split(size_t n, int fold, int folds = 5, uint64_t seed = 12345);

// ---- patch sampling ----------------------------------------------------------------------------------------------

struct PatchSamplerOptions {
  std::array<int64_t, 3> patch{64, 64, 64};  // (z, y, x) voxels
  int batch = 2;
  double foreground_prob = 0.4;  // chance a patch is placed to contain a random foreground voxel
  AugmentOptions augment;        // DLE's augmentation by default (io/augment.h); AugmentOptions::none() for none
  uint64_t seed = 0;
  int max_locations_per_class = 10000;  // foreground voxels remembered per class and case (as nnU-Net)
  // Data parallel: `batch` is per rank; the global batch of a step has batch * ranks samples and this sampler draws
  // samples rank * batch .. (rank + 1) * batch - 1 of it.
  int rank = 0, ranks = 1;
  // Batches in page-locked host memory (Tensor::empty_pinned), for training on a GPU: their uploads are then
  // asynchronous. Off elsewhere (on a GPU build it would create a CUDA context); the batches are the same either way.
  bool pinned = false;
};

struct PatchBatch {
  Tensor image;                                 // f32 [B, Z, Y, X, C]
  Tensor label;                                 // i32 [B, Z, Y, X]
  std::vector<size_t> case_index;               // index into the sampler's `cases`, per batch item
  std::vector<std::array<int64_t, 3>> origin;   // patch corner in the volume (may be negative: zero padding)
  std::vector<std::array<double, 3>> rotation;  // angles (radians) about z, y, x; zero when not rotated
  std::vector<AugmentRecord> augment;           // what augment() did (on_device: drew), per batch item
};

// Draws batches of random patches from a set of cases, deterministically: sample g of the global batch of step s comes
// from its own random stream, keyed by (seed, s, g), so the global batch is the same whatever the number of ranks,
// threads or loader workers. For each sample: a case uniformly; with probability foreground_prob (if the case has
// foreground) a foreground class uniformly among those present, a voxel of it, and the patch centred on it (shifted to
// stay inside the volume, so the voxel is always inside); otherwise a uniform position. Volumes smaller than the patch
// are zero-padded (image 0, label background), centred as nnU-Net. With rotation enabled, a larger region around the
// patch is cut and rotated about the patch's centre (io/augment.h, rotate_crop). Then augment() (zoom, flips, noise,
// blur, brightness, contrast, and gamma and low resolution when enabled), or with augment.on_device only its draws,
// which the batch's `augment` records carry to io::augment_batch.
// The cases are referenced, not copied: they must outlive the sampler. sample() and batch() are const and
// thread-safe.
class PatchSampler {
 public:
  // Samples from cases[i] for i in `which` (all cases when empty), e.g. the training indices of a fold.
  PatchSampler(const std::vector<Case>& cases, std::vector<size_t> which, PatchSamplerOptions options);
  PatchBatch next();  // this rank's share of the next step's global batch (samples in parallel over the threads)
  int64_t step() const { return step_; }  // the step next() draws
  void set_step(int64_t step) { step_ = step; }

  // Item b (0 <= b < batch) of this rank's share of step `step`: its image, label and what was drawn.
  struct Drawn {
    Sample sample;
    size_t case_index;
    std::array<int64_t, 3> origin;
    std::array<double, 3> rotation;
    AugmentRecord augment;
  };
  Drawn sample(int64_t step, int64_t b) const;
  PatchBatch batch(int64_t step) const;  // every item of `step`, assembled
  // An empty batch of this sampler's shapes, and item b of it filled from a Drawn sample.
  PatchBatch empty_batch() const;
  static void put(PatchBatch& batch, int64_t b, const Drawn& d);
  const PatchSamplerOptions& options() const { return opt_; }

 private:
  struct CaseRef {
    const Case* c;
    size_t index;
    std::vector<std::vector<int64_t>> fg;  // per present foreground class: flat voxel indices
  };
  std::vector<CaseRef> refs_;
  PatchSamplerOptions opt_;
  int64_t step_ = 0;
  int channels_ = 0;
};

}  // namespace unet::io
