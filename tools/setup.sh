#!/usr/bin/env bash
# Installs the Debian packages the engine builds on (when missing) and builds it into build/.
# usage: tools/setup.sh            (environment: UNET_MARCH=native by default, BUILD_DIR=build,
#                                   UNET_CUDA_RUNTIME=auto|ON|OFF (see below), CUDA_ARCHS=80;90)
# Variant: the GPU build (CMake UNET_CUDA_RUNTIME=ON: kernels compiled by nvcc and run on the GPU, no emulator) when
# UNET_CUDA_RUNTIME=ON, or when it is auto (the default) and `nvidia-smi -L` lists a GPU and nvcc is installed;
# otherwise the default build (CPU backend + the device emulator). tools/build_gpu.sh asks for the GPU build.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(g++ cmake ninja-build ccache doctest-dev nlohmann-json3-dev libnifti2-dev zlib1g-dev libinih-dev libcli11-dev
          libboost-context-dev libopenmpi-dev openmpi-bin libtiff-dev)
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
nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
gpu=${UNET_CUDA_RUNTIME:-auto}
if [ "$gpu" = auto ]; then
  gpu=OFF
  if [ -x "$nvcc" ] && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    gpu=ON
    echo "setup: $(nvidia-smi -L | head -n 1 | cut -d'(' -f1)found: building the GPU variant into $build" \
         "(UNET_CUDA_RUNTIME=OFF for the emulated one)"
  fi
fi
cuda_args=(-DUNET_CUDA_RUNTIME="$gpu")
[ "$gpu" = ON ] && [ -x "$nvcc" ] && cuda_args+=(-DCMAKE_CUDA_COMPILER="$nvcc")
[ -n "${CUDA_ARCHS:-}" ] && cuda_args+=(-DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCHS")  # e.g. 89 for an RTX 4090 only
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DUNET_MARCH="${UNET_MARCH:-native}" "${cuda_args[@]}" \
  >/dev/null
cmake --build "$build" -j "$(nproc)"
