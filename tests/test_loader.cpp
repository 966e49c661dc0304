// BatchLoader (io/loader.h): the same batches whatever the number of workers and prefetch depth, from any first step;
// and unet_train's weights do not depend on data.workers.
#include <cstring>
#include <filesystem>

#include "io/loader.h"
#include "io/safetensors.h"
#include "tests/test_util.h"

using namespace unet;
using namespace unet::io;

namespace {

std::vector<Case> random_cases() {
  std::vector<Case> cases;
  Rng rng(3);
  for (int i = 0; i < 3; ++i) {
    Case c;
    c.id = "case" + std::to_string(i);
    const Shape s{14 + i, 18, 16};
    c.image = randn({s[0], s[1], s[2], 2}, rng);
    c.label = Tensor::zeros(s, DType::u8);
    uint8_t* l = c.label.data<uint8_t>();
    for (int64_t v = 0; v < c.label.numel(); ++v) l[v] = static_cast<uint8_t>(rng.below(9) == 0 ? 1 + rng.below(2) : 0);
    c.spacing = {1, 1, 1};
    cases.push_back(c);
  }
  return cases;
}

bool same(const PatchBatch& a, const PatchBatch& b) {
  return a.image.to_vector() == b.image.to_vector() && a.label.to_vector() == b.label.to_vector() &&
         a.case_index == b.case_index && a.origin == b.origin && a.rotation == b.rotation;
}

}  // namespace

TEST_CASE("the loader gives the sampler's batches in step order for 0, 1 and 3 workers and any prefetch") {
  const std::vector<Case> cases = random_cases();
  PatchSamplerOptions o;
  o.patch = {12, 12, 12};
  o.batch = 3;
  o.seed = 21;
  o.augment.zoom_prob = o.augment.noise_prob = o.augment.blur_prob = 0.5;  // every kind of work, often
  o.augment.rotation_prob = o.augment.gamma_prob = o.augment.low_resolution_prob = 0.5;
  const PatchSampler sampler(cases, {}, o);
  std::vector<PatchBatch> expected;
  for (int64_t s = 0; s < 8; ++s) expected.push_back(sampler.batch(s));
  CHECK_FALSE(same(expected[0], expected[1]));
  for (int workers : {0, 1, 3})
    for (int prefetch : {1, 3}) {
      CAPTURE(workers);
      CAPTURE(prefetch);
      BatchLoader loader(sampler, 0, workers, prefetch);
      CHECK(loader.workers() == workers);
      for (int64_t s = 0; s < 8; ++s) {
        CHECK(loader.step() == s);
        CHECK(same(loader.next(), expected[static_cast<size_t>(s)]));
      }
    }
  // From a later step (a resumed run), and stopped with batches still being prepared.
  BatchLoader late(sampler, 5, 2, 3);
  CHECK(same(late.next(), expected[5]));
  CHECK(same(late.next(), expected[6]));
  // Batches in pinned memory (GPU training) hold the same values; the blocks go back to the pinned pool.
  PatchSamplerOptions po = o;
  po.pinned = true;
  const PatchSampler pinned_sampler(cases, {}, po);
  BatchLoader pinned(pinned_sampler, 0, 2, 2);
  for (int64_t s = 0; s < 4; ++s) {
    const PatchBatch b = pinned.next();
    CHECK(b.image.impl().storage->pinned);
    CHECK(b.label.impl().storage->pinned);
    CHECK(same(b, expected[static_cast<size_t>(s)]));
  }
}

TEST_CASE("unet_train: the same weights with data.workers = 0 and 3") {
  test::TempDir tmp("loader_train");
  REQUIRE(test::run_tool("unet_synth", "--output " + tmp / "data" + " --train 3 --test 1 --size 16,16,16 --seed 2") ==
          0);
  const std::string ini = test::write_text(
      tmp / "train.ini", "[data]\ndataset = " + tmp / "data" +
                             "\npatch_size = 16,16,16\nfolds = 1\n[model]\nfilters = 4\n"
                             "depth = 2\n[train]\nsteps = 6\nseed = 5\n[augment]\nrotation = 0.5\nnoise = 0.5\n");
  std::string out;
  for (const char* workers : {"0", "3"})
    REQUIRE_MESSAGE(test::run_tool("unet_train",
                                   ini + " --set data.workers=" + workers +
                                       " --set output.dir=" + tmp / (std::string("run") + workers),
                                   &out) == 0,
                    out);
  const SafetensorsContent a = read_safetensors(tmp / "run0/model.safetensors"),
                           b = read_safetensors(tmp / "run3/model.safetensors");
  REQUIRE(a.tensors.size() == b.tensors.size());
  for (const auto& [name, t] : a.tensors) {
    CAPTURE(name);
    CHECK(std::memcmp(t.raw(), b.get(name).raw(), t.nbytes()) == 0);
  }
}
