// Data-parallel training and inference as users run them: unet_train and unet_infer under `mpirun` and Slurm's `srun`
// with real MPI processes (each case says so and passes when mpirun, or a Slurm cluster, is absent). The collectives
// themselves are checked by tests/mpi/comm_check.cpp; here: the global batch does not depend on the rank count, a
// failing rank ends the run, Ctrl-C stops every rank, and inference split over ranks writes what one process writes.
#include <sys/wait.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "engine/random.h"
#include "io/dataset.h"
#include "io/nifti.h"
#include "models/checkpoint.h"
#include "tests/test_util.h"

using namespace unet;
namespace fs = std::filesystem;
using test::shell;
using test::write_text;

namespace {

// "mpirun ..." with what OpenMPI needs here (root, more ranks than cores, one thread per rank), or "" without mpirun.
std::string mpirun() {
  std::string path;
  if (shell("command -v mpirun", &path) != 0) return "";
  return "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 mpirun --oversubscribe";
}

// "srun --mpi=pmix ..." when a Slurm cluster takes jobs here (tools/slurm_local.sh makes a one-node one), or "".
std::string srun() {
  std::string states;
  if (shell("command -v srun > /dev/null && sinfo -h -o %t", &states) != 0) return "";
  if (states.find("idle") == std::string::npos && states.find("mix") == std::string::npos) return "";
  return "OMP_NUM_THREADS=1 srun --mpi=pmix --overcommit";
}

// The training configuration of these tests: 32^3 patches, 4 levels (so deep supervision: four losses a step, each
// reduced over the ranks), 5 steps, a log line each.
std::string train_config(const std::string& dir, const std::string& data) {
  return write_text(dir + "/train.ini",
                    "[data]\ndataset = " + data +
                        "\npatch_size = 32,32,32\n"
                        "[model]\nfilters = 4\ndepth = 4\n[train]\nsteps = 5\nlog_every = 1\nseed = 3\n");
}

std::vector<double> logged_losses(const std::string& run) {
  std::vector<double> losses;
  std::ifstream log(run + "/log.jsonl");
  for (std::string l; std::getline(log, l);) {
    nlohmann::json j = nlohmann::json::parse(l);
    if (j.contains("loss")) losses.push_back(j["loss"].get<double>());
  }
  return losses;
}

// How far apart two checkpoints are: the largest difference of a weight relative to the largest weight of the model,
// the same relative to the largest weight of its own tensor, and whether every tensor is bitwise the same.
struct WeightDifference {
  double model_relative = 0, tensor_relative = 0;
  bool bitwise = true;
};

WeightDifference compare_weights(const std::string& a, const std::string& b) {
  const io::SafetensorsContent wa = models::read_weights(a), wb = models::read_weights(b);
  REQUIRE(wa.tensors.size() == wb.tensors.size());
  WeightDifference d;
  double model_scale = 0, model_diff = 0;
  for (const auto& [name, t] : wa.tensors) {
    const std::vector<float> x = t.to_vector(), y = wb.get(name).to_vector();
    REQUIRE(x.size() == y.size());
    double scale = 0, diff = 0;
    for (size_t k = 0; k < x.size(); ++k) {
      scale = std::max(scale, std::abs(static_cast<double>(x[k])));
      diff = std::max(diff, std::abs(static_cast<double>(x[k]) - y[k]));
      d.bitwise = d.bitwise && std::memcmp(&x[k], &y[k], sizeof(float)) == 0;
    }
    d.tensor_relative = std::max(d.tensor_relative, diff / std::max(scale, 1e-30));
    model_scale = std::max(model_scale, scale);
    model_diff = std::max(model_diff, diff);
  }
  d.model_relative = model_diff / model_scale;
  return d;
}

// Two working directories A and B in `dir`, each with a dataset at data/ (one configuration reads "data", relative):
// A's is good, B's a copy whose third image is cut short. A rank started in B fails while loading; a rank started in
// A waits for it. Returns the configuration.
std::string good_and_broken_datasets(const std::string& dir) {
  fs::create_directories(dir + "/A");
  REQUIRE(test::run_tool("unet_synth", "--output " + dir + "/A/data --train 6 --test 1 --size 32 --seed 4") == 0);
  fs::create_directories(dir + "/B");
  fs::copy(dir + "/A/data", dir + "/B/data", fs::copy_options::recursive);
  const std::string victim = dir + "/B/data/imagesTr/case_002.nii.gz";
  REQUIRE(fs::exists(victim));
  fs::resize_file(victim, fs::file_size(victim) / 2);
  return train_config(dir, "data");
}

}  // namespace

