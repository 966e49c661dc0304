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

// The index of the first byte of s that does not start or continue a well-formed UTF-8 sequence (RFC 3629: no
// overlong forms, no surrogates, nothing above U+10FFFF), or npos. JSON text is UTF-8: nlohmann refuses to write
// anything else (a Latin-1 file name), so such text is refused or escaped before it goes into JSON.
size_t invalid_utf8_at(const std::string& s);

// `s` as UTF-8 text for JSON (fingerprint.json, the cache files' and checkpoints' metadata): bytes that are not UTF-8
// (a Latin-1 file name such as caf\xe9, which nlohmann refuses to write) become %XX, and '%' itself %25, so distinct
// names stay distinct.
std::string json_safe(const std::string& s);

}  // namespace unet::io
