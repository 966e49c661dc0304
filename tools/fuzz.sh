#!/usr/bin/env bash
# The libFuzzer harnesses (fuzz/*_fuzz.cpp: the NIfTI and TIFF readers, safetensors, the INI configuration with a schema,
# dataset.json): built with clang into build-fuzz/ (CMake -DUNET_FUZZ=ON: everything under
# -fsanitize=fuzzer-no-link,address,undefined, no CUDA), each run for RUNS executions from a copy of its seed corpus
# fuzz/corpus/NAME (the committed seeds stay as they are). A finding (a crash, a sanitizer report, a leak, a timeout
# of 10 s) stops with the fuzzer's report; its reproducer is kept in build-fuzz/findings/.
# usage: tools/fuzz.sh [RUNS]        (default 20000, what CI runs; the documented long run is 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for p in clang libomp-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
build=${FUZZ_BUILD_DIR:-build-fuzz}
runs=${1:-20000}
start=$SECONDS
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD} CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-1}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ -DUNET_FUZZ=ON \
  -DCMAKE_DISABLE_FIND_PACKAGE_CUDAToolkit=ON >/dev/null
targets=(nifti tiff safetensors config dataset)
cmake --build "$build" -j "$(nproc)" --target "${targets[@]/#/fuzz_}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "$work/$t"
  cp fuzz/corpus/"$t"/* "$work/$t/"
  if ! (cd "$work" && "$OLDPWD/$build/fuzz_$t" -runs="$runs" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
          -artifact_prefix="$work/finding-$t-" "$work/$t" >"$work/$t.log" 2>&1); then
    tail -n 60 "$work/$t.log"
    mkdir -p "$build/findings"
    cp "$work"/finding-"$t"-* "$build/findings/" 2>/dev/null || true
    echo "fuzz: $t found a problem; reproducer in $build/findings/ (run $build/fuzz_$t FILE)" >&2
    exit 1
  fi
  echo "fuzz: $t: $(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "$work/$t.log"), no finding"
done
echo "fuzz: done in $((SECONDS - start)) s"
