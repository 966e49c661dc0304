// Checkpoint layout conversion and parameter matching.
#include "models/checkpoint.h"

#include <algorithm>
#include <charconv>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <tuple>

#include "engine/device.h"
#include "io/image.h"
#include "io/json.h"

namespace unet::models {
namespace {

bool is_conv_weight(const std::string& name, const Tensor& t) {
  return t.rank() >= 3 && name.size() >= 7 && name.compare(name.size() - 7, 7, ".weight") == 0;
}

bool is_transposed(const std::string& name) {
  return name.find("transp_conv") != std::string::npos;
}

std::string list(const std::vector<int>& v) {
  std::string s;
  for (int x : v) s += (s.empty() ? "" : ", ") + std::to_string(x);
  return "[" + s + "]";
}

// Every field of a card read from a checkpoint within what the networks and the predictor take, so that a damaged or
// edited card is an error naming the checkpoint and the key, not a crash or an internal error naming an image.
void check_card(const ModelCard& c, const std::string& path) {
  const auto bad = [&](const std::string& key, const std::string& what) {
    throw std::runtime_error(path + ": " + key + ": " + what);
  };
  const auto g = [](double v) {
    char b[32];
    std::snprintf(b, sizeof b, "%g", v);
    return std::string(b);
  };
  const int in = c.in_channels(), out = c.out_channels();
  if (in < 1 || in > 1024) bad("model.in_channels", std::to_string(in) + "; expected 1..1024");
  if (out < 2 || out > 256) bad("model.out_channels", std::to_string(out) + "; expected 2..256 classes");
  const std::vector<int>& filters = c.model == "unet2d"      ? c.unet2d.filters
                                    : c.model == "unet3plus" ? c.unet3plus.filters
                                                             : c.net.filters;
  for (int f : filters)
    if (f < 1 || f > 4096) bad("model.filters", list(filters) + "; expected counts 1..4096");
  if (c.patch.size() != 2 && c.patch.size() != 3) bad("plan.patch", list(c.patch) + "; expected 2 or 3 sizes");
  for (int p : c.patch)
    if (p < 1 || p > 1024) bad("plan.patch", list(c.patch) + "; expected sizes 1..1024");
  if (c.model == "dynunet") {
    const DynUNetConfig& n = c.net;
    if (n.kernels.size() != n.strides.size() || n.kernels.size() != n.filters.size())
      bad("model.kernels", "kernels, strides and filters must have one entry per level");
    std::vector<int> multiple(c.patch.size(), 1);
    for (size_t l = 0; l < n.strides.size(); ++l) {
      if (n.strides[l].size() != c.patch.size() || n.kernels[l].size() != c.patch.size())
        bad("model.strides", "level " + std::to_string(l) + " has not one entry per axis of plan.patch");
      for (size_t a = 0; a < c.patch.size(); ++a) {
        if (n.strides[l][a] != 1 && n.strides[l][a] != 2)
          bad("model.strides", "level " + std::to_string(l) + " " + list(n.strides[l]) + "; expected 1 or 2");
        if (n.kernels[l][a] < 1 || n.kernels[l][a] > 7 || n.kernels[l][a] % 2 == 0)
          bad("model.kernels", "level " + std::to_string(l) + " " + list(n.kernels[l]) + "; expected odd sizes 1..7");
        multiple[a] *= n.strides[l][a];
      }
    }
    // The input block keeps the input's resolution (nnU-Net's plan and MONAI's DynUNet as trained here): a stride of
    // 2 there would make logits at half the window's size, found only by the sliding window, blaming the input.
    if (!n.strides.empty() && std::any_of(n.strides[0].begin(), n.strides[0].end(), [](int s) { return s != 1; }))
      bad("model.strides", "level 0 " + list(n.strides[0]) + "; expected " +
                               list(std::vector<int>(n.strides[0].size(), 1)) +
                               " (the first level keeps the input's resolution)");
    for (size_t a = 0; a < c.patch.size(); ++a)
      if (c.patch[a] % multiple[a] != 0)
        bad("plan.patch", list(c.patch) + "; expected multiples of " + list(multiple) + " (the network's strides)");
    if (!(n.negative_slope >= 0 && n.negative_slope <= 1))
      bad("model.negative_slope", g(n.negative_slope) + "; expected a number in [0, 1]");
  }
  if (c.model == "unet3plus") {
    if (!(std::isfinite(c.unet3plus.bn_eps) && c.unet3plus.bn_eps >= 0))
      bad("model.bn_eps", g(c.unet3plus.bn_eps) + "; expected a finite number >= 0");
    if (!(c.unet3plus.bn_momentum >= 0 && c.unet3plus.bn_momentum <= 1))
      bad("model.bn_momentum", g(c.unet3plus.bn_momentum) + "; expected a number in [0, 1]");
  }
  if (c.model == "unet2d" && !(c.unet2d.dropout >= 0 && c.unet2d.dropout < 1))
    bad("model.dropout", g(c.unet2d.dropout) + "; expected a number in [0, 1)");
  if (static_cast<int>(c.normalization.channels.size()) != c.image_channels())
    bad("plan.normalization", std::to_string(c.normalization.channels.size()) + " channel(s); the model takes " +
                                  std::to_string(c.image_channels()) + " image channel(s)");
  for (const io::ChannelNormalization& n : c.normalization.channels)
    if (std::string why = n.ct ? n.ct_problem() : ""; !why.empty()) bad("plan.normalization", why);
}

}  // namespace

int64_t count_non_finite(const Tensor& t, int64_t* first) {
  if (first) *first = -1;
  if (t.dtype() != DType::f32 && t.dtype() != DType::f16 && t.dtype() != DType::bf16) return 0;
  const Tensor host = t.to(Device::cpu);
  std::vector<float> converted;
  const float* x = nullptr;
  if (host.dtype() == DType::f32) {
    x = host.data<float>();
  } else {
    converted = host.to_vector();
    x = converted.data();
  }
  int64_t bad = 0;
  for (int64_t i = 0, n = host.numel(); i < n; ++i)
    if (!std::isfinite(x[i]) && bad++ == 0 && first) *first = i;
  return bad;
}

void check_finite(const std::string& path, const std::string& name, const Tensor& t) {
  int64_t first = -1;
  if (const int64_t bad = count_non_finite(t, &first); bad > 0)
    throw std::runtime_error(path + ": tensor '" + name + "' has " + std::to_string(bad) +
                             " NaN or infinite values (first at element " + std::to_string(first) +
                             " in the file); expected finite weights (a diverged run or a damaged file?)");
}

Tensor to_pytorch_layout(const std::string& name, const Tensor& t) {
  if (!is_conv_weight(name, t)) return t;
  int r = t.rank();
  std::vector<int> perm;
  if (is_transposed(name))
    perm.push_back(r - 1), perm.push_back(0);  // [K, k.., C] -> [C, K, k..]
  else
    perm.push_back(0), perm.push_back(r - 1);  // [K, k.., C] -> [K, C, k..]
  for (int i = 1; i < r - 1; ++i) perm.push_back(i);
  return permute_copy(t, perm);
}

Tensor from_pytorch_layout(const std::string& name, const Tensor& t) {
  if (!is_conv_weight(name, t)) return t;
  int r = t.rank();
  // PyTorch [A, B, k..] -> engine [K, k.., C]: conv A = K, B = C; transposed A = C, B = K.
  std::vector<int> perm{is_transposed(name) ? 1 : 0};
  for (int i = 2; i < r; ++i) perm.push_back(i);
  perm.push_back(is_transposed(name) ? 0 : 1);
  return permute_copy(t, perm);
}

void save_weights(const std::string& path, const Module& model, const io::Metadata& metadata) {
  io::NamedTensors out;
  // Parameters may live on a GPU: the layout conversion reads host memory, so each goes to the cpu first.
  for (auto& [name, p] : model.named_state()) out.emplace_back(name, to_pytorch_layout(name, p.to(Device::cpu)));
  io::write_safetensors(path, out, metadata);
}

io::SafetensorsContent read_weights(const std::string& path) {
  return io::read_safetensors(path);
}

void load_weights(const io::SafetensorsContent& weights, Module& model, const std::string& path) {
  // Every tensor is checked before any is copied, so a bad checkpoint leaves the model as it was.
  std::vector<Tensor> converted;
  for (auto& [name, p] : model.named_state()) {
    const Tensor* found = nullptr;
    for (auto& [n, t] : weights.tensors)
      if (n == name) found = &t;
    if (!found) throw std::runtime_error(path + ": checkpoint has no tensor '" + name + "' that the model needs");
    Tensor t = from_pytorch_layout(name, *found);
    if (t.shape() != p.shape() || t.dtype() != p.dtype())
      throw std::runtime_error(path + ": tensor '" + name + "' is " + found->describe() +
                               " (PyTorch layout), the model expects " + to_pytorch_layout(name, p).describe());
    check_finite(path, name, *found);
    converted.push_back(t);
  }
  size_t i = 0;
  for (auto& [name, p] : model.named_state()) {
    const Tensor& t = converted[i++];
    device::copy(p.raw(), p.device(), t.raw(), t.device(), p.nbytes());  // the model may be on another device
  }
}

io::Metadata card_to_metadata(const ModelCard& c) {
  nlohmann::json model = c.model == "unet3plus" ? nlohmann::json{{"type", "unet3plus"},
                                                                 {"in_channels", c.unet3plus.in_channels},
                                                                 {"out_channels", c.unet3plus.out_channels},
                                                                 {"filters", c.unet3plus.filters},
                                                                 {"deep_supervision", c.unet3plus.deep_supervision},
                                                                 {"cgm", c.unet3plus.cgm},
                                                                 {"bn_eps", c.unet3plus.bn_eps},
                                                                 {"bn_momentum", c.unet3plus.bn_momentum}}
                         : c.model == "unet2d"  ? nlohmann::json{{"type", "unet2d"},
                                                                {"in_channels", c.unet2d.in_channels},
                                                                {"out_channels", c.unet2d.out_channels},
                                                                {"filters", c.unet2d.filters},
                                                                {"dropout", c.unet2d.dropout}}
                                                : nlohmann::json{{"type", "dynunet"},
                                                                {"in_channels", c.net.in_channels},
                                                                {"out_channels", c.net.out_channels},
                                                                {"kernels", c.net.kernels},
                                                                {"strides", c.net.strides},
                                                                {"filters", c.net.filters},
                                                                {"deep_supervision", c.net.deep_supervision},
                                                                {"deep_supr_num", c.net.deep_supr_num},
                                                                {"res_block", c.net.res_block},
                                                                {"negative_slope", c.net.negative_slope}};
  nlohmann::json plan = {{"patch", c.patch},
                         {"spacing", c.spacing},
                         {"normalization", nlohmann::json::parse(c.normalization.to_json())},
                         {"label_scale", c.label_scale},
                         {"pipeline", c.pipeline},
                         {"slice_cases", c.slice_cases}};
  nlohmann::json labels = nlohmann::json::object();
  for (auto& [k, v] : c.labels) labels[std::to_string(k)] = v;
  return {
      {"format", "unet-engine-weights/1"}, {"model", model.dump()}, {"plan", plan.dump()}, {"labels", labels.dump()}};
}

namespace {
// Reads of a card's JSON that name the checkpoint and the key at fault ("PATH: model.in_channels: expected an integer
// in 1..1024, got 1.9"): nlohmann's get<int> would narrow 4294967297 or 1.9 to 1 without a word.
class CardReader {
 public:
  using json = nlohmann::json;
  explicit CardReader(const std::string& path) : path_(path) {}
  [[noreturn]] void bad(const std::string& key, const std::string& what) const {
    throw std::runtime_error(path_ + ": " + key + ": " + what);
  }
  // The value of `section`.`key`, or nullptr when absent.
  const json* find(const json& obj, const std::string& section, const char* key) const {
    if (!obj.is_object()) bad(section, "expected a JSON object, got " + shown(obj));
    const auto it = obj.find(key);
    return it == obj.end() ? nullptr : &*it;
  }
  const json& at(const json& obj, const std::string& section, const char* key) const {
    if (const json* v = find(obj, section, key)) return *v;
    bad(section + "." + key, "missing");
  }
  int integer(const json& v, const std::string& key, int64_t lo, int64_t hi) const {  // 0 <= hi <= INT_MAX
    bool ok = false;
    if (v.is_number_unsigned())
      ok = v.get<uint64_t>() <= static_cast<uint64_t>(hi) && static_cast<int64_t>(v.get<uint64_t>()) >= lo;
    else if (v.is_number_integer())
      ok = v.get<int64_t>() >= lo && v.get<int64_t>() <= hi;
    if (!ok) bad(key, "expected an integer in " + std::to_string(lo) + ".." + std::to_string(hi) + ", got " + shown(v));
    return static_cast<int>(v.get<int64_t>());
  }
  std::vector<int> integers(const json& v, const std::string& key, int64_t lo, int64_t hi) const {
    if (!v.is_array()) bad(key, "expected a list of integers, got " + shown(v));
    std::vector<int> out;
    for (const json& x : v) out.push_back(integer(x, key, lo, hi));
    return out;
  }
  double number(const json& v, const std::string& key) const {
    if (!v.is_number()) bad(key, "expected a number, got " + shown(v));
    return v.get<double>();
  }
  bool boolean(const json& v, const std::string& key) const {
    if (!v.is_boolean()) bad(key, "expected true or false, got " + shown(v));
    return v.get<bool>();
  }
  std::string string(const json& v, const std::string& key) const {
    if (!v.is_string()) bad(key, "expected a string, got " + shown(v));
    return v.get<std::string>();
  }

