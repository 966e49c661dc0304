// INI configuration: typed keys with defaults, overrides, and errors that name the file, key and expectation.
#include <doctest/doctest.h>

#include <unistd.h>
#include <cstdio>
#include <filesystem>

#include <fstream>

#include "io/config.h"

using namespace unet::io;

namespace {
Config make_config() {
  return Config({{"train", "steps", KeyType::integer, "100", "number of optimizer steps"},
                 {"train", "lr", KeyType::real, "8e-4", "learning rate"},
                 {"train", "amp", KeyType::boolean, "false", "mixed precision"},
                 {"train", "optimizer", KeyType::string, "adamw", "optimizer", {"adamw", "adam", "sgd"}},
                 {"data", "patch_size", KeyType::int_list, "64, 64, 64", "patch size"},
                 {"data", "spacing", KeyType::real_list, "1, 1, 1.5", "target spacing"}});
}

std::string write_ini(const std::string& text) {
  auto path = std::filesystem::temp_directory_path() / ("unet_config_test_" + std::to_string(::getpid()) + ".ini");
  std::ofstream(path) << text;
  return path.string();
}
}  // namespace

TEST_CASE("defaults apply to keys the file does not set") {
  Config c = make_config();
  c.load_file(write_ini("[train]\nsteps = 7\n"));
  CHECK(c.get_int("train", "steps") == 7);
  CHECK(c.get_real("train", "lr") == doctest::Approx(8e-4));
  CHECK(c.get_bool("train", "amp") == false);
  CHECK(c.get_int_list("data", "patch_size") == std::vector<long>{64, 64, 64});
  CHECK(c.get_real_list("data", "spacing") == std::vector<double>{1, 1, 1.5});
}

TEST_CASE("--set overrides win over the file") {
  Config c = make_config();
  c.load_file(write_ini("[train]\nsteps = 7\noptimizer = sgd\n"));
  c.apply_override("train.steps=9");
  c.apply_override("data.patch_size = 32,48,16");
  CHECK(c.get_int("train", "steps") == 9);
  CHECK(c.get_string("train", "optimizer") == "sgd");
  CHECK(c.get_int_list("data", "patch_size") == std::vector<long>{32, 48, 16});
}

TEST_CASE("an unknown key is an error that suggests the nearest valid key") {
  Config c = make_config();
  std::string path = write_ini("[train]\nstepz = 7\n");
  CHECK_THROWS_WITH_AS(c.load_file(path), (path + ":2: unknown key 'train.stepz'; did you mean 'train.steps'?").c_str(),
                       ConfigError);
  CHECK_THROWS_WITH_AS(c.apply_override("data.patchsize=3"), doctest::Contains("did you mean 'data.patch_size'"),
                       ConfigError);
}

TEST_CASE("same_value compares values as written by what they mean") {
  CHECK(same_value("8e-4", "0.0008"));
  CHECK(same_value("00", "0"));
  CHECK(same_value("0.150", "0.15"));
  CHECK(same_value("32, 32,32", "32,32,32"));
  CHECK(same_value("yes", "TRUE"));
  CHECK(same_value(" adamw", "adamw"));
  CHECK_FALSE(same_value("8e-4", "8e-5"));
  CHECK_FALSE(same_value("32,32", "32,32,32"));
  CHECK_FALSE(same_value("adam", "adamw"));
  CHECK_FALSE(same_value("true", "false"));
  CHECK_FALSE(same_value("", "0"));
}

