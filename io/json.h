// Reading the JSON the project accepts from users (dataset.json, safetensors headers, model cards).
#pragma once
#include <string>

#include <nlohmann/json.hpp>

namespace unet::io {

// nlohmann::json::parse, except that a key appearing twice in one object is an error. nlohmann keeps the last one
// silently and Python's json does the same, yet other readers keep the first: a file with two "labels" or two
// entries for one tensor would mean one thing here and another elsewhere. Throws std::runtime_error with the parser's
// message or "the key \"K\" appears twice in one object"; the caller adds the file's name.
nlohmann::json parse_json(const std::string& text);

// The whole of a file's contents, for parse_json; throws std::runtime_error naming the file if it cannot be read.
std::string read_text_file(const std::string& path);

}  // namespace unet::io