TEST_CASE("the patch sampler's ranks draw slices of one global batch, the same whatever the rank count") {
  Rng rng(2);
  std::vector<io::Case> cases;
  for (int i = 0; i < 3; ++i) {
    io::Case c;
    c.id = "c" + std::to_string(i);
    c.image = randn({10, 12, 9, 2}, rng);
    std::vector<float> lab(10 * 12 * 9);
    for (float& l : lab) l = static_cast<float>(rng.below(3));
    c.label = Tensor::from_vector({10, 12, 9}, lab, DType::u8);
    c.spacing = {1, 1, 1};
    cases.push_back(c);
  }
  io::PatchSamplerOptions one;
  one.patch = {8, 8, 8};
  one.batch = 6;
  one.seed = 9;
  io::PatchSampler whole(cases, {}, one);
  for (int ranks : {2, 3, 6}) {
    std::vector<io::PatchSampler> parts;
    for (int r = 0; r < ranks; ++r) {
      io::PatchSamplerOptions o = one;
      o.batch = 6 / ranks;
      o.rank = r;
      o.ranks = ranks;
      parts.emplace_back(cases, std::vector<size_t>{}, o);
    }
    whole.set_step(0);
    for (int step = 0; step < 3; ++step) {
      const io::PatchBatch all = whole.next();
      const std::vector<float> image = all.image.to_vector(), label = all.label.to_vector();
      const size_t per_image = image.size() / 6, per_label = label.size() / 6;
      for (int r = 0; r < ranks; ++r) {
        const io::PatchBatch p = parts[static_cast<size_t>(r)].next();
        const size_t first = static_cast<size_t>(r * (6 / ranks));
        const std::vector<float> pi = p.image.to_vector(), pl = p.label.to_vector();
        CHECK(std::equal(pi.begin(), pi.end(), image.begin() + static_cast<std::ptrdiff_t>(first * per_image)));
        CHECK(std::equal(pl.begin(), pl.end(), label.begin() + static_cast<std::ptrdiff_t>(first * per_label)));
        for (size_t b = 0; b < p.case_index.size(); ++b) {
          CHECK(p.case_index[b] == all.case_index[first + b]);
          CHECK(p.origin[b] == all.origin[first + b]);
        }
      }
    }
  }
  // Different steps draw different batches.
  whole.set_step(0);
  CHECK(whole.next().origin != whole.next().origin);
}

TEST_CASE("unet_train under mpirun: 2 ranks x batch 1 and 3 ranks x batch 1 train as 1 process x batch 2 and 3") {
  const std::string mpi = mpirun();
  if (mpi.empty()) {
    MESSAGE("mpirun is not installed: skipped (apt-get install openmpi-bin)");
    return;
  }
  test::TempDir tmp("dp_equivalence");
  REQUIRE(test::run_tool("unet_synth", "--output " + tmp.path + "/data --train 6 --test 2 --size 32 --seed 4") == 0);
  const std::string ini = train_config(tmp.path, tmp.path + "/data");
  // SGD, whose step is linear in the gradient, keeps the rounding differences at rounding size; Adam divides each
  // gradient by its running magnitude, so where a gradient is a sum with heavy cancellation (small against its own
  // rounding), the rounding's sign decides a step of about lr: the weights then differ by up to a few lr.
  struct Run {
    int ranks;
    const char* optimizer;
    double weight_tolerance;  // relative to the model's largest weight
  };
  for (const Run& run : {Run{2, "sgd", 1e-5}, Run{3, "sgd", 1e-5}, Run{2, "adamw", 5 * 2 * 8e-4}}) {
    const int ranks = run.ranks;
    const std::string name = std::to_string(ranks) + run.optimizer;
    const std::string serial = tmp.path + "/serial" + name, parallel = tmp.path + "/mpi" + name;
    const std::string opt = std::string(" --set train.optimizer=") + run.optimizer +
                            (std::string(run.optimizer) == "sgd" ? " --set train.lr=0.01" : "");
    std::string out;
    REQUIRE_MESSAGE(
        test::run_tool("unet_train",
                       ini + opt + " --set data.batch_size=" + std::to_string(ranks) + " --set output.dir=" + serial,
                       &out) == 0,
        out);
    REQUIRE_MESSAGE(shell(mpi + " -np " + std::to_string(ranks) + " " + test::tool_path("unet_train") + " " + ini +
                              opt + " --set data.batch_size=1 --set output.dir=" + parallel,
                          &out) == 0,
                    out);
    CHECK(out.find(std::to_string(ranks) + " ranks (mpi), batch 1 per rank, global batch " + std::to_string(ranks)) !=
          std::string::npos);
    // The losses (the global batch's, logged by rank 0) and the weights after 5 steps.
    const std::vector<double> a = logged_losses(serial), b = logged_losses(parallel);
    REQUIRE(a.size() == 5);
    REQUIRE(b.size() == 5);
    // Step 0 alike to float rounding; the later steps start from weights that differ in the last bits, a difference
    // that grows with each step (2e-5 relative by step 4 with the norms' statistics taken from f32 sums).
    for (size_t k = 0; k < a.size(); ++k) CHECK(b[k] == doctest::Approx(a[k]).epsilon(k == 0 ? 1e-6 : 1e-4));
    // Not bitwise: one process sums the batch's weight gradients inside the kernels, the ranks in f32 after them.
    const WeightDifference d = compare_weights(serial + "/model.safetensors", parallel + "/model.safetensors");
    MESSAGE(ranks << " ranks, " << std::string(run.optimizer) << ": weights within " << d.model_relative
                  << " of the model's largest (" << d.tensor_relative << " of their tensor's); bitwise: " << d.bitwise);
    CHECK(d.model_relative <= run.weight_tolerance);
    // Rank 0 alone wrote the run directory's files; validation (1 case) was split over the ranks and reduced.
    CHECK(fs::exists(parallel + "/checkpoint.safetensors"));
    CHECK(fs::exists(parallel + "/validation.json"));
  }
  // The same rank count twice: the same bits (the reductions have a fixed order).
  std::string out;
  REQUIRE(shell(mpi + " -np 2 " + test::tool_path("unet_train") + " " + ini +
                    " --set data.batch_size=1 --set output.dir=" + tmp.path + "/again",
                &out) == 0);
  CHECK(compare_weights(tmp.path + "/mpi2adamw/model.safetensors", tmp.path + "/again/model.safetensors").bitwise);
}

