// Synthetic MSD-style dataset generator: shapes rasterised from signed distances in millimetres, composed in class
// order, then bias field, texture and noise; written as NIfTI plus dataset.json through a staging directory.
#include "io/synthetic.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "engine/comm.h"
#include "engine/random.h"
#include "io/atomic_file.h"
#include "io/augment.h"
#include "io/config.h"
#include "io/nifti.h"
#include "io/safetensors.h"
#include "io/tiff.h"
#include "kernels/common/parallel.h"

namespace unet::io {
namespace {

namespace fs = std::filesystem;
using Vec3 = std::array<double, 3>;  // (z, y, x) in mm
using Mat3 = std::array<Vec3, 3>;    // rows

// Independent stream for (seed, stream): splitmix-style mixing, so neighbouring seeds give unrelated streams.
uint64_t mix_seed(uint64_t seed, uint64_t stream) {
  uint64_t z = seed * 0x9e3779b97f4a7c15ull + (stream + 1) * 0xd1b54a32d192ed03ull;
  z = (z ^ (z >> 31)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 29)) * 0x94d049bb133111ebull;
  return z ^ (z >> 32);
}

Vec3 sub(const Vec3& a, const Vec3& b) {
  return {a[0] - b[0], a[1] - b[1], a[2] - b[2]};
}
double dot(const Vec3& a, const Vec3& b) {
  return a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
}
double norm(const Vec3& a) {
  return std::sqrt(dot(a, a));
}
Vec3 mul_t(const Mat3& r, const Vec3& v) {  // r^T v: world to shape frame
  Vec3 out{};
  for (int i = 0; i < 3; ++i) out[i] = r[0][i] * v[0] + r[1][i] * v[1] + r[2][i] * v[2];
  return out;
}

// Uniformly random rotation (Shoemake's unit quaternion from three uniforms).
Mat3 random_rotation(Rng& rng) {
  double u1 = rng.uniform(), u2 = rng.uniform(), u3 = rng.uniform();
  double a = std::sqrt(1 - u1), b = std::sqrt(u1);
  double w = a * std::sin(2 * M_PI * u2), x = a * std::cos(2 * M_PI * u2);
  double y = b * std::sin(2 * M_PI * u3), z = b * std::cos(2 * M_PI * u3);
  return Mat3{Vec3{1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)},
              Vec3{2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)},
              Vec3{2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)}};
}

struct Shape3 {
  int cls = 0;
  SynthShape type = SynthShape::ellipsoid;
  Vec3 centre{};
  Mat3 rot{};
  Vec3 half{};                 // ellipsoid radii / box half sizes, shape frame
  std::vector<Vec3> polyline;  // tube centre line
  double radius = 0;           // tube radius
  std::vector<double> mean;    // intensity per channel
  Vec3 lo{}, hi{};             // bounding box in mm, edge included

  // Signed distance in mm (negative inside). The ellipsoid's is the usual first-order approximation, exact on
  // the surface, which is all the label (d <= 0) and the one-voxel soft edge need.
  double distance(const Vec3& p) const {
    switch (type) {
      case SynthShape::ellipsoid: {
        Vec3 q = mul_t(rot, sub(p, centre));
        double k = std::sqrt(std::pow(q[0] / half[0], 2) + std::pow(q[1] / half[1], 2) + std::pow(q[2] / half[2], 2));
        return (k - 1) * std::min({half[0], half[1], half[2]});
      }
      case SynthShape::box: {
        Vec3 q = mul_t(rot, sub(p, centre));
        Vec3 e{std::abs(q[0]) - half[0], std::abs(q[1]) - half[1], std::abs(q[2]) - half[2]};
        Vec3 out{std::max(e[0], 0.0), std::max(e[1], 0.0), std::max(e[2], 0.0)};
        return norm(out) + std::min(std::max({e[0], e[1], e[2]}), 0.0);
      }
      case SynthShape::tube: {
        double best = 1e30;
        for (size_t i = 0; i + 1 < polyline.size(); ++i) {
          Vec3 ab = sub(polyline[i + 1], polyline[i]), ap = sub(p, polyline[i]);
          double t = std::clamp(dot(ap, ab) / std::max(dot(ab, ab), 1e-12), 0.0, 1.0);
          Vec3 c{ap[0] - t * ab[0], ap[1] - t * ab[1], ap[2] - t * ab[2]};
          best = std::min(best, dot(c, c));
        }
        return std::sqrt(best) - radius;
      }
    }
    return 1e30;
  }
};

struct Wave {  // one plane wave of the background texture
  Vec3 k{};
  double phase = 0, amplitude = 0;
};
struct Blob {  // one wide gaussian of a bias field
  Vec3 centre{};
  double sigma = 1, amplitude = 0;
};

