#!/usr/bin/env bash
# The main job on the embedded default: installs and builds (tools/setup.sh), generates a synthetic 3D dataset,
# trains a small nnU-Net on the CPU, segments the unseen test images and prints their Dice.
# Everything goes to out/quickstart/ (WORK_DIR to change it).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
build=${BUILD_DIR:-build}
work=${WORK_DIR:-out/quickstart}
rm -rf "$work"
mkdir -p "$work"
start=$(date +%s)
"$build/unet_synth" --output "$work/data" --train 24 --test 8 --size 48,48,48 --classes 3 --seed 0
"$build/unet_train" tools/quickstart.ini --set data.dataset="$work/data" --set output.dir="$work/run"
"$build/unet_infer" --model "$work/run/model.safetensors" --input "$work/data/imagesTs" --output "$work/pred"
"$build/unet_eval" --pred "$work/pred" --label "$work/data/labelsTs"
echo "quick start: done in $(( $(date +%s) - start )) s (after the build); results in $work"
