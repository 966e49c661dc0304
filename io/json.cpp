#include "io/json.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>
#include <vector>

namespace unet::io {

nlohmann::json parse_json(const std::string& text) {
  using json = nlohmann::json;
  std::vector<std::set<std::string>> keys;  // the keys seen so far in each object being parsed, innermost last
  std::string duplicate;
  auto watch = [&](int /*depth*/, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start) {
      keys.emplace_back();
    } else if (event == json::parse_event_t::object_end) {
      keys.pop_back();
    } else if (event == json::parse_event_t::key && duplicate.empty() &&
               !keys.back().insert(parsed.get<std::string>()).second) {
      duplicate = parsed.get<std::string>();
    }
    return true;
  };
  json j;
  try {
    j = json::parse(text, watch);
  } catch (const json::exception& e) {
    // The parser's text without its "[json.exception.parse_error.101] " prefix, which is the library's, not the user's.
    std::string what = e.what();
    if (what.rfind("[json.exception.", 0) == 0 && what.find("] ") != std::string::npos)
      what = what.substr(what.find("] ") + 2);
    // Python's json.dumps writes NaN, Infinity and -Infinity, which JSON does not have.
    if (const auto* p = dynamic_cast<const json::parse_error*>(&e); p && p->byte > 0) {
      const std::string around = text.substr(p->byte > 2 ? p->byte - 2 : 0, 10);
      if (around.find("NaN") != std::string::npos || around.find("Infinity") != std::string::npos)
        what += " (NaN and Infinity are not JSON numbers: expected a finite number)";
    }
    throw std::runtime_error(what);
  }
  if (!duplicate.empty())
    throw std::runtime_error("the key " + json(duplicate).dump(-1, ' ', false, json::error_handler_t::replace) +
                             " appears twice in one object");
  return j;
}

std::string read_text_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error(path + ": cannot open (" + std::strerror(errno) + ")");
  std::ostringstream s;
  s << f.rdbuf();
  if (f.bad()) throw std::runtime_error(path + ": cannot read (" + std::strerror(errno) + ")");
  return s.str();
}

size_t invalid_utf8_at(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    const int n = c >= 0xc2 && c <= 0xdf ? 1 : c >= 0xe0 && c <= 0xef ? 2 : c >= 0xf0 && c <= 0xf4 ? 3 : -1;
    if (n < 0 || i + static_cast<size_t>(n) >= s.size()) return i;  // not a lead byte, or cut short
    const unsigned char c1 = static_cast<unsigned char>(s[i + 1]);
    if ((c == 0xe0 && c1 < 0xa0) || (c == 0xed && c1 > 0x9f) || (c == 0xf0 && c1 < 0x90) || (c == 0xf4 && c1 > 0x8f))
      return i;
    for (int k = 1; k <= n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xc0) != 0x80) return i;
    i += static_cast<size_t>(n) + 1;
  }
  return std::string::npos;
}

std::string json_safe(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size();) {
    const size_t bad = invalid_utf8_at(s.substr(i));
    const size_t end = bad == std::string::npos ? s.size() : i + bad;
    for (; i < end; ++i) out += s[i] == '%' ? std::string("%25") : std::string(1, s[i]);
    if (i < s.size()) {
      char b[4];
      std::snprintf(b, sizeof b, "%%%02X", static_cast<unsigned>(static_cast<unsigned char>(s[i++])));
      out += b;
    }
  }
  return out;
}

}  // namespace unet::io