Shape3 random_shape(int cls, const SynthOptions& o, const Vec3& extent, Rng& rng) {
  double s = std::min({extent[0], extent[1], extent[2]});
  Shape3 sh;
  sh.cls = cls;
  sh.type = synthetic_class_shape(cls);
  for (int a = 0; a < 3; ++a) sh.centre[a] = rng.uniform(0.2, 0.8) * extent[a];
  sh.rot = random_rotation(rng);
  double reach = 0;
  switch (sh.type) {
    case SynthShape::ellipsoid:
      for (auto& h : sh.half) h = rng.uniform(0.12, 0.24) * s;
      reach = std::max({sh.half[0], sh.half[1], sh.half[2]});
      break;
    case SynthShape::box:
      for (auto& h : sh.half) h = rng.uniform(0.09, 0.16) * s;
      reach = norm(sh.half);
      break;
    case SynthShape::tube: {
      // Quadratic Bezier through a random control point: a bent segment about 0.4-0.7 of the volume long.
      sh.radius = rng.uniform(0.07, 0.10) * s;
      Vec3 dir = sh.rot[0];
      double half_len = rng.uniform(0.20, 0.35) * s;
      Vec3 p0, p2, p1;
      for (int a = 0; a < 3; ++a) {
        p0[a] = sh.centre[a] - dir[a] * half_len;
        p2[a] = sh.centre[a] + dir[a] * half_len;
        p1[a] = sh.centre[a] + sh.rot[1][a] * rng.uniform(-0.6, 0.6) * half_len;
      }
      const int n = 24;
      for (int i = 0; i <= n; ++i) {
        double t = static_cast<double>(i) / n;
        Vec3 q;
        for (int a = 0; a < 3; ++a) q[a] = (1 - t) * (1 - t) * p0[a] + 2 * (1 - t) * t * p1[a] + t * t * p2[a];
        sh.polyline.push_back(q);
      }
      for (int a = 0; a < 3; ++a) {
        sh.lo[a] = std::min({p0[a], p1[a], p2[a]});
        sh.hi[a] = std::max({p0[a], p1[a], p2[a]});
      }
      break;
    }
  }
  double margin = sh.type == SynthShape::tube ? sh.radius : reach;
  double edge = *std::min_element(o.spacing.begin(), o.spacing.end());
  for (int a = 0; a < 3; ++a) {
    if (sh.type != SynthShape::tube) sh.lo[a] = sh.hi[a] = sh.centre[a];
    sh.lo[a] -= margin + edge;
    sh.hi[a] += margin + edge;
  }
  double variation = rng.uniform(0.95, 1.05);  // shapes of one class differ a little in brightness
  for (int ch = 0; ch < o.channels; ++ch) sh.mean.push_back(synthetic_class_mean(ch, cls, o.classes) * variation);
  return sh;
}

std::vector<Blob> random_bias_field(const Vec3& extent, Rng& rng) {
  double mean_extent = (extent[0] + extent[1] + extent[2]) / 3;
  std::vector<Blob> blobs(3);
  for (auto& b : blobs) {
    for (int a = 0; a < 3; ++a) b.centre[a] = rng.uniform(-0.2, 1.2) * extent[a];
    b.sigma = rng.uniform(0.4, 0.8) * mean_extent;
    b.amplitude = rng.uniform(-0.15, 0.15);
  }
  return blobs;
}

}  // namespace

void validate_synth_options(const SynthOptions& o) {
  auto need = [](bool ok, const std::string& what) {
    if (!ok) throw SynthOptionsError(what);
  };
  need(!o.output.empty(), "--output: a dataset directory is required");
  need(o.train >= 0 && o.train <= 100000, "--train: expected 0..100000 cases, got " + std::to_string(o.train));
  need(o.test >= 0 && o.test <= 100000, "--test: expected 0..100000 cases, got " + std::to_string(o.test));
  need(o.train + o.test >= 1, "--train/--test: the dataset needs at least one case");
  need(o.dim == 2 || o.dim == 3, "--dim: expected 2 or 3, got " + std::to_string(o.dim));
  need(o.dim == 3 || o.size[0] == 1, "--dim 2: the z size must be 1, got " + std::to_string(o.size[0]));
  for (size_t a = o.dim == 2 ? 1 : 0; a < 3; ++a)
    need(o.size[a] >= 8 && o.size[a] <= 1024,
         "--size: every dimension must be 8..1024 voxels, got " + std::to_string(o.size[a]));
  for (double s : o.spacing)
    need(std::isfinite(s) && s >= 0.01 && s <= 100,
         "--spacing: every spacing must be 0.01..100 mm, got " + real_text(s));
  need(o.channels >= 1 && o.channels <= 16, "--channels: expected 1..16, got " + std::to_string(o.channels));
  need(o.classes >= 2 && o.classes <= 16,
       "--classes: expected 2..16 (background included), got " + std::to_string(o.classes));
  need(o.format == "msd" || o.format == "nnunetv2" || o.format == "isbi",
       "--format: expected msd, nnunetv2 or isbi, got '" + o.format + "'");
  need(o.format != "isbi" || (o.classes == 2 && o.channels == 1),
       "--format isbi: ISBI 2012 has one channel and two classes (--channels 1 --classes 2)");
  need(o.format != "isbi" || o.dim == 2, "--format isbi: ISBI 2012 pages are 2D (--dim 2)");
  need(o.format != "isbi" || !o.scanner_variation,
       "--scanner-variation: not for --format isbi (its EM pages have their own noise and blur)");
}

