// unet_train --resume: a run killed with SIGKILL at any moment and resumed from its checkpoint ends with bitwise the
// weights, optimizer state and validation of a run never interrupted; and what resuming refuses.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "io/json.h"
#include "io/safetensors.h"
#include "tests/test_util.h"

using namespace unet;
namespace fs = std::filesystem;
using test::run_tool;
using test::shell;
using test::write_text;

namespace {

// 120 steps of a small 3-level network on 4 cases, two folds (validations at steps 40 and 80 and at the end), a
// checkpoint every step so that kills often land while one is being written.
std::string config(const test::TempDir& tmp) {
  REQUIRE(run_tool("unet_synth", "--output " + tmp / "data" + " --train 4 --test 1 --size 20,20,20 --seed 4") == 0);
  return write_text(tmp / "train.ini", "[data]\ndataset = " + tmp / "data" +
                                           "\npatch_size = 16,16,16\nbatch_size = 2\nfolds = 2\n"
                                           "[model]\nfilters = 4\ndepth = 3\n"
                                           "[train]\nsteps = 120\nlog_every = 5\nval_every = 40\nsave_every = 1\n"
                                           "seed = 7\nscheduler = poly\n[runtime]\nthreads = 1\n");
}

// Whether two safetensors files hold the same tensors, bit for bit.
bool same_tensors(const std::string& a, const std::string& b, std::string* why) {
  const io::SafetensorsContent x = io::read_safetensors(a), y = io::read_safetensors(b);
  if (x.tensors.size() != y.tensors.size()) {
    *why = "tensor counts differ";
    return false;
  }
  for (const auto& [name, t] : x.tensors) {
    const Tensor& u = y.get(name);
    if (t.shape() != u.shape() || t.dtype() != u.dtype() || std::memcmp(t.raw(), u.raw(), t.nbytes()) != 0) {
      *why = name + " differs";
      return false;
    }
  }
  return true;
}

int64_t checkpoint_step(const std::string& run) {
  return std::stoll(io::read_safetensors(run + "/checkpoint.safetensors").metadata.at("step"));
}

}  // namespace

TEST_CASE("unet_train killed with SIGKILL three times and resumed ends bitwise as a run never interrupted") {
  test::TempDir tmp("resume");
  const std::string ini = config(tmp), train = test::tool_path("unet_train");
  std::string out;
  REQUIRE_MESSAGE(run_tool("unet_train", ini + " --set output.dir=" + tmp / "whole", &out) == 0, out);

  // Kills at different moments: soon after the first checkpoint appears, then after resuming, at delays that land
  // inside steps, checkpoint writes and validations.
  const std::string run = tmp / "killed";
  int64_t last_step = -1;
  for (const char* delay : {"0.05", "0.15", "0.3"}) {
    const std::string start =
        last_step < 0 ? train + " " + ini + " --set output.dir=" + run : train + " " + ini + " --resume " + run;
    const std::string wait_first =
        last_step < 0 ? "while [ ! -f " + run + "/checkpoint.safetensors ]; do sleep 0.01; done; " : "";
    const int rc = shell("(" + start + " > " + tmp / "log.txt" + " 2>&1 & p=$!; " + wait_first + "sleep " + delay +
                         "; kill -9 $p; wait $p)");
    CHECK(rc == 137);  // 128 + SIGKILL: killed, not finished
    const int64_t step = checkpoint_step(run);
    MESSAGE("killed after " << std::string(delay) << " s: checkpoint at step " << step);
    CHECK(step >= std::max<int64_t>(last_step, 1));  // never goes back; the file is whole (it was read)
    last_step = step;
  }
  REQUIRE_MESSAGE(run_tool("unet_train", ini + " --resume " + run, &out) == 0, out);
  CHECK(out.find("resuming " + run + " at step") != std::string::npos);

  std::string why;
  CHECK_MESSAGE(same_tensors(tmp / "whole/model.safetensors", run + "/model.safetensors", &why), why);
  CHECK_MESSAGE(same_tensors(tmp / "whole/checkpoint.safetensors", run + "/checkpoint.safetensors", &why), why);
  CHECK_MESSAGE(same_tensors(tmp / "whole/model_best.safetensors", run + "/model_best.safetensors", &why), why);
  const auto read_json = [](const std::string& path) { return nlohmann::json::parse(std::ifstream(path)); };
  CHECK(read_json(tmp / "whole/validation.json")["val_dice"] == read_json(run + "/validation.json")["val_dice"]);
  // The log: the same steps in the same order (the lines a killed run wrote after its checkpoint were dropped), with
  // the same losses and learning rates: a line after a checkpoint that is not on the log grid averages the steps
  // before it too (their sums are in the checkpoint). Only the timings and memory differ.
  std::vector<nlohmann::json> whole_lines, killed_lines;
  for (auto [path, lines] :
       {std::pair{tmp / "whole/log.jsonl", &whole_lines}, std::pair{run + "/log.jsonl", &killed_lines}}) {
    std::ifstream log(path);
    for (std::string line; std::getline(log, line);) {
      nlohmann::json kept, j = nlohmann::json::parse(line);
      for (const char* key : {"step", "loss", "dice_loss", "ce", "lr", "val_dice", "val_mean_dice"})
        if (j.contains(key)) kept[key] = j[key];
      lines->push_back(kept);
    }
  }
  CHECK(whole_lines.size() == killed_lines.size());
  for (size_t i = 0; i < std::min(whole_lines.size(), killed_lines.size()); ++i)
    CHECK_MESSAGE(whole_lines[i] == killed_lines[i],
                  std::string(whole_lines[i].dump() + " | " + killed_lines[i].dump()));
}