TEST_CASE("unet3plus under mpirun: 2 ranks x batch 1 with SyncBatchNorm train as 1 process x batch 2; without, not") {
  const std::string mpi = mpirun();
  if (mpi.empty()) {
    MESSAGE("mpirun is not installed: skipped (apt-get install openmpi-bin)");
    return;
  }
  test::TempDir tmp("dp_unet3plus");
  REQUIRE(test::run_tool("unet_synth",
                         "--output " + tmp.path + "/data --train 4 --test 1 --dim 2 --size 32,32 --seed 5") == 0);
  const std::string ini =
      write_text(tmp.path + "/train.ini", "[data]\ndataset = " + tmp.path +
                                              "/data\npatch_size = 32,32\nfolds = 1\n[model]\n"
                                              "name = unet3plus\nfilters = 2\n[train]\nsteps = 4\n"
                                              "log_every = 1\nseed = 3\noptimizer = sgd\nmomentum = 0.9\n"
                                              "lr = 0.001\n");
  // A gentle SGD: batch norm over 2 samples of 2 x 2 values at the deepest level turns rounding differences into loss
  // differences of 1e-4 within 3 steps at lr 0.01 and momentum 0.99 (measured): chaos, not a defect.
  std::string out;
  REQUIRE_MESSAGE(test::run_tool("unet_train",
                                 ini + " --set data.batch_size=2 --set output.dir=" + tmp.path + "/serial", &out) == 0,
                  out);
  for (const char* sync : {"true", "false"}) {
    const std::string run = tmp.path + "/mpi_" + sync;
    REQUIRE_MESSAGE(
        shell(mpi + " -np 2 " + test::tool_path("unet_train") + " " + ini +
                  " --set data.batch_size=1 --set model.sync_batchnorm=" + sync + " --set output.dir=" + run,
              &out) == 0,
        out);
    const std::vector<double> a = logged_losses(tmp.path + "/serial"), b = logged_losses(run);
    REQUIRE(a.size() == 4);
    REQUIRE(b.size() == 4);
    double worst = 0;
    for (size_t k = 0; k < a.size(); ++k) worst = std::max(worst, std::abs(b[k] - a[k]) / std::abs(a[k]));
    const WeightDifference d = compare_weights(tmp.path + "/serial/model.safetensors", run + "/model.safetensors");
    MESSAGE("sync_batchnorm = " << std::string(sync) << ": losses within " << worst
                                << ", weights and running statistics within " << d.model_relative << " of the largest");
    if (std::string(sync) == "true") {
      CHECK(worst <= 1e-5);
      CHECK(d.model_relative <= 1e-5);
    } else {  // each rank normalises its one sample by its own statistics: another function
      CHECK(worst > 1e-3);
    }
  }
  // With the classification-guided module: its dropout draws each sample's mask where one process would (rank 1 drew
  // sample 0's, a loss 4e-3 off at the first step).
  REQUIRE_MESSAGE(
      test::run_tool("unet_train",
                     ini + " --set data.batch_size=2 --set model.cgm=true --set output.dir=" + tmp.path + "/serial_cgm",
                     &out) == 0,
      out);
  REQUIRE_MESSAGE(shell(mpi + " -np 2 " + test::tool_path("unet_train") + " " + ini +
                            " --set data.batch_size=1 --set model.cgm=true --set output.dir=" + tmp.path + "/mpi_cgm",
                        &out) == 0,
                  out);
  const std::vector<double> a = logged_losses(tmp.path + "/serial_cgm"), b = logged_losses(tmp.path + "/mpi_cgm");
  REQUIRE(a.size() == 4);
  REQUIRE(b.size() == 4);
  for (size_t k = 0; k < a.size(); ++k) CHECK(std::abs(b[k] - a[k]) <= 1e-5 * std::abs(a[k]));
  // A 16 x 16 patch: the bottom level is 1 x 1, one value per channel and sample. With SyncBatchNorm, 2 ranks x batch
  // 1 normalise those of both samples as 1 process x batch 2 does (they were refused as one sample: red-team corpus
  // 18, M3); without, each rank's one value cannot be normalised, refused with status 2 before any work. One step:
  // batch norm over two values (each +-1 after normalising) turns rounding differences into loss differences of 1e-5
  // at the second step and 3e-4 at the fourth (measured).
  const std::string p16 = " --set data.patch_size=16,16 --set train.steps=1 --set output.dir=" + tmp.path;
  REQUIRE_MESSAGE(test::run_tool("unet_train", ini + " --set data.batch_size=2" + p16 + "/serial16", &out) == 0, out);
  REQUIRE_MESSAGE(
      shell(mpi + " -np 2 " + test::tool_path("unet_train") + " " + ini + " --set data.batch_size=1" + p16 + "/mpi16",
            &out) == 0,
      out);
  const std::vector<double> c = logged_losses(tmp.path + "/serial16"), e = logged_losses(tmp.path + "/mpi16");
  REQUIRE(c.size() == 1);
  REQUIRE(e.size() == 1);
  CHECK(std::abs(e[0] - c[0]) <= 1e-5 * std::abs(c[0]));
  const WeightDifference d16 =
      compare_weights(tmp.path + "/serial16/model.safetensors", tmp.path + "/mpi16/model.safetensors");
  MESSAGE("16 x 16, SyncBatchNorm: weights and running statistics within " << d16.model_relative);
  CHECK(d16.model_relative <= 1e-5);
  CHECK(shell(mpi + " -np 2 " + test::tool_path("unet_train") + " " + ini +
                  " --set data.batch_size=1 --set model.sync_batchnorm=false" + p16 + "/mpi16_own",
              &out) == 2);
  CHECK_MESSAGE(out.find("(or model.sync_batchnorm = true: batch norm over every rank's samples)") != std::string::npos,
                out);
  CHECK_FALSE(fs::exists(tmp.path + "/mpi16_own"));
}

