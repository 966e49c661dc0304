// A dataset's cases preprocessed for training, as nnU-Net does (docs/reference.md, "Preprocessing"): each case
// loaded, cropped to the box of its non-zero voxels and resampled to the target spacing planned from the training
// cases (io/resample.h). Normalisation comes after, per fold (io/dataset.h).
//
// With a cache directory, the work is kept on disk and reused while neither the data nor the plan changes:
// fingerprint.json records per case a stamp of its source files (path, size, modification time) with its spacing,
// cropped size and a checksum of the three, so the target spacing is planned without reading unchanged images;
// CASE.preprocessed.safetensors holds the preprocessed image and label with the stamp and the target spacing they
// were made for (an ending no run file has, so a cache may share a directory with a run). A case whose stamp or
// target differs is preprocessed again and its file replaced (atomically); a damaged case file is an error naming it,
// a damaged or edited fingerprint entry a warning (PreprocessedDataset::warnings) that makes its case stale. Names
// and paths that are not UTF-8 are written to the JSON with those bytes as %XX.
#pragma once
#include <array>
#include <string>
#include <vector>

#include "io/dataset.h"

namespace unet::io {

struct PreprocessOptions {
  std::string cache_dir;    // empty: no cache
  bool write_cache = true;  // false: read a valid cache but write nothing (the ranks other than 0)
};

struct PreprocessedDataset {
  std::vector<Case> cases;            // every case of info.training, in order, at `target` spacing
  std::array<double, 3> target;       // planned from every training case, whatever the fold
  int resampled = 0;                  // cases whose spacing differed from the target
  int from_cache = 0;                 // cases read from the cache
  std::vector<std::string> warnings;  // "PATH: what": damaged fingerprint entries, whose cases were made again
};

// The cases of info.training preprocessed. The target spacing is planned from all of them, the dataset's fingerprint
// as nnU-Net plans it: every fold of a cross-validation gets the same plan (and shares the cache).
PreprocessedDataset preprocess_dataset(const DatasetInfo& info, const PreprocessOptions& options);

}  // namespace unet::io