TEST_CASE("unet_train --resume keeps a damaged log.jsonl aside, says so, and continues the readable lines") {
  test::TempDir tmp("resume_damaged_log");
  const std::string ini = config(tmp) + " --set train.log_every=1";
  std::string out;
  REQUIRE_MESSAGE(run_tool("unet_train", ini + " --set train.steps=3 --set output.dir=" + tmp / "run", &out) == 0, out);
  const std::string whole = io::read_text_file(tmp / "run/log.jsonl");
  const size_t second = whole.find('\n') + 1;  // the line of step 1 stays, then garbage, then the rest
  const std::string damaged = whole.substr(0, second) + "garbage\n" + whole.substr(second);
  test::write_text(tmp / "run/log.jsonl", damaged);
  REQUIRE_MESSAGE(run_tool("unet_train", ini + " --set train.steps=4 --resume " + tmp / "run", &out) == 0, out);
  CHECK_MESSAGE(
      out.find("unet_train: warning: " +
               tmp / "run/log.jsonl: 1 line(s) are not log lines or repeat an earlier step (the first: " +
               "line 2); the file is kept as " + tmp / "run/log.jsonl.damaged" + " and the log continues with the " +
               std::to_string(std::count(whole.begin(), whole.end(), '\n')) + " readable line(s)") != std::string::npos,
      out);
  CHECK(io::read_text_file(tmp / "run/log.jsonl.damaged") == damaged);
  const std::string log = io::read_text_file(tmp / "run/log.jsonl");
  CHECK(log.substr(0, whole.size()) == whole);  // steps 1 to 3, then step 4's line
  CHECK(log.find("\"step\":4") != std::string::npos);
  // A last line cut by a kill (no newline) is no damage: dropped without a word.
  test::write_text(tmp / "run/log.jsonl", whole + "{\"step\":");
  fs::remove(tmp / "run/log.jsonl.damaged");
  REQUIRE_MESSAGE(run_tool("unet_train", ini + " --set train.steps=4 --resume " + tmp / "run", &out) == 0, out);
  CHECK_MESSAGE(out.find("not log lines") == std::string::npos, out);
  CHECK(!fs::exists(tmp / "run/log.jsonl.damaged"));
  // A line repeated (an edit, two logs concatenated) is damage too: the log would not be the uninterrupted run's.
  test::write_text(tmp / "run/log.jsonl", whole.substr(0, second) + whole);
  REQUIRE_MESSAGE(run_tool("unet_train", ini + " --set train.steps=4 --resume " + tmp / "run", &out) == 0, out);
  CHECK_MESSAGE(
      out.find("1 line(s) are not log lines or repeat an earlier step (the first: line 2)") != std::string::npos, out);
  CHECK(io::read_text_file(tmp / "run/log.jsonl").substr(0, whole.size()) == whole);
  // No log at all: said.
  fs::remove(tmp / "run/log.jsonl");
  REQUIRE_MESSAGE(run_tool("unet_train", ini + " --set train.steps=4 --resume " + tmp / "run", &out) == 0, out);
  CHECK_MESSAGE(out.find(tmp / "run/log.jsonl: missing; the log continues from step 4") != std::string::npos, out);
}

