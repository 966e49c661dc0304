// INI configuration with a schema: every key has a type, a default and a help line. Files are parsed by libinih;
// unknown sections or keys and badly typed values are errors that name the file, the key and what was expected,
// suggesting the nearest valid key. Command-line overrides use "section.key=value".
#pragma once
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace unet::io {

// A usage or configuration error: tools exit with status 2 on it (docs/reference.md, "Exit statuses").
struct ConfigError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class KeyType { integer, real, boolean, string, int_list, real_list };

struct ConfigKey {
  std::string section;
  std::string name;
  KeyType type;
  std::string default_value;  // written as in an INI file; validated against the type
  std::string help;
  std::vector<std::string> choices = {};  // for strings: the allowed values (empty = any)
};

class Config {
 public:
  explicit Config(std::vector<ConfigKey> schema);

  // Values from an INI file: each section and key at most once, no indented (continuation) lines, no " ;" inside a
  // value (inline comments), any line length; otherwise ConfigError naming the file and line.
  void load_file(const std::string& path);
  void set(const std::string& section, const std::string& name, const std::string& value, const std::string& origin);
  void apply_override(const std::string& assignment);      // "section.key=value", from --set
  // Every --set of a command line, in order; a key given twice is a ConfigError (as in a file).
  void apply_overrides(const std::vector<std::string>& assignments);

  long get_int(const std::string& section, const std::string& name) const;
  double get_real(const std::string& section, const std::string& name) const;
  bool get_bool(const std::string& section, const std::string& name) const;
  std::string get_string(const std::string& section, const std::string& name) const;
  std::vector<long> get_int_list(const std::string& section, const std::string& name) const;  // "1, 2, 3"
  std::vector<double> get_real_list(const std::string& section, const std::string& name) const;

  // The value in one spelling whatever the text (8e-4 and 0.0008, yes and true, "1,2" and "1, 2" alike), and whether
  // it equals the key's default so.
  std::string value_text(const std::string& section, const std::string& name) const;
  bool is_default(const std::string& section, const std::string& name) const;

  const std::vector<ConfigKey>& schema() const { return schema_; }
  std::string to_ini() const;    // the effective configuration, every key, as an INI text
  std::string help_text() const; // every key with its type, default and help

 private:
  const ConfigKey& find(const std::string& section, const std::string& name, const std::string& origin) const;
  const std::string& raw(const std::string& section, const std::string& name) const;
  std::vector<ConfigKey> schema_;
  std::map<std::string, std::string> values_;  // "section.name" -> text
};

// Whether two values of one key, as written, mean the same without knowing the key's type: the same text, the same
// numbers (8e-4 and 0.0008, 00 and 0, lists item by item) or the same truth value (true and yes). For comparing a
// configuration with one saved earlier (unet_train --resume).
bool same_value(const std::string& a, const std::string& b);

// Edit distance, for "did you mean" suggestions.
size_t edit_distance(const std::string& a, const std::string& b);

// A real number for messages: the shortest text that reads back as v (10.0000001, -1e-09, 1e+31), where
// std::to_string's six decimals would show 10.000000 or -0.000000.
std::string real_text(double v);

}  // namespace unet::io
