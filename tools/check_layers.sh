#!/usr/bin/env bash
# The layers depend one way (README "Architecture"): kernels <- engine <- io <- models <- tools, bench and tests on
# top. This fails (exit 1, naming each file and line) when a file includes a header of its own layer's users.
# Run by every build (CMake target check_layers) and on its own: tools/check_layers.sh
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
check() {  # check LAYER_DIR FORBIDDEN_DIR...
  local dir=$1
  shift
  local pattern
  pattern=$(printf '|%s/' "$@")
  pattern="^[[:space:]]*#[[:space:]]*include[[:space:]]*\"(${pattern:1})"
  if grep -rnE "$pattern" "$dir" --include='*.h' --include='*.cpp' --include='*.cu' --include='*.cuh'; then
    echo "check_layers: $dir/ must not include from $* (the layers depend one way: see README, Architecture)" >&2
    status=1
  fi
}
check kernels engine io models tools bench tests
check engine io models tools bench tests
check io models tools bench tests
check models tools bench tests
check tools bench tests  # the tools need no benchmark code
exit $status
