#!/usr/bin/env bash
# Issue 14's quick-start check: does the augmentation cost or gain Dice? Trains the quick start (tools/quickstart.ini
# on its synthetic dataset) with three augmentation sets and several seeds, segments the unseen test images and prints
# the mean Dice of each run and of each set, as a Markdown table.
#   flips  flips only (every augment.* probability 0)
#   dle    the default: DLE's zoom, noise, blur, brightness and contrast at 0.15 each, plus flips
#   all    dle plus nnU-Net's rotation 0.2, gamma 0.3 and low-resolution simulation 0.25
# Usage: bench/augment_ablation.sh [--seeds "0 1 2"] [--steps 1000] [--sets "flips dle all"] [--out DIR]
#          [--synth "UNET_SYNTH FLAGS"]   the dataset's flags beyond the sizes, as the quick start's by default
#                                         (--scanner-variation); --synth "" for one scanner for every case
# Needs a build (tools/setup.sh); BUILD_DIR picks another one. About 3 minutes a run on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
seeds="0 1 2"
steps=1000
sets="flips dle all"
out=out/augment-ablation
synth="--scanner-variation"
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) seeds=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --sets) sets=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --synth) synth=$2; shift 2 ;;
    *) echo "augment_ablation.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
data="$out/data$(echo "$synth" | tr -d ' ')"  # one dataset per set of flags: out/data--scanner-variation
# shellcheck disable=SC2086  # $synth is a list of flags
[ -d "$data" ] || "$build/unet_synth" --output "$data" --train 24 --test 8 --size 48,48,48 --classes 3 --seed 0 $synth
settings() {
  case "$1" in
    flips) echo "--set augment.zoom=0 --set augment.noise=0 --set augment.blur=0 --set augment.brightness=0 --set augment.contrast=0" ;;
    dle) echo "" ;;
    all) echo "--set augment.rotation=0.2 --set augment.gamma=0.3 --set augment.low_resolution=0.25" ;;
    *) echo "augment_ablation.sh: unknown set '$1' (expected flips, dle or all)" >&2; exit 2 ;;
  esac
}
table="$out/results-$(echo "$sets" | tr ' ' '-').md"
echo "| set | seed | steps | mean Dice | train s |" > "$table"
echo "| --- | --- | --- | --- | --- |" >> "$table"
for set in $sets; do
  extra=$(settings "$set")
  for seed in $seeds; do
    run="$out/$set-seed$seed"
    rm -rf "$run"
    start=$(date +%s)
    # shellcheck disable=SC2086  # $extra is a list of --set flags
    "$build/unet_train" tools/quickstart.ini --set data.dataset="$data" --set output.dir="$run/run" \
      --set train.seed="$seed" --set train.steps="$steps" --set train.log_every="$steps" $extra > "$run.log" 2>&1
    seconds=$(( $(date +%s) - start ))
    "$build/unet_infer" --model "$run/run/model.safetensors" --input "$data/imagesTs" --output "$run/pred" \
      >> "$run.log" 2>&1
    "$build/unet_eval" --pred "$run/pred" --label "$data/labelsTs" >> "$run.log" 2>&1
    dice=$(/usr/bin/python3 -c "import json,sys; print('%.4f' % json.load(open(sys.argv[1]))['mean_dice'])" \
      "$run/pred/dice.json")
    echo "| $set | $seed | $steps | $dice | $seconds |" | tee -a "$table"
  done
done
echo
cat "$table"