SynthShape synthetic_class_shape(int cls) {
  static constexpr SynthShape cycle[3] = {SynthShape::ellipsoid, SynthShape::tube, SynthShape::box};
  return cycle[(std::max(cls, 1) - 1) % 3];
}

std::string synthetic_class_name(int cls) {
  if (cls == 0) return "background";
  static const char* names[3] = {"ellipsoid", "tube", "box"};
  std::string n = names[(cls - 1) % 3];
  int round = (cls - 1) / 3;
  return round == 0 ? n : n + "_" + std::to_string(round + 1);
}

double synthetic_class_mean(int ch, int cls, int classes) {
  if (cls == 0) return 100.0;
  int rank = ch % 2 == 0 ? cls : classes - cls;
  return 100.0 + 150.0 * rank;
}

std::string synthetic_case_id(const SynthOptions& o, int index) {
  int total = std::max(1, o.train + o.test), digits = 1;
  for (int n = total - 1; n >= 10; n /= 10) ++digits;
  std::string num = std::to_string(index);
  return "case_" +
         std::string(static_cast<size_t>(std::max(0, std::max(3, digits) - static_cast<int>(num.size()))), '0') + num;
}

SynthAcquisition synthetic_acquisition(const SynthOptions& o, int index) {
  SynthAcquisition acq;
  if (!o.scanner_variation) return acq;
  Rng a(mix_seed(mix_seed(o.seed, static_cast<uint64_t>(index)), 0x5ca77e4ull));  // not the stream of the shapes
  acq.noise_std = kSynthNoiseStd * std::exp(a.uniform(std::log(0.5), std::log(2.0)));
  acq.blur = a.uniform(0.0, 1.5);
  acq.gamma = std::exp(a.uniform(std::log(0.7), std::log(1.4)));
  return acq;
}