TEST_CASE("a badly typed value names the key and the expected type") {
  Config c = make_config();
  CHECK_THROWS_WITH_AS(c.load_file(write_ini("[train]\nlr = fast\n")),
                       doctest::Contains(":2: train.lr = 'fast': expected a number"), ConfigError);
  // Numbers below the smallest normal double are numbers (subnormal); below every double (1e-400, which would read
  // as 0 and be reported as "0") and above (1e400) they are not.
  c.apply_override("train.lr=1e-310");
  CHECK(c.get_real("train", "lr") == 1e-310);
  CHECK_THROWS_WITH_AS(c.apply_override("train.lr=1e-400"),
                       doctest::Contains("train.lr = '1e-400': expected a number (this one is below the smallest "
                                         "double, 4.9e-324: write 0 for zero)"),
                       ConfigError);
  c.apply_override("train.lr=0e-400");  // an exact zero
  // A whole number beyond 64 bits is an integer out of range, said so; a word is not an integer.
  for (const char* big : {"train.steps=18446744073709551615", "train.steps=-99999999999999999999",
                          "data.patch_size=32, 99999999999999999999, 32"})
    CHECK_THROWS_WITH_AS(c.apply_override(big),
                         doctest::Contains("in -9223372036854775808..9223372036854775807 (64 bits; the key's own "
                                           "range may be narrower)"),
                         ConfigError);
  bool threw = false;
  try {
    c.apply_override("train.steps=12x");
  } catch (const ConfigError& e) {
    threw = true;
    CHECK(std::string(e.what()).ends_with("train.steps = '12x': expected an integer"));
  }
  CHECK(threw);
  // A huge bad value is quoted by its beginning and its length, not whole (a 1 MB value made a 1 MB message).
  try {
    c.apply_override("train.lr=" + std::string(100000, '9') + "x");
    FAIL("accepted");
  } catch (const ConfigError& e) {
    CHECK(std::string(e.what()).size() < 400);
    CHECK(std::string(e.what()).find("... (100001 bytes)': expected a number") != std::string::npos);
  }
  CHECK(c.get_real("train", "lr") == 0);
  CHECK_THROWS_WITH_AS(c.apply_override("train.lr=1e400"), doctest::Contains("expected a number"), ConfigError);
  CHECK_THROWS_WITH_AS(c.apply_override("train.optimizer=lamb"), doctest::Contains("expected one of adamw, adam, sgd"),
                       ConfigError);
  CHECK_THROWS_WITH_AS(c.apply_override("data.patch_size=64,x,64"),
                       doctest::Contains("a comma-separated list of integers"), ConfigError);
  // An empty item anywhere, the last one included (it used to be dropped: "16,16,16," read as 16,16,16).
  for (const char* v : {"16,16,16,", ",16,16", "16,,16", "16, ,16", ","})
    CHECK_THROWS_WITH_AS(c.apply_override(std::string("data.patch_size=") + v),
                         doctest::Contains("a comma-separated list of integers"), ConfigError);
  c.apply_override("data.patch_size= 16 , 8,4 ");
  CHECK(c.get_int_list("data", "patch_size") == std::vector<long>{16, 8, 4});
  CHECK_THROWS_WITH_AS(c.apply_override("trainsteps"), doctest::Contains("expected section.key=value"), ConfigError);
  // A command line's --set list: each key once, as in a file (the second used to win without a word).
  Config d = make_config();
  CHECK_THROWS_WITH_AS(d.apply_overrides({"train.steps=4", "data.patch_size=8,8,8", " train . steps = 8"}),
                       "--set train.steps given twice ('4', then '8'); expected each key once", ConfigError);
  Config e = make_config();
  e.apply_overrides({"train.steps=4", "data.patch_size=8,8,8"});
  CHECK(e.get_int("train", "steps") == 4);
}

TEST_CASE("a missing file and a malformed line are errors naming the file") {
  Config c = make_config();
  CHECK_THROWS_WITH_AS(c.load_file("/nonexistent/x.ini"), "/nonexistent/x.ini: cannot open config file", ConfigError);
  std::string path = write_ini("[train]\nsteps = 3\nthis line has no equals sign\n");
  CHECK_THROWS_WITH_AS(c.load_file(path),
                       (path + ":3: not a valid INI line (expected 'key = value' or '[section]')").c_str(),
                       ConfigError);
}

TEST_CASE("the effective configuration is written back as INI that parses to the same values") {
  Config a = make_config();
  a.apply_override("train.steps=11");
  Config b = make_config();
  b.load_file(write_ini(a.to_ini()));
  CHECK(b.get_int("train", "steps") == 11);
  CHECK(b.to_ini() == a.to_ini());
}