TEST_CASE(
    "unet3plus under mpirun without SyncBatchNorm: the validation Dice is the saved model's (rank 0's statistics)") {
  const std::string mpi = mpirun();
  if (mpi.empty()) {
    MESSAGE("mpirun is not installed: skipped (apt-get install openmpi-bin)");
    return;
  }
  test::TempDir tmp("dp_unet3plus_val");
  const std::string data = tmp.path + "/data";
  REQUIRE(test::run_tool("unet_synth", "--output " + data + " --train 4 --test 0 --dim 2 --size 32,32 --classes 2") ==
          0);
  const std::string ini = write_text(tmp.path + "/train.ini", "[data]\ndataset = " + data +
                                                                  "\npatch_size = 32,32\nbatch_size = 1\nfolds = 2\n"
                                                                  "[model]\nname = unet3plus\nfilters = 4\n"
                                                                  "sync_batchnorm = false\n[train]\nsteps = 20\n");
  std::string out;
  REQUIRE_MESSAGE(
      shell(mpi + " -np 2 " + test::tool_path("unet_train") + " " + ini + " --set output.dir=" + tmp.path + "/run",
            &out) == 0,
      out);
  // Fold 0's two validation cases, one per rank, segmented and scored by the tools from the saved model. Rank 1
  // validated its case with its own running statistics, a network never written: 0.22508 against the model's 0.22487
  // after 20 steps.
  const nlohmann::json cases = nlohmann::json::parse(std::ifstream(data + "/dataset.json"))["training"];
  const io::FoldSplit split = io::kfold_split(cases.size(), 0, 2);
  REQUIRE(split.val.size() == 2);
  fs::create_directories(tmp.path + "/val/images");
  fs::create_directories(tmp.path + "/val/labels");
  for (size_t k : split.val) {
    const fs::path image = cases[k]["image"].get<std::string>(), label = cases[k]["label"].get<std::string>();
    fs::copy_file(fs::path(data) / image, fs::path(tmp.path) / "val/images" / image.filename());
    fs::copy_file(fs::path(data) / label, fs::path(tmp.path) / "val/labels" / label.filename());
  }
  REQUIRE_MESSAGE(test::run_tool("unet_infer",
                                 "--model " + tmp.path + "/run/model.safetensors --input " + tmp.path +
                                     "/val/images --output " + tmp.path + "/val/pred",
                                 &out) == 0,
                  out);
  REQUIRE_MESSAGE(test::run_tool("unet_eval",
                                 "--pred " + tmp.path + "/val/pred --label " + tmp.path + "/val/labels --json " +
                                     tmp.path + "/val/dice.json",
                                 &out) == 0,
                  out);
  const double reported =
      nlohmann::json::parse(std::ifstream(tmp.path + "/run/validation.json"))["val_mean_dice"].get<double>();
  const double scored = nlohmann::json::parse(std::ifstream(tmp.path + "/val/dice.json"))["mean_dice"].get<double>();
  CHECK(reported == scored);
  // A run of 30 steps resumed to 60 validates as the uninterrupted run (every 10 steps): rank 1 resumed with rank 0's
  // statistics from the checkpoint and had validated with its own.
  const auto validations = [](const std::string& run) {
    std::map<int64_t, double> dice;
    std::ifstream log(run + "/log.jsonl");
    for (std::string l; std::getline(log, l);)
      if (const nlohmann::json j = nlohmann::json::parse(l); j.contains("val_mean_dice"))
        dice[j["step"].get<int64_t>()] = j["val_mean_dice"].get<double>();
    return dice;
  };
  const std::string every10 = " --set train.val_every=10 --set train.steps=";
  REQUIRE_MESSAGE(shell(mpi + " -np 2 " + test::tool_path("unet_train") + " " + ini + every10 +
                            "60 --set output.dir=" + tmp.path + "/whole",
                        &out) == 0,
                  out);
  REQUIRE_MESSAGE(shell(mpi + " -np 2 " + test::tool_path("unet_train") + " " + ini + every10 +
                            "30 --set output.dir=" + tmp.path + "/resumed",
                        &out) == 0,
                  out);
  REQUIRE_MESSAGE(shell(mpi + " -np 2 " + test::tool_path("unet_train") + " " + ini + every10 +
                            "60 --set output.dir=" + tmp.path + "/resumed --resume " + tmp.path + "/resumed",
                        &out) == 0,
                  out);
  const std::map<int64_t, double> whole = validations(tmp.path + "/whole");
  CHECK(whole.size() == 6);
  CHECK(validations(tmp.path + "/resumed") == whole);
}