SynthCase make_synthetic_case(const SynthOptions& o, int index) {
  validate_synth_options(o);
  const int64_t Z = o.size[0], Y = o.size[1], X = o.size[2];
  const int C = o.channels;
  const uint64_t case_seed = mix_seed(o.seed, static_cast<uint64_t>(index));
  Rng rng(case_seed);
  Vec3 extent{Z * o.spacing[0], Y * o.spacing[1], X * o.spacing[2]};
  const bool slice = o.dim == 2;  // the plane z = depth / 2 of a volume as deep as the slice is wide
  if (slice) extent[0] = std::min(extent[1], extent[2]);

  // Shapes, painted in increasing class order: where shapes overlap the higher class wins (a lesion drawn over
  // an organ), and within a class the later shape's intensity shows.
  std::vector<Shape3> shapes;
  for (int cls = 1; cls < o.classes; ++cls) {
    int count = 1 + static_cast<int>(rng.below(2));
    for (int i = 0; i < count; ++i) shapes.push_back(random_shape(cls, o, extent, rng));
  }
  std::vector<std::vector<Blob>> bias(static_cast<size_t>(C));
  for (auto& b : bias) b = random_bias_field(extent, rng);
  std::vector<Wave> texture(4);
  for (auto& w : texture) {
    Mat3 r = random_rotation(rng);
    double k = 2 * M_PI / rng.uniform(6.0, 16.0);
    for (int a = 0; a < 3; ++a) w.k[a] = r[0][a] * k;
    w.phase = rng.uniform(0, 2 * M_PI);
    w.amplitude = rng.uniform(0.02, 0.05);
  }

  const SynthAcquisition acq = synthetic_acquisition(o, index);

  SynthCase out;
  out.image = Tensor::empty({Z, Y, X, C});
  out.label = Tensor::zeros({Z, Y, X}, DType::u8);
  float* img = out.image.data<float>();
  uint8_t* lab = out.label.data<uint8_t>();
  std::vector<double> clean(static_cast<size_t>(Z * Y * X * C));    // before blur, gamma and noise
  const double edge = slice ? std::min(o.spacing[1], o.spacing[2])  // soft edge one voxel wide
                            : *std::min_element(o.spacing.begin(), o.spacing.end());

  parallel_for(Z, 1, [&](int64_t z0, int64_t z1) {
    std::vector<double> tissue(static_cast<size_t>(C));
    for (int64_t z = z0; z < z1; ++z)
      for (int64_t y = 0; y < Y; ++y)
        for (int64_t x = 0; x < X; ++x) {
          Vec3 p{slice ? extent[0] / 2 : z * o.spacing[0], y * o.spacing[1], x * o.spacing[2]};
          int64_t v = (z * Y + y) * X + x;
          for (int ch = 0; ch < C; ++ch) tissue[static_cast<size_t>(ch)] = synthetic_class_mean(ch, 0, o.classes);
          uint8_t label = 0;
          for (const Shape3& sh : shapes) {
            if (p[0] < sh.lo[0] || p[0] > sh.hi[0] || p[1] < sh.lo[1] || p[1] > sh.hi[1] || p[2] < sh.lo[2] ||
                p[2] > sh.hi[2])
              continue;
            double d = sh.distance(p);
            double a = std::clamp(0.5 - d / edge, 0.0, 1.0);
            if (a <= 0) continue;
            for (int ch = 0; ch < C; ++ch) {
              double& t = tissue[static_cast<size_t>(ch)];
              t = t * (1 - a) + sh.mean[static_cast<size_t>(ch)] * a;
            }
            if (d <= 0) label = static_cast<uint8_t>(sh.cls);
          }
          lab[v] = label;
          double tex = 1;
          for (const Wave& w : texture) tex += w.amplitude * std::sin(dot(w.k, p) + w.phase);
          for (int ch = 0; ch < C; ++ch) {
            double b = 1;
            for (const Blob& g : bias[static_cast<size_t>(ch)]) {
              Vec3 dp = sub(p, g.centre);
              b += g.amplitude * std::exp(-dot(dp, dp) / (2 * g.sigma * g.sigma));
            }
            b = std::clamp(b, 0.6, 1.4);
            clean[static_cast<size_t>(v * C + ch)] = tissue[static_cast<size_t>(ch)] * tex * b;
          }
        }
  });
  if (acq.blur > 0) {  // the point spread function (in-plane only in 2D)
    Sample s({Z, Y, X}, C);
    std::copy(clean.begin(), clean.end(), s.image.begin());
    gaussian_blur(s, acq.blur, slice);
    std::copy(s.image.begin(), s.image.end(), clean.begin());
  }
  if (acq.gamma != 1)  // the protocol's contrast: a power law about the background's intensity
    for (double& c : clean) {
      const double bg = synthetic_class_mean(0, 0, o.classes);
      c = bg * std::pow(std::max(c, 0.0) / bg, acq.gamma);
    }
  // Each z slice draws its noise from its own stream, so the result does not depend on the thread split.
  parallel_for(Z, 1, [&](int64_t z0, int64_t z1) {
    for (int64_t z = z0; z < z1; ++z) {
      Rng noise(mix_seed(case_seed, 1000003u + static_cast<uint64_t>(z)));
      for (int64_t v = z * Y * X * C; v < (z + 1) * Y * X * C; ++v) {
        double value = clean[static_cast<size_t>(v)] + acq.noise_std * noise.normal();
        img[v] = static_cast<float>(std::max(0.0, std::round(value)));  // scanner-like integers
      }
    }
  });
  return out;
}

