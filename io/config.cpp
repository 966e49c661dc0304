// Schema-checked INI configuration (see config.h).
#include "io/config.h"

#include <ini.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <sstream>

namespace unet::io {
namespace {

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r\n"), e = s.find_last_not_of(" \t\r\n");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

const char* type_name(KeyType t) {
  switch (t) {
    case KeyType::integer: return "an integer";
    case KeyType::real: return "a number";
    case KeyType::boolean: return "true or false";
    case KeyType::string: return "a string";
    case KeyType::int_list: return "a comma-separated list of integers";
    case KeyType::real_list: return "a comma-separated list of numbers";
  }
  return "?";
}

bool parse_long(const std::string& s, long& out) {
  std::string t = trim(s);
  if (t.empty()) return false;
  char* end = nullptr;
  errno = 0;
  out = std::strtol(t.c_str(), &end, 10);
  return errno == 0 && end && *end == '\0';
}

bool parse_double(const std::string& s, double& out) {
  std::string t = trim(s);
  if (t.empty()) return false;
  char* end = nullptr;
  errno = 0;
  out = std::strtod(t.c_str(), &end);
  return errno == 0 && end && *end == '\0';
}

bool parse_bool(const std::string& s, bool& out) {
  std::string t = trim(s);
  std::transform(t.begin(), t.end(), t.begin(), [](unsigned char c) { return std::tolower(c); });
  if (t == "true" || t == "yes" || t == "on" || t == "1") return out = true, true;
  if (t == "false" || t == "no" || t == "off" || t == "0") return out = false, true;
  return false;
}

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> parts;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) parts.push_back(trim(item));
  if (parts.size() == 1 && parts[0].empty()) parts.clear();
  return parts;
}

bool valid(const ConfigKey& k, const std::string& v) {
  long l;
  double d;
  bool b;
  switch (k.type) {
    case KeyType::integer: return parse_long(v, l);
    case KeyType::real: return parse_double(v, d);
    case KeyType::boolean: return parse_bool(v, b);
    case KeyType::string:
      return k.choices.empty() || std::find(k.choices.begin(), k.choices.end(), trim(v)) != k.choices.end();
    case KeyType::int_list:
      for (auto& p : split_list(v))
        if (!parse_long(p, l)) return false;
      return true;
    case KeyType::real_list:
      for (auto& p : split_list(v))
        if (!parse_double(p, d)) return false;
      return true;
  }
  return false;
}

std::string expected(const ConfigKey& k) {
  if (k.type == KeyType::string && !k.choices.empty()) {
    std::string s = "one of";
    for (size_t i = 0; i < k.choices.size(); ++i) s += (i ? ", " : " ") + k.choices[i];
    return s;
  }
  return type_name(k.type);
}

struct ParseState {
  Config* config;
  std::string path;
  std::string error;
};

int ini_handler_fn(void* user, const char* section, const char* name, const char* value) {
  auto* st = static_cast<ParseState*>(user);
  try {
    st->config->set(section, name, value, st->path);
  } catch (const ConfigError& e) {
    st->error = e.what();
    return 0;
  }
  return 1;
}

}  // namespace

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

Config::Config(std::vector<ConfigKey> schema) : schema_(std::move(schema)) {
  for (const ConfigKey& k : schema_) {
    if (!valid(k, k.default_value))
      throw std::logic_error("config schema: default '" + k.default_value + "' of " + k.section + "." + k.name +
                             " is not " + expected(k));
    values_[k.section + "." + k.name] = trim(k.default_value);
  }
}

const ConfigKey& Config::find(const std::string& section, const std::string& name, const std::string& origin) const {
  for (const ConfigKey& k : schema_)
    if (k.section == section && k.name == name) return k;
  std::string wanted = section + "." + name, best;
  size_t best_d = SIZE_MAX;
  for (const ConfigKey& k : schema_) {
    size_t d = edit_distance(wanted, k.section + "." + k.name);
    if (d < best_d) best_d = d, best = k.section + "." + k.name;
  }
  throw ConfigError(origin + ": unknown key '" + wanted + "'" + (best.empty() ? "" : "; did you mean '" + best + "'?"));
}