TEST_CASE("a run resumed with train.steps lowered to its checkpoint's step logs as the run of that many steps") {
  test::TempDir tmp("resume_lowered");
  // No schedule: the learning rate does not depend on train.steps, so the run of S steps is the reference.
  const std::string ini = config(tmp) + " --set train.scheduler=none --set train.save_every=7";
  const std::string train = test::tool_path("unet_train"), run = tmp / "killed";
  REQUIRE(shell("(" + train + " " + ini + " --set output.dir=" + run + " > " + tmp / "log.txt" +
                " 2>&1 & p=$!; while [ ! -f " + run + "/checkpoint.safetensors ]; do sleep 0.01; done; kill -9 $p; " +
                "wait $p)") == 137);
  const int64_t at = checkpoint_step(run);
  MESSAGE("checkpoint at step " << at);
  std::string out;
  REQUIRE_MESSAGE(
      run_tool("unet_train", ini + " --set train.steps=" + std::to_string(at) + " --resume " + run, &out) == 0, out);
  REQUIRE_MESSAGE(
      run_tool("unet_train", ini + " --set train.steps=" + std::to_string(at) + " --set output.dir=" + tmp / "whole",
               &out) == 0,
      out);
  // The last step's line (the steps since the last line before the checkpoint) and the validation's: both there.
  const auto lines = [](const std::string& path) {
    std::vector<nlohmann::json> kept;
    std::ifstream log(path);
    for (std::string line; std::getline(log, line);) {
      nlohmann::json k, j = nlohmann::json::parse(line);
      for (const char* key : {"step", "loss", "dice_loss", "ce", "lr", "val_dice"})
        if (j.contains(key)) k[key] = j[key];
      kept.push_back(k);
    }
    return kept;
  };
  const std::vector<nlohmann::json> whole = lines(tmp / "whole/log.jsonl"), resumed = lines(run + "/log.jsonl");
  CHECK(whole.size() == resumed.size());
  for (size_t i = 0; i < std::min(whole.size(), resumed.size()); ++i)
    CHECK_MESSAGE(whole[i] == resumed[i], std::string(whole[i].dump() + " | " + resumed[i].dump()));
}

TEST_CASE("unet_train --resume refuses data that changed since the checkpoint, naming the case") {
  test::TempDir tmp("resume_changed_data");
  const std::string ini = config(tmp) + " --set output.dir=" + tmp / "run";
  std::string out;
  REQUIRE_MESSAGE(run_tool("unet_train", ini + " --set train.steps=4", &out) == 0, out);
  // Another thread count prepares the same bytes: no change.
  CHECK_MESSAGE(
      run_tool("unet_train", ini + " --set train.steps=4 --set runtime.threads=2 --resume " + tmp / "run", &out) == 0,
      out);
  // The same cases listed in another order (the folds would hold other cases): said so.
  {
    const std::string json = io::read_text_file(tmp / "data/dataset.json");
    nlohmann::json j = nlohmann::json::parse(json);
    std::reverse(j["training"].begin(), j["training"].end());
    std::ofstream(tmp / "data/dataset.json") << j.dump();
    CHECK(run_tool("unet_train", ini + " --set train.steps=6 --resume " + tmp / "run", &out) == 2);
    CHECK_MESSAGE(out.find("unet_train: --resume: " + tmp / "data/dataset.json" +
                           " lists the run's cases in another order than when " + tmp / "run/checkpoint.safetensors" +
                           " was trained on them") != std::string::npos,
                  out);
    std::ofstream(tmp / "data/dataset.json") << json;
  }
  // The dataset made again with another seed under the same names: refused before any step, nothing written.
  REQUIRE(run_tool("unet_synth",
                   "--output " + tmp / "data" + " --train 4 --test 1 --size 20,20,20 --seed 5 --overwrite", &out) == 0);
  const std::string checkpoint = io::read_text_file(tmp / "run/checkpoint.safetensors");
  CHECK(run_tool("unet_train", ini + " --set train.steps=6 --resume " + tmp / "run", &out) == 2);
  CHECK_MESSAGE(out.find("unet_train: --resume: " + tmp / "data" + ": case case_000 changed since the run in " +
                         tmp / "run/checkpoint.safetensors" + " was trained on it") != std::string::npos,
                out);
  CHECK(io::read_text_file(tmp / "run/checkpoint.safetensors") == checkpoint);
}

