// The command-line tools' one front-end contract: exit status 0 on success, 2 for a usage or configuration
// error, 1 for a runtime failure, each failure one line on stderr that starts with the tool's name.
#pragma once
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <optional>
#include <stdexcept>

#include "io/config.h"
#include "io/synthetic.h"
#include "models/trainer.h"

namespace unet::tools {

// A bad argument or option value found by a tool itself (exit status 2).
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Parses the command line: nothing when the tool should go on; otherwise its exit status (0 after --help, 2 after a
// parse error, reported as "TOOL: message" and a hint).
inline std::optional<int> parse_command_line(CLI::App& app, int argc, char** argv, const char* tool) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "%s: %s\nRun with --help for usage.\n", tool, e.what());
    return 2;
  }
  return std::nullopt;
}

// Runs the tool's body and maps what it throws to the exit statuses above: the usage and configuration errors of
// every layer (UsageError, io::ConfigError, io::SynthOptionsError, models::TrainerOptionError) to 2 as
// "TOOL: message", anything else to 1 as "TOOL: error: message".
template <class Body>
int run_tool(const char* tool, Body&& body) {
  try {
    return body();
  } catch (const UsageError& e) {
    std::fprintf(stderr, "%s: %s\n", tool, e.what());
  } catch (const io::ConfigError& e) {
    std::fprintf(stderr, "%s: %s\n", tool, e.what());
  } catch (const io::SynthOptionsError& e) {
    std::fprintf(stderr, "%s: %s\n", tool, e.what());
  } catch (const models::TrainerOptionError& e) {
    std::fprintf(stderr, "%s: %s\n", tool, e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", tool, e.what());
    return 1;
  }
  return 2;
}

}  // namespace unet::tools
