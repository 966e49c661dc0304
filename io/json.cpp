#include "io/json.h"

#include <cerrno>
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
    throw std::runtime_error(e.what());
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

}  // namespace unet::io
