// RunLog, the training report page and the progress bar (models/run_log.h).
#include "models/run_log.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>
#include <sstream>
#include <stdexcept>

#include "engine/comm.h"
#include "io/atomic_file.h"

namespace unet::models {

std::vector<std::pair<double, double>> curve_points(const std::vector<double>& xs, const std::vector<double>& ys,
                                                    const Box2D& box, double x_min, double x_max, double y_min,
                                                    double y_max, size_t max_points) {
  std::vector<std::pair<double, double>> out;
  const size_t n = std::min(xs.size(), ys.size());
  if (n == 0) return out;
  const size_t m = std::min(n, std::max<size_t>(2, max_points));
  for (size_t k = 0; k < m; ++k) {
    const size_t i = m == 1 ? 0 : k * (n - 1) / (m - 1);  // evenly over the series, first and last included
    const double fx = x_max > x_min ? (xs[i] - x_min) / (x_max - x_min) : 0;
    const double fy = y_max > y_min ? (ys[i] - y_min) / (y_max - y_min) : 0.5;
    out.emplace_back(box.left + fx * (box.right - box.left), box.bottom - fy * (box.bottom - box.top));
  }
  return out;
}

namespace {

std::string escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<')
      o += "&lt;";
    else if (c == '>')
      o += "&gt;";
    else if (c == '&')
      o += "&amp;";
    else if (c == '"')
      o += "&quot;";
    else
      o += c;
  }
  return o;
}

std::string number(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.4g", v);
  return b;
}

struct Series {
  std::string name, color, dash;
  std::vector<double> x, y;
};

// One chart: the series over a shared step axis, the value range from their values (or [lo, hi] when given).
std::string chart(const std::string& heading, const std::vector<Series>& series, double lo = NAN, double hi = NAN) {
  const Box2D box{60, 20, 780, 280};
  double x_min = INFINITY, x_max = -INFINITY, y_min = lo, y_max = hi;
  for (const Series& s : series)
    for (size_t i = 0; i < s.x.size(); ++i) {
      x_min = std::min(x_min, s.x[i]);
      x_max = std::max(x_max, s.x[i]);
      if (std::isnan(lo)) y_min = std::isnan(y_min) ? s.y[i] : std::min(y_min, s.y[i]);
      if (std::isnan(hi)) y_max = std::isnan(y_max) ? s.y[i] : std::max(y_max, s.y[i]);
    }
  std::ostringstream o;
  o << "<h2>" << escape(heading) << "</h2>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"800\" height=\"310\">\n";
  if (!std::isfinite(x_min)) return o.str() + "<text x=\"60\" y=\"40\">no data yet</text></svg>\n";
  o << "<rect x=\"60\" y=\"20\" width=\"720\" height=\"260\" fill=\"none\" stroke=\"#999\"/>\n";
  o << "<text x=\"55\" y=\"25\" text-anchor=\"end\">" << number(y_max) << "</text>\n";
  o << "<text x=\"55\" y=\"280\" text-anchor=\"end\">" << number(y_min) << "</text>\n";
  o << "<text x=\"60\" y=\"298\">step " << number(x_min) << "</text>\n";
  o << "<text x=\"780\" y=\"298\" text-anchor=\"end\">step " << number(x_max) << "</text>\n";
  double legend_x = 80;
  for (const Series& s : series) {
    const std::vector<std::pair<double, double>> pts = curve_points(s.x, s.y, box, x_min, x_max, y_min, y_max);
    o << "<polyline fill=\"none\" stroke=\"" << s.color << "\" stroke-width=\"1.5\"" << s.dash << " points=\"";
    for (const auto& [px, py] : pts) o << number(px) << "," << number(py) << " ";
    o << "\"/>\n";
    if (pts.size() <= 50)
      for (const auto& [px, py] : pts)
        o << "<circle cx=\"" << number(px) << "\" cy=\"" << number(py) << "\" r=\"2.5\" fill=\"" << s.color << "\"/>\n";
    o << "<text x=\"" << legend_x << "\" y=\"40\" fill=\"" << s.color << "\">" << escape(s.name) << "</text>\n";
    legend_x += 14 + 8 * static_cast<double>(s.name.size());
  }
  o << "</svg>\n";
  return o.str();
}

}  // namespace

std::string report_html(const std::vector<nlohmann::json>& lines, const std::string& title) {
  Series loss{"loss", "#1f77b4", "", {}, {}}, dice{"Dice part", "#ff7f0e", " stroke-dasharray=\"4 3\"", {}, {}},
      ce{"CE part", "#2ca02c", " stroke-dasharray=\"4 3\"", {}, {}}, val{"validation mean Dice", "#d62728", "", {}, {}};
  for (const nlohmann::json& j : lines) {
    if (!j.contains("step")) continue;
    const double step = j["step"].get<double>();
    if (j.contains("loss")) {
      loss.x.push_back(step), loss.y.push_back(j["loss"].get<double>());
      if (j.contains("dice_loss")) dice.x.push_back(step), dice.y.push_back(j["dice_loss"].get<double>());
      if (j.contains("ce")) ce.x.push_back(step), ce.y.push_back(j["ce"].get<double>());
    }
    if (j.contains("val_mean_dice")) val.x.push_back(step), val.y.push_back(j["val_mean_dice"].get<double>());
  }
  std::ostringstream o;
  o << "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>" << escape(title)
    << "</title>\n<style>body{font-family:sans-serif;margin:24px} text{font-size:12px;font-family:sans-serif}</style>"
       "</head><body>\n<h1>"
    << escape(title) << "</h1>\n<p>";
  if (!loss.x.empty()) o << "step " << number(loss.x.back()) << ", loss " << number(loss.y.back());
  if (!val.x.empty())
    o << "; validation mean Dice " << number(val.y.back()) << " (best "
      << number(*std::max_element(val.y.begin(), val.y.end())) << ")";
  o << ". From log.jsonl beside this page.</p>\n";
  o << chart("Training loss (mean over each log interval)", {loss, dice, ce});
  if (!val.x.empty()) o << chart("Validation", {val}, 0, 1);
  o << "</body></html>\n";
  return o.str();
}

