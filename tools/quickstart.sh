#!/usr/bin/env bash
# The main job on the embedded default: installs and builds (tools/setup.sh), generates a synthetic dataset, trains a
# small network on the CPU, segments the unseen test images and prints their Dice.
#   tools/quickstart.sh                  a 3D nnU-Net (DynUNet) on synthetic 3D shapes (tools/quickstart.ini)
#   tools/quickstart.sh --model unet2d   DLE's UNet2D on synthetic ISBI 2012-like EM pages, TIFF stacks
#                                        (tools/quickstart_unet2d.ini)
#   tools/quickstart.sh --model unet3plus  DLE's UNet 3+ on the slices of synthetic CT-like volumes
#                                        (tools/quickstart_unet3plus.ini)
# Everything goes to out/quickstart/ (out/quickstart-MODEL/ for the others; WORK_DIR to change it).
set -euo pipefail
cd "$(dirname "$0")/.."
model=dynunet
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model=${2:-}; shift 2 || { echo "quickstart.sh: --model needs a value" >&2; exit 2; } ;;
    --model=*) model=${1#--model=}; shift ;;
    *) echo "quickstart.sh: unknown argument '$1' (expected --model dynunet|unet2d|unet3plus)" >&2; exit 2 ;;
  esac
done
case "$model" in
  dynunet|unet2d|unet3plus) ;;
  *) echo "quickstart.sh: --model $model: expected dynunet, unet2d or unet3plus" >&2; exit 2 ;;
esac
tools/setup.sh
build=${BUILD_DIR:-build}
if [ "$model" = dynunet ]; then
  work=${WORK_DIR:-out/quickstart}
  rm -rf "$work"
  mkdir -p "$work"
  start=$(date +%s)
  # Each case scanned differently (noise, blur, contrast), as in a multi-centre dataset.
  "$build/unet_synth" --output "$work/data" --train 24 --test 8 --size 48,48,48 --classes 3 --seed 0 \
    --scanner-variation
  "$build/unet_train" tools/quickstart.ini --set data.dataset="$work/data" --set output.dir="$work/run"
  "$build/unet_infer" --model "$work/run/model.safetensors" --input "$work/data/imagesTs" --output "$work/pred"
  "$build/unet_eval" --pred "$work/pred" --label "$work/data/labelsTs"
elif [ "$model" = unet3plus ]; then
  # 3D volumes (NIfTI) trained on as 2D slices; unet_infer segments every slice of the unseen volumes.
  work=${WORK_DIR:-out/quickstart-unet3plus}
  rm -rf "$work"
  mkdir -p "$work"
  start=$(date +%s)
  "$build/unet_synth" --output "$work/data" --train 16 --test 4 --size 16,96,96 --spacing 3,1,1 --classes 3 --seed 0
  "$build/unet_train" tools/quickstart_unet3plus.ini --set data.dataset="$work/data" --set output.dir="$work/run"
  "$build/unet_infer" --model "$work/run/model.safetensors" --input "$work/data/imagesTs" --output "$work/pred"
  "$build/unet_eval" --pred "$work/pred" --label "$work/data/labelsTs"
else
  # ISBI 2012's layout: train-volume.tif / train-labels.tif (30 pages), test-volume.tif, and here test-labels.tif.
  # Labels 0 = membrane, 255 = cell; unet_infer writes them the same way, so unet_eval reads both with --label-scale.
  work=${WORK_DIR:-out/quickstart-unet2d}
  rm -rf "$work"
  mkdir -p "$work/pred"
  start=$(date +%s)
  "$build/unet_synth" --output "$work/data" --format isbi --train 30 --test 6 --size 128,128 --seed 0
  "$build/unet_train" tools/quickstart_unet2d.ini --set data.dataset="$work/data" --set output.dir="$work/run"
  "$build/unet_infer" --model "$work/run/model.safetensors" --input "$work/data/test-volume.tif" \
    --output "$work/pred/test-volume.tif"
  "$build/unet_eval" --pred "$work/pred/test-volume.tif" --label "$work/data/test-labels.tif" --label-scale 255
fi
echo "quick start: done in $(( $(date +%s) - start )) s (after the build); results in $work"
