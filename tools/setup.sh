#!/usr/bin/env bash
# Installs the Debian packages the engine builds on (when missing) and builds it into build/.
# usage: tools/setup.sh            (environment: UNET_MARCH=native by default, BUILD_DIR=build)
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(g++ cmake ninja-build ccache doctest-dev nlohmann-json3-dev libnifti2-dev zlib1g-dev libinih-dev libcli11-dev
          libboost-context-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

build=${BUILD_DIR:-build}
# Paths relative to the checkout in ccache's hashes, so a fresh clone elsewhere reuses the cache.
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DUNET_MARCH="${UNET_MARCH:-native}" >/dev/null
cmake --build "$build" -j "$(nproc)"