TEST_CASE("a rank that fails ends every rank with a non-zero status and a message naming it; no checkpoint") {
  const std::string mpi = mpirun();
  if (mpi.empty()) {
    MESSAGE("mpirun is not installed: skipped (apt-get install openmpi-bin)");
    return;
  }
  test::TempDir tmp("dp_failure");
  const std::string ini = good_and_broken_datasets(tmp.path), train = test::tool_path("unet_train");
  const auto t0 = std::chrono::steady_clock::now();
  std::string out;
  const int rc =
      shell(mpi + " -np 1 -wdir " + tmp.path + "/A " + train + " " + ini + " --set output.dir=" + tmp.path +
                "/run : -np 1 -wdir " + tmp.path + "/B " + train + " " + ini + " --set output.dir=" + tmp.path + "/run",
            &out);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(rc != 0);
  CHECK(seconds < 60);
  CHECK_MESSAGE(out.find("unet_train: rank 1 of 2: error: ") != std::string::npos, out);
  CHECK_MESSAGE(out.find("case_002.nii.gz") != std::string::npos, out);
  CHECK_FALSE(fs::exists(tmp.path + "/run/model.safetensors"));
}

TEST_CASE(
    "ranks given different configurations or different data stop at start-up with status 2 naming the key or "
    "the case; nothing written") {
  const std::string mpi = mpirun();
  if (mpi.empty()) {
    MESSAGE("mpirun is not installed: skipped (apt-get install openmpi-bin)");
    return;
  }
  test::TempDir tmp("dp_mismatch");
  const std::string& dir = tmp.path;
  fs::create_directories(dir + "/A");
  fs::create_directories(dir + "/B");
  REQUIRE(test::run_tool("unet_synth", "--output " + dir + "/A/data --train 4 --test 0 --size 32 --seed 4") == 0);
  REQUIRE(test::run_tool("unet_synth", "--output " + dir + "/B/data --train 4 --test 0 --size 32 --seed 5") == 0);
  const std::string ini = train_config(dir, "data"), train = test::tool_path("unet_train");
  const std::string run = " --set data.folds=1 --set train.steps=2 --set output.dir=" + dir + "/run";
  // (rank 0's and rank 1's working directory and options, the expected message): these used to corrupt the heap in
  // the first reduction (another batch size), or train a different model on each rank.
  const std::vector<std::tuple<std::string, std::string, std::string>> cases = {
      {"A", "A --set data.batch_size=1",
       "unet_train: rank 1 of 2: data.batch_size = 1 on this rank, 2 on rank 0; expected every rank to read the same "
       "configuration"},
      {"A", "A --set train.lr=8e-4", ""},  // the default in another spelling: the same configuration
      {"A --set runtime.threads=1", "A", ""},
      {"A", "A --overwrite", "unet_train: rank 1 of 2: --overwrite = given on this rank, not given on rank 0"},
      {"A", "B",
       "unet_train: rank 1 of 2: data/dataset.json: training case case_000: image 32x32x32x1, label 32x32x32, "
       "spacing 1 x 1 x 1 mm, digest "},
  };
  for (const auto& [rank0, rank1, message] : cases) {
    CAPTURE(rank1);
    fs::remove_all(dir + "/run");
    const auto options = [&](const std::string& wdir_and_options) {
      const size_t space = wdir_and_options.find(' ');
      return "-wdir " + dir + "/" + wdir_and_options.substr(0, space) + " " + train + " " + ini + run +
             (space == std::string::npos ? "" : wdir_and_options.substr(space));
    };
    std::string out;
    const int rc = shell(mpi + " -np 1 " + options(rank0) + " : -np 1 " + options(rank1), &out);
    if (message.empty()) {
      CHECK_MESSAGE(rc == 0, out);
      CHECK(fs::exists(dir + "/run/model.safetensors"));
    } else {
      CHECK(rc == 2);
      CHECK_MESSAGE(out.find(message) != std::string::npos, out);
      CHECK_FALSE(fs::exists(dir + "/run"));
    }
  }
  // --resume run in each rank's working directory, each holding another checkpoint of the run (steps 2 and 3): the
  // ranks trained replicas that differed, then hung. Refused before any step.
  const std::string here = " " + train + " " + ini + " --set data.folds=1 --set output.dir=run";
  std::string out;
  REQUIRE_MESSAGE(shell(mpi + " -np 2 -wdir " + dir + "/A" + here + " --set train.steps=2", &out) == 0, out);
  fs::copy(dir + "/A", dir + "/A2", fs::copy_options::recursive);
  REQUIRE_MESSAGE(shell(mpi + " -np 2 -wdir " + dir + "/A2" + here + " --set train.steps=3 --resume run", &out) == 0,
                  out);
  const std::string resume = here + " --set train.steps=4 --resume run";
  CHECK(shell(mpi + " -np 1 -wdir " + dir + "/A" + resume + " : -np 1 -wdir " + dir + "/A2" + resume, &out) == 2);
  CHECK_MESSAGE(out.find("unet_train: rank 1 of 2: run/checkpoint.safetensors: step 3 on this rank, 2 on rank 0; "
                         "expected every rank to resume the same checkpoint") != std::string::npos,
                out);
  CHECK(io::read_safetensors(dir + "/A/run/checkpoint.safetensors").metadata.at("step") == "2");
}