RunLog::RunLog(const std::filesystem::path& dir, int64_t first_step, const std::string& title)
    : dir_(dir), title_(title) {
  const std::filesystem::path path = dir / "log.jsonl";
  if (first_step > 0) {
    std::ifstream old(path, std::ios::binary);
    if (!old)
      warning_ = path.string() + ": missing; the log continues from step " + std::to_string(first_step) +
                 " without the lines before it";
    const std::string text((std::istreambuf_iterator<char>(old)), {});
    old.close();
    std::string kept;
    size_t damaged = 0, first_damaged = 0, number = 0;
    int64_t last_train = 0, last_validation = 0;  // a kind's steps only increase: a repeated or older line is damage
    for (size_t at = 0; at < text.size();) {
      const size_t end = text.find('\n', at);
      const std::string line = text.substr(at, end == std::string::npos ? std::string::npos : end - at);
      at = end == std::string::npos ? text.size() : end + 1;
      ++number;
      const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      const bool readable = j.is_object() && j.contains("step") && j["step"].is_number_integer();
      int64_t* last = readable && j.contains("val_dice") ? &last_validation : &last_train;
      if (readable && j["step"].get<int64_t>() > *last) {
        if (j["step"].get<int64_t>() <= first_step) {
          kept += line + "\n";
          lines_.push_back(j);
          *last = j["step"].get<int64_t>();
        }
      } else if ((readable || end != std::string::npos) && !line.empty()) {
        // (An unreadable last line without its newline was cut by a kill: no damage.)
        if (damaged++ == 0) first_damaged = number;
      }
    }
    if (damaged > 0) {
      io::write_file_atomically(path.string() + ".damaged", text);
      warning_ = path.string() + ": " + std::to_string(damaged) +
                 " line(s) are not log lines or repeat an earlier step (the first: line " +
                 std::to_string(first_damaged) + "); the file is kept as " + path.string() +
                 ".damaged and the log continues with the " + std::to_string(lines_.size()) + " readable line(s)";
    }
    io::write_file_atomically(path.string(), kept);
  }
  file_.open(path, first_step > 0 ? std::ios::app : std::ios::trunc);
  if (!file_) throw std::runtime_error(path.string() + ": cannot write the training log");
}

void RunLog::add(const nlohmann::json& line) {
  file_ << line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n" << std::flush;
  lines_.push_back(line);
}

void RunLog::write_report() const {
  io::write_file_atomically((dir_ / "training.html").string(), report_html(lines_, title_));
}

ProgressBar::ProgressBar(std::FILE* out, int64_t first_step, int64_t steps, int64_t samples_per_step)
    : out_(out),
      // Under mpirun a rank's standard output is a pseudo-terminal even when mpirun's goes to a file or a pipe.
      active_(out && isatty(fileno(out)) && !started_by_launcher()),
      first_(first_step),
      steps_(steps),
      samples_per_step_(samples_per_step),
      start_(std::chrono::steady_clock::now()) {}

void ProgressBar::update(int64_t done, double last_loss) {
  if (!active_) return;
  const auto now = std::chrono::steady_clock::now();
  if (drawn_ && done < steps_ && now - last_draw_ < std::chrono::milliseconds(250)) return;
  last_draw_ = now;
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double per_step = done > first_ ? elapsed / static_cast<double>(done - first_) : 0;
  const long left = std::lround(per_step * static_cast<double>(steps_ - done));
  const double fraction = static_cast<double>(done) / static_cast<double>(std::max<int64_t>(1, steps_));
  const int width = 24, filled = static_cast<int>(fraction * width);
  std::string bar(static_cast<size_t>(filled), '#');
  bar.resize(width, '.');
  char loss[32] = "-";
  if (std::isfinite(last_loss)) std::snprintf(loss, sizeof loss, "%.4f", last_loss);
  std::fprintf(out_, "\r[%s] step %ld/%ld %3.0f%%  loss %s  %.2f samples/s  ETA %ld:%02ld:%02ld \033[K", bar.c_str(),
               static_cast<long>(done), static_cast<long>(steps_), 100 * fraction, loss,
               per_step > 0 ? static_cast<double>(samples_per_step_) / per_step : 0.0, left / 3600, left / 60 % 60,
               left % 60);
  std::fflush(out_);
  drawn_ = true;
}

void ProgressBar::clear() {
  if (!active_ || !drawn_) return;
  std::fprintf(out_, "\r\033[K");
  drawn_ = false;
}

void ProgressBar::finish() {
  if (!active_ || !drawn_) return;
  std::fprintf(out_, "\n");
  std::fflush(out_);
  drawn_ = false;
}

}  // namespace unet::models
