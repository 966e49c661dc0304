#!/usr/bin/env bash
# Builds the GPU variant into build-gpu/ (CMake -DUNET_CUDA_RUNTIME=ON): the CUDA kernels compiled by nvcc into the
# engine for CMAKE_CUDA_ARCHITECTURES (default 80;90: A100, H100; sm_86/89 run the sm_80 code), the CUDA runtime linked,
# so --device auto|cuda runs on the GPU. Installs the Debian packages first, as tools/setup.sh does; needs the CUDA
# toolkit (nvcc on the PATH or at /usr/local/cuda/bin). Without a GPU it still builds (CI compiles and links it).
# usage: tools/build_gpu.sh       (environment: BUILD_DIR=build-gpu, UNET_MARCH=native, CUDA_ARCHS=80;90)
# Then, on a GPU: build-gpu/unet_tests --source-file='*test_gpu*'   (every CUDA op against the CPU on the device)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build-gpu}
UNET_CUDA_RUNTIME=ON BUILD_DIR="$build" tools/setup.sh