TEST_CASE("Ctrl-C on mpirun stops every rank") {
  const std::string mpi = mpirun();
  if (mpi.empty()) {
    MESSAGE("mpirun is not installed: skipped (apt-get install openmpi-bin)");
    return;
  }
  test::TempDir tmp("dp_interrupt");
  REQUIRE(test::run_tool("unet_synth", "--output " + tmp.path + "/data --train 6 --test 1 --size 32 --seed 4") == 0);
  const std::string ini = train_config(tmp.path, tmp.path + "/data");
  // SIGINT to mpirun after 3 s of a training that would take minutes; timeout -k kills it if it has not ended 30 s
  // later (status 137 then).
  std::string out;
  const auto t0 = std::chrono::steady_clock::now();
  const int rc = shell("timeout -s INT -k 30 3 " + mpi + " -np 2 " + test::tool_path("unet_train") + " " + ini +
                           " --set train.steps=100000 --set data.batch_size=1 --set output.dir=" + tmp.path + "/run",
                       &out);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(rc != 0);
  CHECK(rc != 137);
  CHECK(seconds < 30);
  // No rank outlives mpirun.
  std::string left;
  shell("pgrep -f '[o]utput.dir=" + tmp.path + "/run' || true", &left);  // [o]: not pgrep's own shell
  CHECK_MESSAGE(left.empty(), "processes left: " << left);
}

TEST_CASE("unet_train under srun --mpi=pmix trains bit for bit as under mpirun; a failing task ends the job") {
  const std::string mpi = mpirun(), slurm = srun();
  if (mpi.empty() || slurm.empty()) {
    MESSAGE(
        "no Slurm cluster takes jobs here (or no mpirun to compare with): skipped (tools/slurm_local.sh starts a "
        "one-node one)");
    return;
  }
  test::TempDir tmp("dp_srun");
  const std::string ini = good_and_broken_datasets(tmp.path);
  std::string out;
  // In A, whose data/ is good (the configuration reads the relative path "data").
  const std::string train = "bash -c 'cd " + tmp.path + "/A && exec " + test::tool_path("unet_train") + " " + ini +
                            " --set data.batch_size=1 --set output.dir=";
  REQUIRE_MESSAGE(shell(slurm + " -n 2 " + train + tmp.path + "/srun'", &out) == 0, out);
  CHECK_MESSAGE(out.find("2 ranks (mpi), batch 1 per rank, global batch 2") != std::string::npos, out);
  REQUIRE_MESSAGE(shell(mpi + " -np 2 " + train + tmp.path + "/mpirun'", &out) == 0, out);
  CHECK(logged_losses(tmp.path + "/srun") == logged_losses(tmp.path + "/mpirun"));
  CHECK(compare_weights(tmp.path + "/srun/model.safetensors", tmp.path + "/mpirun/model.safetensors").bitwise);
  // Task 1, in B, fails loading its data while task 0 waits for it: MPI_Abort ends the whole step.
  const std::string which = "cd " + tmp.path + "/$([ \"$SLURM_PROCID\" = 1 ] && echo B || echo A) && exec " +
                            test::tool_path("unet_train") + " " + ini + " --set output.dir=" + tmp.path + "/failed";
  const auto t0 = std::chrono::steady_clock::now();
  const int rc = shell(slurm + " -n 2 bash -c '" + which + "'", &out);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(rc != 0);
  CHECK(seconds < 60);
  CHECK_MESSAGE(out.find("unet_train: rank 1 of 2: error: ") != std::string::npos, out);
  CHECK_MESSAGE(out.find("case_002.nii.gz") != std::string::npos, out);
  CHECK_FALSE(fs::exists(tmp.path + "/failed/model.safetensors"));
}

