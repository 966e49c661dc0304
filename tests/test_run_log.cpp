// What a training run shows (models/run_log.h): the curve scaling, the report page, the log kept on resume, the best
// model, and the progress bar on a terminal (through script(1), which gives unet_train a pseudo-terminal).
#include <cstring>
#include <filesystem>
#include <fstream>

#include "io/safetensors.h"
#include "models/run_log.h"
#include "tests/test_util.h"

using namespace unet;
using namespace unet::models;

TEST_CASE("curve_points maps the value ranges onto the box, y downwards, and thins long series evenly") {
  const Box2D box{10, 20, 110, 220};
  const auto p = curve_points({0, 50, 100}, {1, 0.5, 0}, box, 0, 100, 0, 1);
  REQUIRE(p.size() == 3);
  CHECK(p[0] == std::pair<double, double>{10, 20});  // x min, y max: top left
  CHECK(p[1] == std::pair<double, double>{60, 120});
  CHECK(p[2] == std::pair<double, double>{110, 220});  // x max, y min: bottom right
  std::vector<double> xs(10001), ys(10001);
  for (size_t i = 0; i < xs.size(); ++i) xs[i] = static_cast<double>(i), ys[i] = static_cast<double>(i % 7);
  const auto thin = curve_points(xs, ys, box, 0, 10000, 0, 6, 101);
  REQUIRE(thin.size() == 101);
  CHECK(thin.front().first == 10);
  CHECK(thin.back().first == 110);
  CHECK(thin[50].first == doctest::Approx(60));  // sample 5000
  CHECK(thin[50].second == doctest::Approx(220 - (5000 % 7) / 6.0 * 200));
}

TEST_CASE("the report page draws the loss, its parts and the validation Dice from the log's lines") {
  std::vector<nlohmann::json> lines;
  for (int s = 10; s <= 50; s += 10)
    lines.push_back({{"step", s}, {"loss", 2.0 / s}, {"dice_loss", 1.0 / s}, {"ce", 1.0 / s}});
  std::string html = report_html(lines, "run <1>");
  CHECK(html.find("<title>run &lt;1&gt;</title>") != std::string::npos);
  CHECK(html.find("<polyline") != std::string::npos);
  CHECK(html.find("Validation") == std::string::npos);  // no validation yet
  CHECK(html.find("step 50, loss 0.04") != std::string::npos);
  lines.push_back({{"step", 50}, {"val_dice", {0.7, 0.9}}, {"val_mean_dice", 0.8}});
  html = report_html(lines, "run");
  CHECK(html.find("Validation") != std::string::npos);
  CHECK(html.find("validation mean Dice 0.8 (best 0.8)") != std::string::npos);
  // Four series: loss, Dice part, CE part, validation.
  size_t n = 0;
  for (size_t at = html.find("<polyline"); at != std::string::npos; at = html.find("<polyline", at + 1)) ++n;
  CHECK(n == 4);
}

TEST_CASE("unet_train writes training.html and model_best.safetensors, and draws a progress bar on a terminal") {
  test::TempDir tmp("run_log");
  REQUIRE(test::run_tool("unet_synth", "--output " + tmp / "data" + " --train 4 --test 1 --size 16,16,16 --seed 3") ==
          0);
  const std::string ini = test::write_text(
      tmp / "train.ini", "[data]\ndataset = " + tmp / "data" +
                             "\npatch_size = 16,16,16\nfolds = 2\n[model]\nfilters = 4\n"
                             "depth = 2\n[train]\nsteps = 12\nlog_every = 2\nval_every = 4\n[output]\ndir = " +
                             tmp / "run");
  std::string out;
  // script -q -e -c CMD /dev/null: CMD on a pseudo-terminal, its exit status returned.
  REQUIRE_MESSAGE(test::shell("script -qec '" + test::tool_path("unet_train") + " " + ini + "' /dev/null", &out) == 0,
                  out);
  CHECK(out.find("\r[") != std::string::npos);
  CHECK(out.find("step 12/12 100%") != std::string::npos);
  CHECK(out.find("ETA 0:00:00") != std::string::npos);
  CHECK(out.find("step      2/12") == std::string::npos);  // the plain lines are for files and pipes
  CHECK(out.find("validation at step 4: mean Dice") != std::string::npos);
  CHECK(out.find("(best so far: model_best.safetensors)") != std::string::npos);
  CHECK(std::filesystem::exists(tmp / "run/model_best.safetensors"));
  std::ifstream page(tmp / "run/training.html");
  const std::string html((std::istreambuf_iterator<char>(page)), std::istreambuf_iterator<char>());
  CHECK(html.find("Validation") != std::string::npos);
  // Through a pipe: plain lines, no bar.
  REQUIRE(test::run_tool("unet_train", ini + " --set output.dir=" + tmp / "run2", &out) == 0);
  CHECK(out.find("\r[") == std::string::npos);
  CHECK(out.find("step      2/12") != std::string::npos);
  // Through mpirun into a pipe: lines too. OpenMPI gives its ranks a pseudo-terminal whatever mpirun writes to, so
  // the bar's escape codes went into the user's log file (red-team corpus 18, M1).
  if (test::shell("command -v mpirun > /dev/null") == 0) {
    REQUIRE(test::shell("OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun -np 1 " +
                            test::tool_path("unet_train") + " " + ini + " --set output.dir=" + tmp / "run3" + " 2>&1",
                        &out) == 0);
    CHECK_MESSAGE(out.find("\r[") == std::string::npos, out);
    CHECK_MESSAGE(out.find("step      2/12") != std::string::npos, out);
  }
  // The best model is that of the validation with the highest mean Dice (the first of equals): the final weights
  // exactly when the last validation is strictly the best.
  std::ifstream log(tmp / "run2/log.jsonl");
  double best = -1, last = -1;
  for (std::string line; std::getline(log, line);) {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (!j.contains("val_mean_dice")) continue;
    last = j["val_mean_dice"].get<double>();
    if (j["step"] != 12) best = std::max(best, last);
  }
  const io::SafetensorsContent b = io::read_safetensors(tmp / "run2/model_best.safetensors"),
                               f = io::read_safetensors(tmp / "run2/model.safetensors");
  bool same = b.tensors.size() == f.tensors.size();
  for (const auto& [name, t] : b.tensors) same = same && std::memcmp(t.raw(), f.get(name).raw(), t.nbytes()) == 0;
  MESSAGE("best before the end " << best << ", last " << last);
  CHECK(same == (last > best));
}