SynthPage make_synthetic_em_page(const SynthOptions& o, int index) {
  const int64_t H = o.size[1], W = o.size[2];
  Rng rng(mix_seed(o.seed, 0x1000000ull + static_cast<uint64_t>(index)));
  // Cells: one seed per grid square of `cell` pixels, jittered within it, over the page and a margin of one square.
  const double cell = rng.uniform(16, 22);          // mean cell diameter (pixels)
  const double half_width = rng.uniform(1.0, 1.5);  // membrane half width (pixels)
  const int64_t gy = static_cast<int64_t>(std::ceil(H / cell)) + 2, gx = static_cast<int64_t>(std::ceil(W / cell)) + 2;
  struct Seed {
    double y, x, level;  // position and the cell's brightness
  };
  std::vector<Seed> seeds(static_cast<size_t>(gy * gx));
  for (int64_t i = 0; i < gy; ++i)
    for (int64_t j = 0; j < gx; ++j)
      seeds[static_cast<size_t>(i * gx + j)] = {(i - 1 + rng.uniform(0.1, 0.9)) * cell,
                                                (j - 1 + rng.uniform(0.1, 0.9)) * cell, rng.uniform(150, 190)};
  // Organelles: dark discs inside the cells (labelled cell), the distractors a threshold would call membrane.
  struct Disc {
    double y, x, r;
  };
  std::vector<Disc> discs(static_cast<size_t>(H * W / (cell * cell * 2)));
  for (Disc& d : discs) d = {rng.uniform(0, H), rng.uniform(0, W), rng.uniform(1.5, 3.5)};
  std::vector<Blob> bias = random_bias_field({1, double(H), double(W)}, rng);

  SynthPage page{Tensor::empty({H, W}, DType::u8), Tensor::empty({H, W}, DType::u8)};
  std::vector<float> clean(static_cast<size_t>(H * W));
  for (int64_t y = 0; y < H; ++y)
    for (int64_t x = 0; x < W; ++x) {
      // Nearest and second-nearest seeds among the 5 x 5 grid squares around the pixel's own.
      const int64_t ci = static_cast<int64_t>(y / cell) + 1, cj = static_cast<int64_t>(x / cell) + 1;
      double d1 = 1e30, d2 = 1e30;
      const Seed* nearest = nullptr;
      for (int64_t i = std::max<int64_t>(0, ci - 2); i <= std::min(gy - 1, ci + 2); ++i)
        for (int64_t j = std::max<int64_t>(0, cj - 2); j <= std::min(gx - 1, cj + 2); ++j) {
          const Seed& sd = seeds[static_cast<size_t>(i * gx + j)];
          const double d = std::hypot(y - sd.y, x - sd.x);
          if (d < d1) {
            d2 = d1;
            d1 = d;
            nearest = &sd;
          } else if (d < d2) {
            d2 = d;
          }
        }
      // (d2 - d1) / 2 is about the distance to the boundary between the two cells.
      const bool membrane = (d2 - d1) / 2 < half_width;
      clean[static_cast<size_t>(y * W + x)] = static_cast<float>(membrane ? 55.0 : nearest->level);
      page.label.data<uint8_t>()[y * W + x] = membrane ? 0 : 255;
    }
  for (const Disc& d : discs)
    for (int64_t y = std::max<int64_t>(0, int64_t(d.y - d.r)); y <= std::min<int64_t>(H - 1, int64_t(d.y + d.r)); ++y)
      for (int64_t x = std::max<int64_t>(0, int64_t(d.x - d.r)); x <= std::min<int64_t>(W - 1, int64_t(d.x + d.r)); ++x)
        if (std::hypot(y - d.y, x - d.x) < d.r && page.label.data<uint8_t>()[y * W + x] == 255)
          clean[static_cast<size_t>(y * W + x)] = 95.f;
  // A 3 x 3 binomial blur (the microscope's point spread), the bias field, then noise.
  for (int64_t y = 0; y < H; ++y)
    for (int64_t x = 0; x < W; ++x) {
      double acc = 0, wsum = 0;
      for (int64_t dy = -1; dy <= 1; ++dy)
        for (int64_t dx = -1; dx <= 1; ++dx) {
          const int64_t yy = y + dy, xx = x + dx;
          if (yy < 0 || yy >= H || xx < 0 || xx >= W) continue;
          const double w = (dy == 0 ? 2 : 1) * (dx == 0 ? 2 : 1);
          acc += w * clean[static_cast<size_t>(yy * W + xx)];
          wsum += w;
        }
      double field = 1;
      for (const Blob& b : bias) {
        const double dy = y - b.centre[1], dx = x - b.centre[2];
        field += b.amplitude * std::exp(-(dy * dy + dx * dx) / (2 * b.sigma * b.sigma));
      }
      const double v = acc / wsum * field + 18.0 * rng.normal();
      page.image.data<uint8_t>()[y * W + x] = static_cast<uint8_t>(std::clamp(std::round(v), 0.0, 255.0));
    }
  return page;
}