TEST_CASE("Slurm's variables: a batch script's process is one process; srun --mpi=none is an error saying what to do") {
  test::TempDir tmp("dp_slurm_env");
  REQUIRE(test::run_tool("unet_synth", "--output " + tmp.path + "/data --train 2 --test 1 --size 32 --seed 4") == 0);
  const std::string ini =
      train_config(tmp.path, tmp.path + "/data") + " --set train.steps=1 --set data.folds=1 --set output.dir=";
  // What sbatch -n 2 gives its script (no step): SLURM_NTASKS, SLURM_PROCID and SLURM_LOCALID but no SLURM_STEP_ID.
  std::string out;
  CHECK_MESSAGE(shell("SLURM_NTASKS=2 SLURM_PROCID=0 SLURM_LOCALID=0 " + test::tool_path("unet_train") + " " + ini +
                          tmp.path + "/batch",
                      &out) == 0,
                out);
  CHECK(out.find("ranks (mpi)") == std::string::npos);
  // What srun -n 2 --mpi=none gives each task: a step, two tasks, and neither PMIx nor PMI.
  CHECK(shell("SLURM_STEP_ID=0 SLURM_STEP_NUM_TASKS=2 SLURM_NTASKS=2 SLURM_PROCID=0 " + test::tool_path("unet_train") +
                  " " + ini + tmp.path + "/none",
              &out) == 1);
  CHECK_MESSAGE(
      out.find("started by srun as one of 2 tasks, but without a process-management interface for MPI to "
               "connect them (srun --mpi=none, given or the cluster's default): launch with srun --mpi=pmix") !=
          std::string::npos,
      out);
  CHECK_FALSE(fs::exists(tmp.path + "/none"));
}