 private:
  static std::string shown(const json& v) {  // a value as JSON, cut short: a damaged card may hold megabytes
    const std::string s = v.dump();
    return s.size() <= 40 ? s : s.substr(0, 37) + "...";
  }
  const std::string& path_;
};
}  // namespace

ModelCard card_from_metadata(const io::Metadata& m, const std::string& path) {
  using json = nlohmann::json;
  // unet_train's checkpoint.safetensors (weights, optimizer state, step, configuration; no card): the obvious
  // mistake for the run's model.
  if (!m.contains("model") && m.contains("optimizer_steps") && m.contains("config"))
    throw NotAModelError(path + ": a training checkpoint (unet_train writes it for --resume), not a model; " +
                         "expected the run's model.safetensors or model_best.safetensors beside it");
  auto field = [&](const char* key) {
    auto it = m.find(key);
    if (it == m.end())
      throw std::runtime_error(path + ": not a unet-engine checkpoint (metadata has no '" + key + "')");
    try {
      return io::parse_json(it->second);
    } catch (const std::runtime_error& e) {
      throw std::runtime_error(path + ": metadata '" + key + "' is not valid JSON (" + e.what() + ")");
    }
  };
  const CardReader r(path);
  if (auto it = m.find("format"); it != m.end() && it->second != "unet-engine-weights/1")
    r.bad("format", "'" + it->second + "'; expected unet-engine-weights/1 (a newer version or another tool wrote it)");
  const json model = field("model"), plan = field("plan"), labels = field("labels");
  const auto get = [&](const json& obj, const char* section, const char* key) -> const json& {
    return r.at(obj, section, key);
  };
  const auto key = [](const char* section, const char* k) { return std::string(section) + "." + k; };
  // Integers are bounded here, before anything is sized by them; check_card bounds the rest.
  const auto int_of = [&](const char* k, int64_t lo, int64_t hi) {
    return r.integer(get(model, "model", k), key("model", k), lo, hi);
  };
  // Lists are read as any int here; check_card bounds them with the reason.
  const auto ints_of = [&](const char* k) { return r.integers(get(model, "model", k), key("model", k), 0, INT_MAX); };
  ModelCard c;
  c.model = r.string(get(model, "model", "type"), "model.type");
  const int in_channels = int_of("in_channels", 1, 1024), out_channels = int_of("out_channels", 2, 256);
  if (c.model == "unet2d") {
    c.unet2d.in_channels = in_channels;
    c.unet2d.out_channels = out_channels;
    c.unet2d.filters = ints_of("filters");
    c.unet2d.dropout = static_cast<float>(r.number(get(model, "model", "dropout"), "model.dropout"));
  } else if (c.model == "unet3plus") {
    c.unet3plus.in_channels = in_channels;
    c.unet3plus.out_channels = out_channels;
    c.unet3plus.filters = ints_of("filters");
    c.unet3plus.deep_supervision = r.boolean(get(model, "model", "deep_supervision"), "model.deep_supervision");
    // cards written before the module existed have none
    if (const json* cgm = r.find(model, "model", "cgm")) c.unet3plus.cgm = r.boolean(*cgm, "model.cgm");
    c.unet3plus.bn_eps = static_cast<float>(r.number(get(model, "model", "bn_eps"), "model.bn_eps"));
    c.unet3plus.bn_momentum = static_cast<float>(r.number(get(model, "model", "bn_momentum"), "model.bn_momentum"));
  } else if (c.model == "dynunet") {
    c.net.in_channels = in_channels;
    c.net.out_channels = out_channels;
    const json& kernels = get(model, "model", "kernels");
    const json& strides = get(model, "model", "strides");
    for (const auto& [list, out, k] : {std::tuple{&kernels, &c.net.kernels, "model.kernels"},
                                       std::tuple{&strides, &c.net.strides, "model.strides"}}) {
      if (!list->is_array()) r.bad(k, "expected a list of lists of integers");
      for (const json& level : *list) out->push_back(r.integers(level, k, 0, INT_MAX));
    }
    c.net.filters = ints_of("filters");
    c.net.deep_supervision = r.boolean(get(model, "model", "deep_supervision"), "model.deep_supervision");
    c.net.deep_supr_num = int_of("deep_supr_num", 0, 64);
    c.net.res_block = r.boolean(get(model, "model", "res_block"), "model.res_block");
    c.net.negative_slope = static_cast<float>(r.number(get(model, "model", "negative_slope"), "model.negative_slope"));
  } else {
    r.bad("model.type", "'" + c.model + "'; expected dynunet, unet2d or unet3plus");
  }
  c.patch = r.integers(get(plan, "plan", "patch"), "plan.patch", 0, INT_MAX);
  const json& spacing = get(plan, "plan", "spacing");
  if (!spacing.is_array() || spacing.size() != 3) r.bad("plan.spacing", "expected 3 sizes (z, y, x, in mm)");
  for (const json& v : spacing) c.spacing.push_back(r.number(v, "plan.spacing"));
  for (double v : c.spacing)  // from 1 nm (electron microscopy) to 10 m
    if (!(v >= 1e-6 && v <= 1e4)) {
      char b[128];
      std::snprintf(b, sizeof b, "[%g, %g, %g] mm; expected sizes from 1e-06 to 10000 mm", c.spacing[0], c.spacing[1],
                    c.spacing[2]);
      r.bad("plan.spacing", b);
    }
  try {
    c.normalization = io::NormalizationPlan::from_json(get(plan, "plan", "normalization").dump());
  } catch (const std::exception& e) {
    r.bad("plan.normalization", e.what());
  }
  // Absent before ISBI support: 1. The largest class value, in 64 bits: 2^30 x 2 would wrap an int.
  if (const json* scale = r.find(plan, "plan", "label_scale"))
    c.label_scale = r.integer(*scale, "plan.label_scale", 1, 255);
  if (int64_t(out_channels - 1) * c.label_scale > 255)
    r.bad("plan.label_scale", std::to_string(c.label_scale) + " x the largest class " +
                                  std::to_string(out_channels - 1) + " exceeds 255, the largest value of a label map");
  c.pipeline = "nnunet";  // absent before dle_isbi
  if (const json* pipeline = r.find(plan, "plan", "pipeline")) c.pipeline = r.string(*pipeline, "plan.pipeline");
  if (c.pipeline != "nnunet" && c.pipeline != "dle_isbi")
    r.bad("plan.pipeline", "'" + c.pipeline + "'; expected nnunet or dle_isbi");
  if (c.pipeline == "dle_isbi" && c.model != "unet2d")  // as unet_train's data.pipeline
    r.bad("plan.pipeline", "'dle_isbi' with model.type '" + c.model + "'; DLE's ISBI pipeline is for unet2d only");
  if (const json* slices = r.find(plan, "plan", "slice_cases")) c.slice_cases = r.boolean(*slices, "plan.slice_cases");
  if (!labels.is_object() || labels.size() != static_cast<size_t>(out_channels))
    r.bad("labels", "expected a JSON object of class index: name with one entry per output (model.out_channels " +
                        std::to_string(out_channels) + ")");
  for (auto& [k, v] : labels.items()) {
    int index = -1;
    const auto [end, ec] = std::from_chars(k.data(), k.data() + k.size(), index);
    // Written as the index itself: "00" or "+1" would name a class twice with one entry missing.
    if (ec != std::errc() || end != k.data() + k.size() || index < 0 || index >= out_channels ||
        k != std::to_string(index))
      r.bad("labels key '" + k + "'", "expected a class index 0.." + std::to_string(out_channels - 1) +
                                          " (model.out_channels " + std::to_string(out_channels) + ")");
    c.labels[index] = r.string(v, "labels['" + k + "']");
    if (c.labels[index].empty()) r.bad("labels['" + k + "']", "an empty name; expected the class's name");
  }
  check_card(c, path);
  return c;
}

}  // namespace unet::models
