// What a training run shows: log.jsonl (one JSON object per line), training.html (the loss and validation Dice
// curves drawn from it as inline SVG, a page with no outside resource), and a progress bar with ETA when the output
// is a terminal (plain lines otherwise).
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace unet::models {

// A polyline's points for values ys at positions xs: [x_min, x_max] x [y_min, y_max] scaled onto the box
// [left, right] x [top, bottom] (y grows downwards, so y_max is at `top`); at most max_points points, the series
// thinned evenly (first and last kept). Exposed for the tests.
struct Box2D {
  double left, top, right, bottom;
};
std::vector<std::pair<double, double>> curve_points(const std::vector<double>& xs, const std::vector<double>& ys,
                                                    const Box2D& box, double x_min, double x_max, double y_min,
                                                    double y_max, size_t max_points = 2000);

// The page: the training loss (and its Dice and CE parts) against the step, and the validation's mean Dice when
// there is one, from log.jsonl's lines.
std::string report_html(const std::vector<nlohmann::json>& lines, const std::string& title);

class RunLog {
 public:
  // Opens dir/log.jsonl: a fresh run truncates it; a run resumed at first_step > 0 keeps the lines up to that step
  // (those a killed run wrote after its checkpoint, and a cut last line, go). Other lines that are not log lines, or
  // repeat a step (of training or validation) already seen (a damaged file), go too, the file as it was is kept as
  // log.jsonl.damaged, and warning() says so; it also says when log.jsonl is missing.
  RunLog(const std::filesystem::path& dir, int64_t first_step, const std::string& title);
  const std::string& warning() const { return warning_; }  // "" when the log was whole
  // Appends a line to log.jsonl (flushed) and, for the report, to memory.
  void add(const nlohmann::json& line);
  // Rewrites training.html (atomically) from every line so far.
  void write_report() const;
  const std::vector<nlohmann::json>& lines() const { return lines_; }

 private:
  std::filesystem::path dir_;
  std::string title_;
  std::ofstream file_;
  std::vector<nlohmann::json> lines_;
  std::string warning_;
};

// A one-line progress bar redrawn in place on a terminal (at most 4 times a second): step, percentage, the last
// logged loss, samples per second and the time left. On anything else, and in a process a launcher started (mpirun,
// srun), it draws nothing.
class ProgressBar {
 public:
  ProgressBar(std::FILE* out, int64_t first_step, int64_t steps, int64_t samples_per_step);
  bool active() const { return active_; }
  void update(int64_t steps_done, double last_loss);  // after each step
  void clear();   // erases the bar (before another line is printed); the next update draws it again
  void finish();  // ends the bar's line

 private:
  std::FILE* out_;
  bool active_;
  int64_t first_, steps_, samples_per_step_;
  std::chrono::steady_clock::time_point start_, last_draw_{};
  bool drawn_ = false;
};

}  // namespace unet::models