TEST_CASE("unet_infer under mpirun splits the volumes over the ranks and writes what one process writes") {
  const std::string mpi = mpirun();
  if (mpi.empty()) {
    MESSAGE("mpirun is not installed: skipped (apt-get install openmpi-bin)");
    return;
  }
  test::TempDir tmp("dp_infer");
  REQUIRE(test::run_tool("unet_synth", "--output " + tmp.path + "/data --train 6 --test 5 --size 32 --seed 4") == 0);
  const std::string ini = train_config(tmp.path, tmp.path + "/data");
  REQUIRE(test::run_tool("unet_train", ini + " --set train.steps=2 --set output.dir=" + tmp.path + "/run") == 0);
  const std::string args = " --model " + tmp.path + "/run/model.safetensors --input " + tmp.path + "/data/imagesTs";
  std::string out;
  REQUIRE_MESSAGE(test::run_tool("unet_infer", args + " --output " + tmp.path + "/one", &out) == 0, out);
  REQUIRE_MESSAGE(
      shell(mpi + " -np 2 " + test::tool_path("unet_infer") + args + " --output " + tmp.path + "/two", &out) == 0, out);
  CHECK(out.find("2 ranks") != std::string::npos);
  int volumes = 0;
  for (const auto& e : fs::directory_iterator(tmp.path + "/one")) {
    const fs::path other = fs::path(tmp.path) / "two" / e.path().filename();
    REQUIRE_MESSAGE(fs::exists(other), other);
    CHECK(io::read_nifti(e.path().string()).data.to_vector() == io::read_nifti(other.string()).data.to_vector());
    ++volumes;
  }
  CHECK(volumes == 5);
  // A volume that fails on one rank (with --keep-going) makes every rank exit 1; the others are still written.
  fs::copy(tmp.path + "/data/imagesTs", tmp.path + "/in");
  fs::resize_file(tmp.path + "/in/case_007.nii.gz", 100);
  const int rc =
      shell(mpi + " -np 2 " + test::tool_path("unet_infer") + " --model " + tmp.path +
                "/run/model.safetensors --input " + tmp.path + "/in --output " + tmp.path + "/three --keep-going",
            &out);
  CHECK(rc == 1);
  CHECK_MESSAGE(out.find("case_007.nii.gz") != std::string::npos, out);
  int written = 0;
  for (const auto& e : fs::directory_iterator(tmp.path + "/three")) written += e.path().filename().string()[0] != '.';
  CHECK(written == 4);
  // Ranks given other settings, or seeing other files in --input (a copy on each machine that differs), would split
  // different lists without a word: refused with status 2 before any volume, naming the difference.
  fs::create_directories(tmp.path + "/A/in");
  fs::create_directories(tmp.path + "/B/in");
  for (const auto& e : fs::directory_iterator(tmp.path + "/data/imagesTs")) {
    fs::copy(e.path(), tmp.path + "/A/in/" + e.path().filename().string());
    if (e.path().filename() != "case_008.nii.gz")
      fs::copy(e.path(), tmp.path + "/B/in/" + e.path().filename().string());
  }
  const std::string infer =
      test::tool_path("unet_infer") + " --model " + tmp.path + "/run/model.safetensors --input in";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"-wdir " + tmp.path + "/A " + infer + " --output out --overlap 0.25",
       "unet_infer: rank 1 of 2: --overlap = 0.25 on this rank, 0.5 on rank 0"},
      {"-wdir " + tmp.path + "/B " + infer + " --output out",
       "unet_infer: rank 1 of 2: volume 3 = in/case_009.nii.gz ("},
  };
  for (const auto& [rank1, message] : cases) {
    CHECK(shell(mpi + " -np 1 -wdir " + tmp.path + "/A " + infer + " --output out : -np 1 " + rank1, &out) == 2);
    CHECK_MESSAGE(out.find(message) != std::string::npos, out);
    CHECK_FALSE(fs::exists(tmp.path + "/A/out"));
    CHECK_FALSE(fs::exists(tmp.path + "/B/out"));
  }
  // The same names with other contents on each machine (a relative path): another image, another model.
  fs::copy(tmp.path + "/A/in/case_008.nii.gz", tmp.path + "/B/in/case_008.nii.gz");
  fs::copy(tmp.path + "/A/in/case_006.nii.gz", tmp.path + "/B/in/case_009.nii.gz",
           fs::copy_options::overwrite_existing);
  const std::string relative = test::tool_path("unet_infer") + " --model m.safetensors --input in --output out";
  fs::copy(tmp.path + "/run/model.safetensors", tmp.path + "/A/m.safetensors");
  fs::copy(tmp.path + "/run/model.safetensors", tmp.path + "/B/m.safetensors");
  const auto run_both = [&] {
    return shell(mpi + " -np 1 -wdir " + tmp.path + "/A " + relative + " : -np 1 -wdir " + tmp.path + "/B " + relative,
                 &out);
  };
  CHECK(run_both() == 2);
  CHECK_MESSAGE(out.find("unet_infer: rank 1 of 2: volume 4 = in/case_009.nii.gz (") != std::string::npos, out);
  fs::copy(tmp.path + "/A/in/case_009.nii.gz", tmp.path + "/B/in/case_009.nii.gz",
           fs::copy_options::overwrite_existing);
  {  // one weight's lowest byte changed: still a valid model, another one
    std::fstream m(tmp.path + "/B/m.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    m.seekg(-4, std::ios::end);
    const char byte = static_cast<char>(m.get() ^ 1);
    m.seekp(-4, std::ios::end);
    m.put(byte);
  }
  CHECK(run_both() == 2);
  CHECK_MESSAGE(out.find("unet_infer: rank 1 of 2: --model's content = ") != std::string::npos, out);
  CHECK_FALSE(fs::exists(tmp.path + "/A/out"));
  fs::copy(tmp.path + "/A/m.safetensors", tmp.path + "/B/m.safetensors", fs::copy_options::overwrite_existing);
  CHECK_MESSAGE(run_both() == 0, out);  // the same files on both: segmented, each rank's share in its own out/
  int segmented = 0;
  for (const char* d : {"/A/out", "/B/out"})
    if (fs::exists(tmp.path + d))
      segmented += static_cast<int>(std::distance(fs::directory_iterator(tmp.path + d), {}));
  CHECK(segmented == 5);
  // Cases named a and a_probabilities (nnU-Net v2's input names: CASE_0000): a's label map is a.nii.gz, and
  // a_probabilities.nii.gz is the other case's, not a's probabilities. --overwrite must not remove it as such (rank 0
  // did, after rank 1 had written it: a is the larger volume, so rank 1 writes first).
  fs::create_directories(tmp.path + "/pair");
  REQUIRE(test::run_tool("unet_synth", "--output " + tmp.path + "/big --train 0 --test 1 --size 64 --seed 5") == 0);
  fs::copy(tmp.path + "/big/imagesTs/case_000.nii.gz", tmp.path + "/pair/a_0000.nii.gz");
  fs::copy(tmp.path + "/data/imagesTs/case_006.nii.gz", tmp.path + "/pair/a_probabilities_0000.nii.gz");
  const std::string pair = test::tool_path("unet_infer") + " --model " + tmp.path + "/run/model.safetensors --input " +
                           tmp.path + "/pair --output " + tmp.path + "/pair_out";
  REQUIRE_MESSAGE(shell(pair, &out) == 0, out);
  REQUIRE_MESSAGE(shell(mpi + " -np 2 " + pair + " --overwrite", &out) == 0, out);
  CHECK_MESSAGE(out.find("removed the earlier") == std::string::npos, out);
  CHECK(fs::exists(tmp.path + "/pair_out/a.nii.gz"));
  CHECK(fs::exists(tmp.path + "/pair_out/a_probabilities.nii.gz"));
}