TEST_CASE("unet_train --resume refuses a changed configuration, a missing checkpoint and a finished step count") {
  test::TempDir tmp("resume_refuses");
  const std::string ini = config(tmp);
  std::string out;
  // Nothing to resume from.
  CHECK(run_tool("unet_train", ini + " --resume " + tmp / "nothing", &out) == 2);
  CHECK(out.find("no checkpoint.safetensors") != std::string::npos);
  REQUIRE(run_tool("unet_train", ini + " --set train.steps=4 --set output.dir=" + tmp / "run", &out) == 0);
  const std::string before = io::read_safetensors(tmp / "run/checkpoint.safetensors").metadata.at("step");
  // A key that changes the training: named, with both values, exit 2, nothing written.
  CHECK(run_tool("unet_train", ini + " --set train.steps=4 --set train.lr=0.001 --resume " + tmp / "run", &out) == 2);
  CHECK(out.find("train.lr = 0.001 here, but 8e-4") != std::string::npos);
  // The same values written otherwise are no change: 0.0008 for 8e-4, 07 for 7, the dataset's directory with a
  // trailing slash (resuming the finished run only validates again).
  CHECK_MESSAGE(run_tool("unet_train",
                         ini + " --set train.steps=4 --set train.lr=0.0008 --set train.seed=07 " +
                             "--set data.dataset=" + tmp / "data/ --resume " + tmp / "run",
                         &out) == 0,
                out);
  CHECK(io::read_safetensors(tmp / "run/checkpoint.safetensors").metadata.at("step") == before);
  // Intervals and the runtime section may change: resuming a finished run only validates and writes again, and its
  // log keeps one line for that validation (each resume used to add another).
  const std::string log_before = io::read_text_file(tmp / "run/log.jsonl");
  CHECK(log_before.find("val_dice") != std::string::npos);
  for (int i = 0; i < 2; ++i)
    CHECK(run_tool("unet_train",
                   ini + " --set train.steps=4 --set train.log_every=1 --set runtime.threads=2 --resume " + tmp / "run",
                   &out) == 0);
  CHECK(io::read_safetensors(tmp / "run/checkpoint.safetensors").metadata.at("step") == before);
  CHECK(io::read_text_file(tmp / "run/log.jsonl") == log_before);
  // A fresh run into a directory holding a run is refused; --overwrite replaces the run's files and nothing else.
  test::write_text(tmp / "run/notes.txt", "mine");
  CHECK(run_tool("unet_train", ini + " --set train.steps=4 --set output.dir=" + tmp / "run", &out) == 2);
  CHECK(out.find("holds a run (config.ini, log.jsonl") != std::string::npos);
  CHECK(out.find("--resume " + tmp / "run" + " continues it, --overwrite replaces it") != std::string::npos);
  // A run killed before its first checkpoint: neither message sends the user to the other's refusal.
  fs::create_directories(tmp / "half");
  test::write_text(tmp / "half/config.ini", "[train]\n");
  CHECK(run_tool("unet_train", ini + " --set train.steps=4 --set output.dir=" + tmp / "half", &out) == 2);
  CHECK_MESSAGE(out.find("holds a run (config.ini): it has no checkpoint to resume from; --overwrite replaces it") !=
                    std::string::npos,
                out);
  CHECK(run_tool("unet_train", ini + " --set train.steps=4 --resume " + tmp / "half", &out) == 2);
  CHECK_MESSAGE(out.find("start without --resume, with --overwrite if the directory holds a run") != std::string::npos,
                out);
  CHECK(run_tool("unet_train", ini + " --set train.steps=2 --set folds=1 --set output.dir=" + tmp / "run --overwrite",
                 &out) != 0);  // (a bad key: nothing is removed before the configuration is read)
  CHECK(fs::exists(tmp / "run/model_best.safetensors"));
  REQUIRE(run_tool("unet_train",
                   ini + " --set train.steps=2 --set data.folds=1 --set train.val_every=0 --set output.dir=" +
                       tmp / "run" + " --overwrite",
                   &out) == 0);
  CHECK_FALSE(fs::exists(tmp / "run/model_best.safetensors"));  // no validation in this run: the old best is gone
  CHECK(fs::exists(tmp / "run/notes.txt"));
  REQUIRE(run_tool("unet_train", ini + " --set train.steps=4 --set output.dir=" + tmp / "run" + " --overwrite", &out) == 0);
  // Fewer steps than the checkpoint has done.
  CHECK(run_tool("unet_train", ini + " --set train.steps=2 --resume " + tmp / "run", &out) == 2);
  CHECK(out.find("beyond train.steps = 2") != std::string::npos);
  // Both are found before the data is read: with the training images gone, the same errors (the reader would name a
  // missing image), and the cache the run would write is not made.
  fs::remove_all(tmp / "data/imagesTr");
  CHECK(run_tool("unet_train", ini + " --set train.steps=2 --resume " + tmp / "run", &out) == 2);
  CHECK(out.find("beyond train.steps = 2") != std::string::npos);
  CHECK(run_tool("unet_train",
                 ini + " --set train.steps=4 --set model.filters=8 --set data.cache=" + tmp / "cache" + " --resume " +
                     tmp / "run",
                 &out) == 2);
  CHECK(out.find("model.filters = 8 here, but 4") != std::string::npos);
  CHECK_FALSE(fs::exists(tmp / "cache"));
}