namespace {

// The file that marks a directory as written by unet_synth: --overwrite replaces nothing else, since a real MSD or ISBI
// dataset has the same layout and names. After its first line it lists every file written, one per line:
// "DIGEST SIZE PATH" (engine/comm.h's file_digest in hex, bytes, the path relative to the dataset).
constexpr const char* kMarker = ".unet_synth";
constexpr const char* kMarkerLine = "This directory was written by unet_synth; unet_synth --overwrite may replace it.";

std::string file_entry(const fs::path& file) {
  return file_digest_text(file.string()) + " " + std::to_string(fs::file_size(file));
}

// The marker's text for the dataset in `dir`: the first line, then every regular file under it.
std::string marker_text(const fs::path& dir) {
  std::vector<std::string> lines;
  for (const fs::directory_entry& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) lines.push_back(file_entry(e.path()) + " " + e.path().lexically_relative(dir).string());
  std::sort(lines.begin(), lines.end());
  std::string text = std::string(kMarkerLine) + "\n";
  for (const std::string& line : lines) text += line + "\n";
  return text;
}

// Why the existing directory `dir` is not a dataset unet_synth wrote, as it wrote it, or "" when it is: it lacks the
// marker's list of files, or holds an entry that is not one of them with the same size and digest (a file the user
// added or edited, which --overwrite would delete), other than unet_train's preprocessed cache of it (data.cache =
// auto), which would be stale.
std::string not_ours(const fs::path& dir) {
  std::ifstream marker(dir / kMarker);
  std::string line;
  if (!marker || !std::getline(marker, line))
    return "holds a dataset that unet_synth did not write (no " + std::string(kMarker) + ")";
  std::map<std::string, std::string> written;  // path -> "DIGEST SIZE"
  while (std::getline(marker, line))
    if (const size_t a = line.find(' '), b = line.find(' ', a + 1); b != std::string::npos)
      written[line.substr(b + 1)] = line.substr(0, b);
  if (written.empty())
    return "holds a dataset whose " + std::string(kMarker) +
           " lists no files (written by an older unet_synth, or damaged)";
  // In the cache, only what unet_train writes there (a run's output.dir or the user's files are not ours to delete),
  // by content as well as by name: its fingerprint and case files carry the cache's format.
  const auto cache_file = [](const fs::path& file) {
    const std::string name = file.filename().string(), format = "unet preprocessed case";
    try {
      if (name == "fingerprint.json") {
        const nlohmann::json j = nlohmann::json::parse(std::ifstream(file), nullptr, false);
        return j.is_object() && j.contains("format") && j["format"].is_string() &&
               j["format"].get<std::string>().starts_with(format);
      }
      if (!name.ends_with(".preprocessed.safetensors")) return false;
      const Metadata m = read_safetensors_metadata(file.string());
      const auto it = m.find("format");
      return it != m.end() && it->second.starts_with(format);
    } catch (const std::exception&) {
      return false;
    }
  };
  std::error_code ec;
  if (fs::is_directory(dir / "unet_preprocessed", ec))
    for (const fs::directory_entry& e : fs::directory_iterator(dir / "unet_preprocessed")) {
      const std::string name = e.path().filename().string();
      if (e.is_symlink(ec) || !e.is_regular_file(ec) || !cache_file(e.path()))
        return "also holds " + (fs::path("unet_preprocessed") / name).string() +
               ", which is not unet_train's preprocessed cache";
    }
  static const std::set<std::string> folders = {"imagesTr", "labelsTr", "imagesTs", "labelsTs", "unet_preprocessed"};
  for (auto it = fs::recursive_directory_iterator(dir); it != fs::recursive_directory_iterator(); ++it) {
    const std::string rel = it->path().lexically_relative(dir).string();
    if (rel == kMarker) continue;
    if (it->is_symlink(ec)) return "also holds " + rel + ", a symbolic link unet_synth did not write";
    if (it->is_directory(ec)) {
      if (!folders.contains(rel)) return "also holds " + rel + ", which unet_synth did not write";
      if (rel == "unet_preprocessed") it.disable_recursion_pending();  // checked above
      continue;
    }
    const auto entry = written.find(rel);
    if (entry == written.end()) return "also holds " + rel + ", which unet_synth did not write";
    if (!it->is_regular_file(ec) || entry->second != file_entry(it->path()))
      return "holds " + rel + " changed since unet_synth wrote it";
  }
  return "";
}

}  // namespace

