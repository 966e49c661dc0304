#!/usr/bin/env bash
# Builds the GPU variant here and packs it for a GPU machine that lacks our build dependencies (for example a rented
# or shared one): the programs tools/gpu_check.sh runs, stripped, in out/gpu/bin (with COMMIT, the commit they come
# from), and the shared libraries they need that are not part of the C/C++ runtime in out/gpu/lib; the same in
# out/gpu-bundle.tar.xz (about a quarter of the size: each program carries every kernel's SASS).
# usage: tools/gpu_bundle.sh        (environment: UNET_MARCH=x86-64-v3 CUDA_ARCHS=90 BUILD_DIR=build-gpu)
# On the GPU machine, from a checkout of the same commit:
#   LD_LIBRARY_PATH=$PWD/out/gpu/lib:$CUDNN_LIB tools/gpu_check.sh --bin out/gpu/bin
# CUDNN_LIB: the folder holding libcudnn.so.9, needed by gpu_conv_bench only (for example the lib folder of the
# Python package nvidia.cudnn that PyTorch wheels install).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build-gpu}
UNET_MARCH=${UNET_MARCH:-x86-64-v3} CUDA_ARCHS=${CUDA_ARCHS:-90} BUILD_DIR="$build" tools/build_gpu.sh
dest=out/gpu
rm -rf "$dest" && mkdir -p "$dest/bin" "$dest/lib"
programs=(unet_train unet_infer unet_eval unet_synth unet_selftest unet_tests train_bench gpu_conv_bench)
for p in "${programs[@]}"; do
  strip -o "$dest/bin/$p" "$build/$p"
done
git rev-parse --short HEAD > "$dest/bin/COMMIT"
git diff --quiet HEAD 2>/dev/null || sed -i 's/$/+uncommitted/' "$dest/bin/COMMIT"
# Every library the programs load except the C/C++ runtime (present on any Linux) and cuDNN (taken on the GPU machine).
for p in "${programs[@]}"; do ldd "$build/$p"; done | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | sort -u |
  while read -r lib; do
    case "$(basename "$lib")" in
      libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|ld-linux*|libstdc++.so*|libgcc_s.so*|libcudnn*) ;;
      *) cp -L "$lib" "$dest/lib/" ;;
    esac
  done
tar -C out -cJf out/gpu-bundle.tar.xz gpu
du -sh "$dest" out/gpu-bundle.tar.xz
ls "$dest/lib"