TEST_CASE("a second unet_train into a run directory in use is refused, fresh, --overwrite or --resume") {
  test::TempDir tmp("resume_locked");
  const std::string ini = config(tmp), run = tmp / "run", train = test::tool_path("unet_train");
  std::string out;
  // A run that goes on until killed, its checkpoint written at every step.
  const std::string pid_file = tmp / "pid";
  REQUIRE(test::shell("(" + train + " " + ini + " --set train.steps=1000000 --set output.dir=" + run + " > " +
                      tmp / "log.txt" + " 2>&1 & echo $! > " + pid_file + "; while [ ! -f " + run +
                      "/checkpoint.safetensors ]; do sleep 0.05; done)") == 0);
  std::string pid = io::read_text_file(pid_file);
  pid.erase(pid.find_last_not_of(" \n") + 1);
  const std::string config_before = io::read_text_file(run + "/config.ini");
  for (const std::string& how :
       {" --set train.steps=3 --set output.dir=" + run, " --set train.steps=3 --set output.dir=" + run + " --overwrite",
        " --set train.steps=1000000 --resume " + run}) {
    CAPTURE(how);
    CHECK(run_tool("unet_train", ini + how, &out) == 2);
    CHECK_MESSAGE(
        out.find("output.dir = " + run + ": another unet_train is writing a run there now") != std::string::npos, out);
  }
  CHECK(io::read_text_file(run + "/config.ini") == config_before);  // the running run's files are its own
  CHECK(test::shell("kill -9 " + pid + "; while kill -0 " + pid + " 2>/dev/null; do sleep 0.05; done") == 0);
  // Ended (even by SIGKILL): the directory is free again.
  CHECK_MESSAGE(
      run_tool("unet_train", ini + " --set train.steps=3 --set output.dir=" + run + " --overwrite", &out) == 0, out);
}

TEST_CASE("a resumed run's train_seconds counts every session, not only the last") {
  test::TempDir tmp("resume_seconds");
  const std::string ini = config(tmp);
  std::string out;
  REQUIRE(run_tool("unet_train", ini + " --set train.steps=6 --set output.dir=" + tmp / "run", &out) == 0);
  const double first = std::stod(io::read_safetensors(tmp / "run/checkpoint.safetensors").metadata.at("train_seconds"));
  CHECK(first > 0);
  // One more step: the last session alone is shorter than the first, which the whole run includes.
  REQUIRE(run_tool("unet_train", ini + " --set train.steps=7 --resume " + tmp / "run", &out) == 0);
  const nlohmann::json result = nlohmann::json::parse(io::read_text_file(tmp / "run/validation.json"));
  CHECK(result["train_seconds"].get<double>() >= first);
  CHECK(std::stod(io::read_safetensors(tmp / "run/checkpoint.safetensors").metadata.at("train_seconds")) >= first);
}
