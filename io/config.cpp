// Schema-checked INI configuration (see config.h).
#include "io/config.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>

#include "io/atomic_file.h"
#include "io/json.h"

namespace unet::io {
namespace {

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r\n"), e = s.find_last_not_of(" \t\r\n");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

// A value or key for a message: its first 120 bytes and its length when longer (a 1 MB value made a 1 MB message).
std::string shown(const std::string& s) {
  if (s.size() <= 160) return s;
  size_t cut = 120;
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;  // not inside a UTF-8 character
  return s.substr(0, cut) + "... (" + std::to_string(s.size()) + " bytes)";
}

const char* type_name(KeyType t) {
  switch (t) {
    case KeyType::integer:
      return "an integer";
    case KeyType::real:
      return "a number";
    case KeyType::boolean:
      return "true or false";
    case KeyType::string:
      return "a string";
    case KeyType::int_list:
      return "a comma-separated list of integers";
    case KeyType::real_list:
      return "a comma-separated list of numbers";
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
  // ERANGE on underflow to a subnormal (1e-310) still gives that number, as the command-line parser takes it; a
  // number below every double (1e-400) gives 0, which the text does not say, and is refused; on overflow (1e400) it
  // gives infinity, which no key accepts.
  return (errno == 0 || (errno == ERANGE && std::abs(out) < 1 && out != 0)) && end && *end == '\0';
}

bool parse_bool(const std::string& s, bool& out) {
  std::string t = trim(s);
  std::transform(t.begin(), t.end(), t.begin(), [](unsigned char c) { return std::tolower(c); });
  if (t == "true" || t == "yes" || t == "on" || t == "1") return out = true, true;
  if (t == "false" || t == "no" || t == "off" || t == "0") return out = false, true;
  return false;
}

// The items between commas, trimmed; an empty item (",16", "16,,16", "16,") stays, for the caller to refuse. An empty
// or blank string is the empty list.
std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> parts;
  if (trim(s).empty()) return parts;
  for (size_t start = 0;;) {
    const size_t comma = s.find(',', start);
    parts.push_back(trim(s.substr(start, comma == std::string::npos ? std::string::npos : comma - start)));
    if (comma == std::string::npos) return parts;
    start = comma + 1;
  }
}

bool valid(const ConfigKey& k, const std::string& v) {
  long l;
  double d;
  bool b;
  switch (k.type) {
    case KeyType::integer:
      return parse_long(v, l);
    case KeyType::real:
      return parse_double(v, d);
    case KeyType::boolean:
      return parse_bool(v, b);
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

}  // namespace

std::string real_text(double v) {
  char text[32];
  const auto r = std::to_chars(text, text + sizeof text, v);
  return std::string(text, r.ptr);
}

bool same_value(const std::string& a, const std::string& b) {
  if (trim(a) == trim(b)) return true;
  bool x = false, y = false;
  if (parse_bool(a, x) && parse_bool(b, y)) return x == y;
  const std::vector<std::string> pa = split_list(a), pb = split_list(b);
  if (pa.empty() || pa.size() != pb.size()) return false;
  for (size_t i = 0; i < pa.size(); ++i) {
    double u = 0, v = 0;
    if (!parse_double(pa[i], u) || !parse_double(pb[i], v) || u != v) return false;
  }
  return true;
}

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
  throw ConfigError(origin + ": unknown key '" + shown(wanted) + "'" +
                    (best.empty() ? "" : "; did you mean '" + best + "'?"));
}

namespace {
// Where a value holds a ';' or '#' after a space or tab (what other INI readers take as the start of a comment), or
// npos: "dir = runs/a # the first" would otherwise write into "runs/a # the first".
size_t inline_comment_at(const std::string& value) {
  for (size_t i = 1; i < value.size(); ++i)
    if ((value[i] == ';' || value[i] == '#') && (value[i - 1] == ' ' || value[i - 1] == '\t')) return i;
  return std::string::npos;
}

std::string inline_comment_problem(char c) {
  return std::string("a '") + c +
         "' after a space is not a comment here (inline comments are not supported); put the comment on a line of its "
         "own";
}
}  // namespace

void Config::set(const std::string& section, const std::string& name, const std::string& value,
                 const std::string& origin) {
  const ConfigKey& k = find(section, name, origin);
  // What load_file refuses (with the line number), --set refuses too, so that the run's own config.ini loads again: a
  // control character (a newline would add lines to it, a NUL end the number strtod reads) or a ';' or '#' after a
  // space.
  for (size_t i = 0; i < value.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(value[i]);
    if ((c < 0x20 && c != '\t') || c == 0x7f)
      throw ConfigError(origin + ": " + section + "." + name + ": control character " + std::to_string(c) +
                        " at position " + std::to_string(i) + " of the value; expected " + expected(k));
  }
  if (const size_t at = inline_comment_at(value); at != std::string::npos)
    throw ConfigError(origin + ": " + section + "." + name + " = '" + shown(trim(value)) +
                      "': " + inline_comment_problem(value[at]));
  // Quotes are not removed (as in inih and Python's configparser): dir = "/data/run" would be a relative directory
  // named '"', holding '/data/run"'.
  if (const std::string t = trim(value); !t.empty() && (t[0] == '"' || t[0] == '\''))
    throw ConfigError(origin + ": " + section + "." + name + " = '" + shown(t) +
                      "': quotes are not removed here (the value would keep them); expected the value without quotes");
  // Paths and names end up in JSON (the checkpoint's configuration, log.jsonl), which is UTF-8: a Latin-1 path would
  // fail only when the first checkpoint is written, after the training.
  if (const size_t at = invalid_utf8_at(value); at != std::string::npos) {
    char byte[8];
    std::snprintf(byte, sizeof byte, "0x%02X", static_cast<unsigned char>(value[at]));
    throw ConfigError(origin + ": " + section + "." + name + ": byte " + byte + " at position " + std::to_string(at) +
                      " of the value is not UTF-8; expected UTF-8 text (rename the file or directory)");
  }
  if (!valid(k, value)) {
    // A number too small for a double (1e-400) would read as 0 and be reported as "0": said as typed.
    double v = 1;
    char* end = nullptr;
    const std::string t = trim(value);
    if (k.type == KeyType::real && !t.empty()) v = std::strtod(t.c_str(), &end);
    const bool underflow = end && *end == '\0' && v == 0;  // an exact 0 is valid: this 0 is an underflow
    // A whole number beyond 64 bits (2^64 - 1) is an integer: the range is what is wrong.
    bool too_long = false;
    if (k.type == KeyType::integer || k.type == KeyType::int_list)
      for (const std::string& part : split_list(t)) {
        long l;
        const size_t sign = !part.empty() && (part[0] == '-' || part[0] == '+') ? 1 : 0;
        const bool digits = part.size() > sign && part.find_first_not_of("0123456789", sign) == std::string::npos;
        too_long = too_long || (digits && !parse_long(part, l));
      }
    throw ConfigError(origin + ": " + section + "." + name + " = '" + shown(t) + "': expected " + expected(k) +
                      (underflow ? " (this one is below the smallest double, 4.9e-324: write 0 for zero)" : "") +
                      (too_long ? " in -9223372036854775808..9223372036854775807 (64 bits; the key's own range may "
                                  "be narrower)"
                                : ""));
  }
  values_[section + "." + name] = trim(value);
}

// The INI dialect of inih without its surprises, each an error naming the line: no line-length limit (inih split
// lines over 199 characters, parsing the tail as a line of its own), no inline comments (" ;" cut a value short; " ;"
// and " #" are errors), no continuation lines (an indented line extended the value above it), and each section and key
// once (a second one was merged or overrode the first without a word). Full-line comments start with ';' or '#'.
void Config::load_file(const std::string& path) {
  if (std::string why = regular_file_problem(path); !why.empty())
    throw ConfigError(path + ": " + why + "; expected an INI configuration file");
  std::ifstream f(path, std::ios::binary);
  if (!f) throw ConfigError(path + ": cannot open config file");
  std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (f.bad()) throw ConfigError(path + ": cannot read config file");
  if (text.starts_with("\xEF\xBB\xBF")) text.erase(0, 3);  // a UTF-8 byte order mark
  std::string section;
  std::map<std::string, int> sections, keys;  // -> the line that set it
  std::istringstream in(text);
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    const std::string where = path + ":" + std::to_string(n) + ": ";
    const std::string t = trim(line);
    if (t.empty() || t[0] == ';' || t[0] == '#') continue;
    if (line[0] == ' ' || line[0] == '\t')
      throw ConfigError(where + "indented line '" + t +
                        "': continuation lines are not supported; expected 'key = value' or '[section]' at the start "
                        "of the line");
    if (t[0] == '[') {
      if (t.back() != ']') throw ConfigError(where + "not a valid INI line (expected 'key = value' or '[section]')");
      section = trim(t.substr(1, t.size() - 2));
      // An unknown section, even an empty one, is a typo whose keys would be refused one by one (or none noticed).
      std::vector<std::string> known;
      for (const ConfigKey& k : schema_)
        if (std::find(known.begin(), known.end(), k.section) == known.end()) known.push_back(k.section);
      if (std::find(known.begin(), known.end(), section) == known.end()) {
        std::string list;
        for (const std::string& k : known) list += (list.empty() ? "[" : ", [") + k + "]";
        throw ConfigError(where + "unknown section [" + shown(section) + "]; expected one of " + list);
      }
      if (const auto [it, fresh] = sections.emplace(section, n); !fresh)
        throw ConfigError(where + "section [" + section + "] appears again (first at line " +
                          std::to_string(it->second) + "); expected each section once");
      continue;
    }
    const size_t eq = t.find_first_of("=:");
    if (eq == std::string::npos || eq == 0)
      throw ConfigError(where + "not a valid INI line (expected 'key = value' or '[section]')");
    const std::string name = trim(t.substr(0, eq)), value = trim(t.substr(eq + 1));
    if (section.empty()) {
      std::string home;
      for (const ConfigKey& k : schema_)
        if (k.name == name) home = home.empty() ? "[" + k.section + "]" : home + " or [" + k.section + "]";
      throw ConfigError(where + "'" + shown(name) + "' comes before any [section]; expected it under its section" +
                        (home.empty() ? "" : " (" + home + ")"));
    }
    if (const size_t at = inline_comment_at(value); at != std::string::npos)
      throw ConfigError(where + section + "." + name + " = '" + shown(value) +
                        "': " + inline_comment_problem(value[at]));
    if (const auto [it, fresh] = keys.emplace(section + "." + name, n); !fresh)
      throw ConfigError(where + section + "." + name + " is set again (first at line " + std::to_string(it->second) +
                        "); expected each key once");
    set(section, name, value, path + ":" + std::to_string(n));  // its errors name the line too
  }
}

void Config::apply_override(const std::string& assignment) {
  size_t eq = assignment.find('=');
  size_t dot = assignment.find('.');
  if (eq == std::string::npos || dot == std::string::npos || dot > eq)
    throw ConfigError("--set '" + assignment + "': expected section.key=value");
  set(trim(assignment.substr(0, dot)), trim(assignment.substr(dot + 1, eq - dot - 1)), assignment.substr(eq + 1),
      "--set");
}

void Config::apply_overrides(const std::vector<std::string>& assignments) {
  std::map<std::string, std::string> given;  // "section.key" -> value
  for (const std::string& a : assignments) {
    apply_override(a);
    const size_t eq = a.find('='), dot = a.find('.');
    const std::string key = trim(a.substr(0, dot)) + "." + trim(a.substr(dot + 1, eq - dot - 1));
    const auto [it, first] = given.emplace(key, trim(a.substr(eq + 1)));
    if (!first)  // as in a file, each key once: the second would win without a word
      throw ConfigError("--set " + key + " given twice ('" + it->second + "', then '" + trim(a.substr(eq + 1)) +
                        "'); expected each key once");
  }
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

std::string Config::get_string(const std::string& s, const std::string& n) const {
  return raw(s, n);
}

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

// A value's text in one spelling per type (the text itself when it does not parse).
static std::string canonical_text(const ConfigKey& k, const std::string& text) {
  switch (k.type) {
    case KeyType::integer: {
      long v = 0;
      return parse_long(text, v) ? std::to_string(v) : text;
    }
    case KeyType::real: {
      double v = 0;
      return parse_double(text, v) ? real_text(v) : text;
    }
    case KeyType::boolean: {
      bool v = false;
      return parse_bool(text, v) ? (v ? "true" : "false") : text;
    }
    case KeyType::int_list:
    case KeyType::real_list: {
      std::string out;
      for (const std::string& part : split_list(text)) {
        double v = 0;
        out += (out.empty() ? "" : ", ") + (parse_double(part, v) ? real_text(v) : part);
      }
      return out;
    }
    case KeyType::string:
      break;
  }
  return text;
}

std::string Config::value_text(const std::string& section, const std::string& name) const {
  return canonical_text(find(section, name, "value_text"), raw(section, name));
}

bool Config::is_default(const std::string& section, const std::string& name) const {
  const ConfigKey& k = find(section, name, "is_default");
  return canonical_text(k, raw(section, name)) == canonical_text(k, trim(k.default_value));
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