void write_synthetic_dataset(const SynthOptions& o) {
  validate_synth_options(o);
  fs::path target = fs::absolute(fs::path(o.output)).lexically_normal();
  if (target.filename().empty()) target = target.parent_path();  // "dir/" -> "dir"
  bool replace = false;
  std::error_code ec;
  if (fs::exists(target, ec)) {
    if (!fs::is_directory(target, ec))
      throw SynthOptionsError("--output: " + o.output + " exists and is not a directory");
    if (!fs::is_empty(target, ec)) {
      if (!fs::exists(target / "dataset.json") && !fs::exists(target / "train-volume.tif"))
        throw SynthOptionsError("--output: " + o.output +
                                " is a non-empty directory without a dataset.json; "
                                "choose a new or empty directory");
      if (!o.overwrite)
        throw SynthOptionsError("--output: " + o.output + " already holds a dataset; pass --overwrite to replace it");
      if (std::string why = not_ours(target); !why.empty())
        throw SynthOptionsError("--output: " + o.output + " " + why +
                                "; --overwrite replaces only a dataset unet_synth wrote, so remove it yourself or "
                                "choose another directory");
      replace = true;
    }
  } else if (fs::is_symlink(fs::symlink_status(target, ec))) {  // the finished dataset could not be renamed onto it
    throw SynthOptionsError("--output: " + o.output + " is a dangling symbolic link (to " +
                            fs::read_symlink(target, ec).string() + ")");
  } else if (!fs::is_directory(target.parent_path(), ec)) {
    throw SynthOptionsError("--output: the parent directory " + target.parent_path().string() + " does not exist");
  }

  const std::string pid = std::to_string(::getpid());
  fs::path staging = target.parent_path() / ("." + target.filename().string() + ".tmp" + pid);
  auto fail_cleanup = [&] {
    fs::remove_all(staging, ec);
    untrack_temporary_directory();
  };
  try {
    fs::remove_all(staging, ec);
    track_temporary_directory(staging.string());  // Ctrl-C or a kill removes it too
    fs::create_directories(staging);
    if (o.format != "isbi")
      for (const char* sub : {"imagesTr", "labelsTr", "imagesTs", "labelsTs"}) fs::create_directories(staging / sub);
    NiftiVolume image_header = make_nifti_like({o.size[0], o.size[1], o.size[2], o.channels}, o.spacing);
    NiftiVolume label_header = make_nifti_like({o.size[0], o.size[1], o.size[2]}, o.spacing);
    NiftiVolume channel_header = make_nifti_like({o.size[0], o.size[1], o.size[2], 1}, o.spacing);
    const int64_t plane = o.size[1] * o.size[2];
    // ISBI: one EM-like page a case (make_synthetic_em_page), 8-bit, labels 0 / 255.
    Tensor isbi_images, isbi_labels;
    if (o.format == "isbi") {
      isbi_images = Tensor::empty({o.train + o.test, o.size[1], o.size[2]}, DType::u8);
      isbi_labels = Tensor::empty({o.train + o.test, o.size[1], o.size[2]}, DType::u8);
    }

    // Cases in parallel (each one's content is independent of the others and of the thread that makes it).
    const int total = o.train + o.test;
    std::mutex error_mutex;
    std::string first_error;
    parallel_for(total, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        try {
          int idx = static_cast<int>(i);
          bool train = idx < o.train;
          std::string id = synthetic_case_id(o, idx);
          SynthCase c = make_synthetic_case(o, idx);
          const fs::path images = staging / (train ? "imagesTr" : "imagesTs"),
                         labels = staging / (train ? "labelsTr" : "labelsTs");
          if (o.format == "msd") {
            write_nifti((images / (id + ".nii.gz")).string(), c.image, image_header);
          } else if (o.format == "nnunetv2") {
            for (int ch = 0; ch < o.channels; ++ch) {
              Tensor one = Tensor::empty({o.size[0], o.size[1], o.size[2], 1});
              for (int64_t v = 0; v < one.numel(); ++v)
                one.data<float>()[v] = c.image.data<float>()[v * o.channels + ch];
              char suffix[16];
              std::snprintf(suffix, sizeof suffix, "_%04d", ch);
              write_nifti((images / (id + suffix + ".nii.gz")).string(), one, channel_header);
            }
          } else {  // isbi
            const SynthPage p = make_synthetic_em_page(o, idx);
            std::copy_n(p.image.data<uint8_t>(), plane, isbi_images.data<uint8_t>() + idx * plane);
            std::copy_n(p.label.data<uint8_t>(), plane, isbi_labels.data<uint8_t>() + idx * plane);
            continue;
          }
          write_nifti((labels / (id + ".nii.gz")).string(), c.label, label_header);
        } catch (const std::exception& e) {
          std::lock_guard<std::mutex> lock(error_mutex);
          if (first_error.empty()) first_error = e.what();
          return;
        }
      }
    });
    if (!first_error.empty()) throw std::runtime_error(first_error);

    if (o.format == "isbi") {
      TiffWriteOptions w;  // 8-bit, Deflate
      const auto pages = [&](const Tensor& all, int first, int count) {
        Tensor t = Tensor::empty({count, o.size[1], o.size[2]}, DType::u8);
        std::copy_n(all.data<uint8_t>() + first * plane, count * plane, t.data<uint8_t>());
        return t;
      };
      if (o.train > 0) {
        write_tiff((staging / "train-volume.tif").string(), pages(isbi_images, 0, o.train), w);
        write_tiff((staging / "train-labels.tif").string(), pages(isbi_labels, 0, o.train), w);
      }
      if (o.test > 0) {
        write_tiff((staging / "test-volume.tif").string(), pages(isbi_images, o.train, o.test), w);
        write_tiff((staging / "test-labels.tif").string(), pages(isbi_labels, o.train, o.test), w);
      }
    } else if (o.format == "nnunetv2") {
      nlohmann::ordered_json j, channels = nlohmann::ordered_json::object(), labels = nlohmann::ordered_json::object();
      for (int ch = 0; ch < o.channels; ++ch)
        channels[std::to_string(ch)] = ch == 0 ? "SYN" : "SYN" + std::to_string(ch + 1);
      for (int c = 0; c < o.classes; ++c) labels[synthetic_class_name(c)] = c;
      j["name"] = "Synthetic";
      j["description"] = "Synthetic 3D shapes written by unet_synth (seed " + std::to_string(o.seed) +
                         ") in nnU-Net v2's raw layout; labelsTs holds the test cases' labels.";
      j["channel_names"] = channels;
      j["labels"] = labels;
      j["numTraining"] = o.train;
      j["file_ending"] = ".nii.gz";
      write_file_atomically((staging / "dataset.json").string(), j.dump(2) + "\n");
    } else {
      nlohmann::ordered_json j;
      j["name"] = "Synthetic";
      j["description"] =
          "Synthetic 3D shapes written by unet_synth (seed " + std::to_string(o.seed) +
          "): each foreground class has its own shape type and intensity, with a bias field, texture and gaussian "
          "noise. labelsTs holds the labels of the test cases (not part of the MSD layout), so Dice can be reported "
          "on unseen images.";
      j["reference"] = "unet_synth";
      j["licence"] = "CC0";
      j["release"] = "1.0";
      j["tensorImageSize"] = o.channels > 1 ? "4D" : "3D";
      nlohmann::ordered_json modality = nlohmann::ordered_json::object(), labels = nlohmann::ordered_json::object();
      for (int ch = 0; ch < o.channels; ++ch)
        modality[std::to_string(ch)] = ch == 0 ? "SYN" : "SYN" + std::to_string(ch + 1);
      for (int c = 0; c < o.classes; ++c) labels[std::to_string(c)] = synthetic_class_name(c);
      j["modality"] = modality;
      j["labels"] = labels;
      j["numTraining"] = o.train;
      j["numTest"] = o.test;
      j["training"] = nlohmann::ordered_json::array();
      for (int i = 0; i < o.train; ++i) {
        std::string id = synthetic_case_id(o, i);
        j["training"].push_back({{"image", "./imagesTr/" + id + ".nii.gz"}, {"label", "./labelsTr/" + id + ".nii.gz"}});
      }
      j["test"] = nlohmann::ordered_json::array();
      for (int i = o.train; i < o.train + o.test; ++i)
        j["test"].push_back("./imagesTs/" + synthetic_case_id(o, i) + ".nii.gz");
      j["synthetic"] = {{"seed", o.seed},
                        {"size", o.size},
                        {"spacing", o.spacing},
                        {"channels", o.channels},
                        {"classes", o.classes},
                        {"noise_std", kSynthNoiseStd},
                        {"scanner_variation", o.scanner_variation}};
      write_file_atomically((staging / "dataset.json").string(), j.dump(2) + "\n");
    }

    write_file_atomically((staging / kMarker).string(), marker_text(staging));

    // Swap the finished dataset into place. An existing one is moved aside first and deleted only afterwards.
    fs::path old = target.parent_path() / ("." + target.filename().string() + ".old" + pid);
    if (replace) {
      fs::rename(target, old);
    } else if (fs::exists(target)) {
      // The empty directory checked at the start; a file in it now came from another process meanwhile.
      if (!fs::remove(target, ec) && ec)
        throw std::runtime_error(o.output + ": cannot replace the empty directory (" + ec.message() +
                                 "): another process wrote into it while the dataset was being made; nothing was "
                                 "written");
    }
    fs::rename(staging, target, ec);
    if (!ec) untrack_temporary_directory();
    if (ec) {
      const std::string why = ec.message();
      if (replace) fs::rename(old, target, ec);
      throw std::runtime_error(o.output + ": cannot move the finished dataset into place (" + why +
                               (fs::exists(target) && !replace
                                    ? "): another process made it while the dataset was being made; nothing was written"
                                    : ")"));
    }
    if (replace) fs::remove_all(old, ec);
  } catch (const std::filesystem::filesystem_error& e) {
    fail_cleanup();
    // "cannot remove: Directory not empty [PATH]" without the library's "filesystem error: " (another process
    // writing into the directory, for one).
    std::string what = e.what();
    if (what.starts_with("filesystem error: ")) what.erase(0, 18);
    throw std::runtime_error(o.output + ": " + what);
  } catch (...) {
    fail_cleanup();
    throw;
  }
}

}  // namespace unet::io