void Config::set(const std::string& section, const std::string& name, const std::string& value,
                 const std::string& origin) {
  const ConfigKey& k = find(section, name, origin);
  if (!valid(k, value))
    throw ConfigError(origin + ": " + section + "." + name + " = '" + trim(value) + "': expected " + expected(k));
  values_[section + "." + name] = trim(value);
}

void Config::load_file(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "r");
  if (!f) throw ConfigError(path + ": cannot open config file");
  ParseState st{this, path, ""};
  int rc = ini_parse_file(f, ini_handler_fn, &st);
  std::fclose(f);
  if (!st.error.empty()) throw ConfigError(st.error);
  if (rc > 0) throw ConfigError(path + ":" + std::to_string(rc) + ": not a valid INI line (expected 'key = value' or '[section]')");
  if (rc != 0) throw ConfigError(path + ": cannot parse config file");
}

void Config::apply_override(const std::string& assignment) {
  size_t eq = assignment.find('=');
  size_t dot = assignment.find('.');
  if (eq == std::string::npos || dot == std::string::npos || dot > eq)
    throw ConfigError("--set '" + assignment + "': expected section.key=value");
  set(trim(assignment.substr(0, dot)), trim(assignment.substr(dot + 1, eq - dot - 1)), assignment.substr(eq + 1),
      "--set");
}

const std::string& Config::raw(const std::string& section, const std::string& name) const {
  auto it = values_.find(section + "." + name);
  if (it == values_.end()) throw std::logic_error("config: no key " + section + "." + name + " in the schema");
  return it->second;
}

long Config::get_int(const std::string& s, const std::string& n) const {
  long v = 0;
  if (!parse_long(raw(s, n), v)) throw std::logic_error("config: " + s + "." + n + " is not an integer key");
  return v;
}

double Config::get_real(const std::string& s, const std::string& n) const {
  double v = 0;
  if (!parse_double(raw(s, n), v)) throw std::logic_error("config: " + s + "." + n + " is not a real key");
  return v;
}

bool Config::get_bool(const std::string& s, const std::string& n) const {
  bool v = false;
  if (!parse_bool(raw(s, n), v)) throw std::logic_error("config: " + s + "." + n + " is not a boolean key");
  return v;
}

std::string Config::get_string(const std::string& s, const std::string& n) const { return raw(s, n); }

std::vector<long> Config::get_int_list(const std::string& s, const std::string& n) const {
  std::vector<long> out;
  for (auto& p : split_list(raw(s, n))) {
    long v = 0;
    parse_long(p, v);
    out.push_back(v);
  }
  return out;
}

std::vector<double> Config::get_real_list(const std::string& s, const std::string& n) const {
  std::vector<double> out;
  for (auto& p : split_list(raw(s, n))) {
    double v = 0;
    parse_double(p, v);
    out.push_back(v);
  }
  return out;
}

std::string Config::to_ini() const {
  std::ostringstream o;
  std::string section;
  for (const ConfigKey& k : schema_) {
    if (k.section != section) {
      o << (section.empty() ? "" : "\n") << "[" << k.section << "]\n";
      section = k.section;
    }
    o << k.name << " = " << raw(k.section, k.name) << "\n";
  }
  return o.str();
}

std::string Config::help_text() const {
  std::ostringstream o;
  std::string section;
  for (const ConfigKey& k : schema_) {
    if (k.section != section) {
      o << "[" << k.section << "]\n";
      section = k.section;
    }
    o << "  " << k.name << " (" << expected(k) << ", default '" << k.default_value << "'): " << k.help << "\n";
  }
  return o.str();
}

}  // namespace unet::io