TEST_CASE(
    "INI surprises are errors naming the line: duplicates, continuation lines, ' ;' or ' #' in a value; long lines "
    "parse") {
  Config c = make_config();
  std::string path = write_ini("[train]\nsteps = 5\nsteps = 7\n");
  CHECK_THROWS_WITH_AS(c.load_file(path),
                       (path + ":3: train.steps is set again (first at line 2); expected each key once").c_str(),
                       ConfigError);
  path = write_ini("[train]\nsteps = 5\n[data]\n[train]\nlr = 1\n");
  CHECK_THROWS_WITH_AS(
      c.load_file(path),
      (path + ":4: section [train] appears again (first at line 1); expected each section once").c_str(), ConfigError);
  path = write_ini("[train]\nsteps = 5\n  7\n");
  CHECK_THROWS_WITH_AS(c.load_file(path),
                       doctest::Contains((path + ":3: indented line '7': continuation lines").c_str()), ConfigError);
  path = write_ini("[train]\noptimizer = sgd ; adam is worse\n");
  CHECK_THROWS_WITH_AS(
      c.load_file(path),
      doctest::Contains((path + ":2: train.optimizer = 'sgd ; adam is worse': a ';' after a space").c_str()),
      ConfigError);
  // '#' as well: a path would silently take the comment in ("runs/a # first try" is a directory of that name).
  path = write_ini("[train]\noptimizer = sgd\t# adam is worse\n");
  CHECK_THROWS_WITH_AS(c.load_file(path),
                       (path + ":2: train.optimizer = 'sgd\t# adam is worse': a '#' after a space is not a comment "
                               "here (inline comments are not supported); put the comment on a line of its own")
                           .c_str(),
                       ConfigError);
  CHECK_THROWS_WITH_AS(make_config().apply_override("train.optimizer=sgd #x"),
                       doctest::Contains("--set: train.optimizer = 'sgd #x': a '#' after a space"), ConfigError);
  // Quotes stay in a value: a quoted path would be a relative directory named '"'. Refused, in the file or by --set.
  Config q({{"output", "dir", KeyType::string, "runs/x", "run directory"}});
  path = write_ini("[output]\ndir = \"/data/run\"\n");
  CHECK_THROWS_WITH_AS(q.load_file(path),
                       (path + ":2: output.dir = '\"/data/run\"': quotes are not removed here (the value would keep "
                               "them); expected the value without quotes")
                           .c_str(),
                       ConfigError);
  CHECK_THROWS_WITH_AS(q.apply_override("output.dir='runs/a'"), doctest::Contains("--set: output.dir = ''runs/a''"),
                       ConfigError);
  q.apply_override("output.dir=runs/it's");
  CHECK(q.get_string("output", "dir") == "runs/it's");
  // Without a space before them, ';' and '#' are part of the value.
  Config h({{"output", "dir", KeyType::string, "runs/x", "run directory"}});
  h.load_file(write_ini("[output]\ndir = runs/#1;2\n"));
  CHECK(h.get_string("output", "dir") == "runs/#1;2");
  // A key before any section, and an unknown section (even an empty one), are named with what was expected.
  path = write_ini("steps = 5\n[train]\n");
  CHECK_THROWS_WITH_AS(
      c.load_file(path),
      (path + ":1: 'steps' comes before any [section]; expected it under its section ([train])").c_str(), ConfigError);
  path = write_ini("[train]\nsteps = 5\n[bogus]\n");
  CHECK_THROWS_WITH_AS(c.load_file(path),
                       (path + ":3: unknown section [bogus]; expected one of [train], [data]").c_str(), ConfigError);
  // A NUL byte ends the number strtod sees: lr = 3e-3<NUL>junk would train with lr 3e-3.
  path = write_ini(std::string("[train]\nlr = 3e-3\0junk\n", 23));
  CHECK_THROWS_WITH_AS(c.load_file(path),
                       (path + ":2: train.lr: control character 0 at position 4 of the value; "
                               "expected a number")
                           .c_str(),
                       ConfigError);
  // --set refuses what the file reader does: a newline would add lines (a [data] section) to the run's config.ini.
  Config e = make_config();
  CHECK_THROWS_WITH_AS(e.apply_override("train.optimizer=sgd\n[data]\nbatch_size = 7"),
                       doctest::Contains("--set: train.optimizer: control character 10 at position 3"), ConfigError);
  CHECK_THROWS_WITH_AS(e.apply_override("train.optimizer=sgd ;x"),
                       doctest::Contains("--set: train.optimizer = 'sgd ;x': a ';' after a space"), ConfigError);
  // A line of 300 characters is one line: its tail is not parsed as a line of its own.
  Config d = make_config();
  d.load_file(write_ini("[data]\npatch_size = " + std::string(280, ' ') + "8, 8, 8\n[train]\nsteps = 3\n"));
  CHECK(d.get_int_list("data", "patch_size") == std::vector<long>{8, 8, 8});
}

TEST_CASE("a value that is not UTF-8 is an error naming the key and the byte, before any work") {
  // Paths go into the checkpoint's JSON: a Latin-1 output.dir used to fail when the first checkpoint was written.
  Config c({{"output", "dir", KeyType::string, "runs/x", "run directory"}});
  for (const std::string ok : {"runs/caf\xC3\xA9", "runs/\xCE\xBCm", "runs/\xE2\x82\xAC", "runs/\xF0\x9F\xA7\xA0"}) {
    c.apply_override("output.dir=" + ok);
    CHECK(c.get_string("output", "dir") == ok);
  }
  const std::vector<std::pair<std::string, int>> bad = {{"runs/caf\xE9", 8},           // Latin-1 e acute
                                                        {"runs/\xC0\xAF", 5},          // overlong '/'
                                                        {"runs/\xED\xA0\x80", 5},      // a UTF-16 surrogate
                                                        {"runs/\xE2\x82", 5},          // cut short
                                                        {"runs/\xF4\x90\x80\x80", 5},  // above U+10FFFF
                                                        {"runs/\x80x", 5}};            // a continuation byte first
  for (const auto& [value, at] : bad) {
    CAPTURE(value);
    char byte[8];
    std::snprintf(byte, sizeof byte, "0x%02X", static_cast<unsigned char>(value[static_cast<size_t>(at)]));
    CHECK_THROWS_WITH_AS(c.apply_override("output.dir=" + value),
                         ("--set: output.dir: byte " + std::string(byte) + " at position " + std::to_string(at) +
                          " of the value is not UTF-8; expected UTF-8 text (rename the file or directory)")
                             .c_str(),
                         ConfigError);
  }
  const std::string path = write_ini("[output]\ndir = d\xE9s\n");
  CHECK_THROWS_WITH_AS(c.load_file(path), doctest::Contains(":2: output.dir: byte 0xE9 at position 1"), ConfigError);
}
