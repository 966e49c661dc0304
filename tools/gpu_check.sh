#!/usr/bin/env bash
# The GPU check: one command for whoever has an NVIDIA GPU. Builds the GPU variant (tools/build_gpu.sh, unless --bin
# names binaries built elsewhere), then runs, each step with its own time limit:
#   1. the quick start on cuda: unet_synth, unet_train (tools/quickstart.ini; precision auto, so bf16), unet_infer in
#      fp32 on cuda and on the cpu from the same checkpoint, unet_eval; passes when the mean Dice is >= 0.90 and both
#      label maps are identical;
#   2. tests/test_gpu.cpp (every CUDA op, the production convolution tiles, a training step and checkpoint on cuda,
#      against the CPU), then again under compute-sanitizer memcheck;
#   3. unet_selftest (every kernel against the CPU backend);
#   4. the training benchmark: bench/train_bench on the reference 3D nnU-Net (128^3, batch 2, 4 channels, 6 levels,
#      deep supervision) in fp32, TF32, bf16 and fp16: samples/s, latency percentiles, peak memory;
#   5. the same for DLE's UNet2D (572 x 572, batch 8, filters 64, its loss), as DLE UNet_Medical trains it, and for
#      DLE's UNet 3+ (320 x 320, batch 16, filters 64, 3 slices in, its hybrid loss; fp32 and bf16 only, 2 steps);
#   6. gpu_conv_bench: our convolutions against cuDNN at the nnU-Net shapes;
#   7. the sm_90a wgmma path (UNET_CONV_SM90=1): test_gpu through it, gpu_conv_bench f16/bf16 and the 3D nnU-Net
#      train_bench in bf16 and fp16 again.
# and writes one summary, markdown and JSON (GPU, driver, commit, every figure), to
# bench/results/gpu-check-DATE-GPU.{md,json}; the logs of every step go to out/gpu-check/. About 6 minutes on an H200
# before step 5 was added (at most 6 more).
# usage: tools/gpu_check.sh [--bin DIR] [--skip-bench]
#   --bin DIR      use the binaries in DIR (unet_train, unet_tests, ...) instead of building; DIR/COMMIT, when present,
#                  names the commit they were built from
#   --skip-bench   steps 1-3 only
# Exit status: 0 when every check passed (benchmarks report, they do not fail), 1 otherwise, 2 usage error.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD

bin="" skip_bench=0
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=$(cd "${2:?--bin needs a directory}" && pwd) || exit 2; shift 2 ;;
    --skip-bench) skip_bench=1; shift ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

if ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
  echo "gpu_check: no NVIDIA GPU found (nvidia-smi -L lists none); nothing to check" >&2
  exit 1
fi
if [ -z "$bin" ]; then
  UNET_MARCH=${UNET_MARCH:-native} tools/build_gpu.sh || { echo "gpu_check: the GPU build failed" >&2; exit 1; }
  bin=$root/${BUILD_DIR:-build-gpu}
fi
commit=$(cat "$bin/COMMIT" 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || echo unknown)
work=$root/out/gpu-check
rm -rf "$work" && mkdir -p "$work"
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)
driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n 1)
cuda_version=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' | head -n 1)
echo "gpu_check: $gpu, driver $driver (CUDA $cuda_version), binaries of $commit in $bin"

# step NAME SECONDS CMD...: runs CMD with a time limit, its output in $work/NAME.log (and on the terminal);
# records NAME's exit status and seconds.
declare -A rc secs
step() {
  local name=$1 limit=$2
  shift 2
  echo "=== $name: $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$work/$name.log"
  rc[$name]=${PIPESTATUS[0]}
  secs[$name]=$((SECONDS - t0))
  echo "=== $name: exit ${rc[$name]} in ${secs[$name]} s"
}
# The first match of a sed expression in a step's log, or "" (figures the summary quotes).
grab() { sed -n "$2" "$work/$1.log" 2>/dev/null | head -n 1; }

# 1. The quick start on cuda, and the cpu's inference of the same checkpoint.
qs=$work/quickstart
mkdir -p "$qs"
step qs_synth 120 "$bin/unet_synth" --output "$qs/data" --train 24 --test 8 --size 48,48,48 --classes 3 --seed 0 \
  --scanner-variation
step qs_train 300 "$bin/unet_train" tools/quickstart.ini --set data.dataset="$qs/data" --set output.dir="$qs/run" \
  --set runtime.device=cuda
step qs_infer_cuda 120 "$bin/unet_infer" --model "$qs/run/model.safetensors" --input "$qs/data/imagesTs" \
  --output "$qs/pred-cuda" --device cuda --precision fp32
step qs_infer_cpu 300 "$bin/unet_infer" --model "$qs/run/model.safetensors" --input "$qs/data/imagesTs" \
  --output "$qs/pred-cpu" --device cpu --precision fp32
step qs_eval 120 "$bin/unet_eval" --pred "$qs/pred-cuda" --label "$qs/data/labelsTs"
dice=$(grab qs_eval 's/^mean Dice over .*: \([0-9.]*\)$/\1/p')
train_sps=$(grab qs_train 's/^step *1000\/1000 .* \([0-9.]*\) samples\/s.*/\1/p')
same=0 total=0
for f in "$qs"/pred-cuda/*.nii.gz; do
  [ -e "$f" ] || continue
  total=$((total + 1))
  cmp -s <(gzip -dc "$f") <(gzip -dc "$qs/pred-cpu/$(basename "$f")" 2>/dev/null) && same=$((same + 1))
done
qs_ok=0
if [ "${rc[qs_train]}" = 0 ] && [ "${rc[qs_infer_cuda]}" = 0 ] && [ "${rc[qs_eval]}" = 0 ] && [ -n "$dice" ] &&
   awk -v d="$dice" 'BEGIN { exit !(d >= 0.90) }' && [ "$total" -gt 0 ] && [ "$same" = "$total" ]; then
  qs_ok=1
fi

# 2. test_gpu under compute-sanitizer memcheck (error-exitcode: any access error fails the step).
# The case that asks for 4 PiB on purpose (to check the out-of-memory message) runs outside the sanitizer, which
# counts the refused cudaMallocAsync as an error.
step test_gpu 300 "$bin/unet_tests" --source-file='*test_gpu*'
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
if [ -x "$sanitizer" ]; then
  step memcheck 300 "$sanitizer" --tool memcheck --error-exitcode 99 "$bin/unet_tests" --source-file='*test_gpu*' \
    --test-case-exclude='*deliberate*'
  sanitizer_summary=$(grab memcheck 's/^========= ERROR SUMMARY: \(.*\)$/\1/p')
else
  sanitizer_summary="compute-sanitizer not found: not run"
fi
test_gpu_cases=$(grab test_gpu 's/^\[doctest\] test cases: *\([0-9]*\) | *\([0-9]*\) passed | *\([0-9]*\) failed.*/\2 of \1 passed/p')
test_gpu_asserts=$(grab test_gpu 's/^\[doctest\] assertions: *\([0-9]*\) | *\([0-9]*\) passed | *\([0-9]*\) failed.*/\2 of \1 passed/p')

# 3. The self-test.
step selftest 300 "$bin/unet_selftest" --device cuda
selftest_line=$(grab selftest 's/^\([0-9]* checks, [0-9]* failed\): .*/\1/p')

# 4-5. Benchmarks.
if [ "$skip_bench" = 0 ]; then
  bench=(--patch 128,128,128 --batch 2 --filters 32 --classes 3 --channels 4 --depth 5 --device cuda)
  step train_bench 300 "$bin/train_bench" "${bench[@]}" --steps 6 --precision fp32,tf32,bf16,fp16 \
    --json "$work/train_bench.json"
  step train_bench_unet2d 240 "$bin/train_bench" --model unet2d --patch 572,572 --batch 8 --filters 64 --classes 2 \
    --device cuda --steps 4 --precision fp32,tf32,bf16,fp16 --json "$work/train_bench_unet2d.json"
  step train_bench_unet3plus 120 "$bin/train_bench" --model unet3plus --patch 320,320 --batch 16 --filters 64 \
    --channels 3 --classes 2 --deep-supervision 0 --device cuda --steps 2 --precision fp32,bf16 \
    --json "$work/train_bench_unet3plus.json"
  step conv_bench 330 "$bin/gpu_conv_bench" --json "$work/conv_bench.json"
  # 7. The sm_90a wgmma path (opt-in until this step has passed on a GPU): test_gpu through it, then the f16/bf16
  # convolutions and the 3D nnU-Net's training step timed again.
  step test_gpu_sm90 300 env UNET_CONV_SM90=1 "$bin/unet_tests" --source-file='*test_gpu*'
  step conv_bench_sm90 240 env UNET_CONV_SM90=1 "$bin/gpu_conv_bench" --dtypes f16,bf16 --budget 200 \
    --json "$work/conv_bench_sm90.json"
  step train_bench_sm90 200 env UNET_CONV_SM90=1 "$bin/train_bench" "${bench[@]}" --steps 6 --precision bf16,fp16 \
    --json "$work/train_bench_sm90.json"
fi

# ---- summary ----
status() { [ "${rc[$1]:-skipped}" = 0 ] && echo pass || echo "fail (exit ${rc[$1]:-not run})"; }
checks_ok=1
[ "$qs_ok" = 1 ] || checks_ok=0
[ "${rc[test_gpu]}" = 0 ] || checks_ok=0
[ "${rc[memcheck]:-0}" = 0 ] || checks_ok=0
[ "${rc[selftest]}" = 0 ] || checks_ok=0
mkdir -p bench/results
date_tag=$(date -u +%Y-%m-%d)
gpu_tag=$(echo "$gpu" | tr -cs 'A-Za-z0-9' '-' | sed 's/-$//')
out=bench/results/gpu-check-$date_tag-$gpu_tag
{
  echo "# GPU check: $gpu ($date_tag)"
  echo
  echo "Driver $driver, CUDA $cuda_version, commit $commit. Produced by tools/gpu_check.sh; logs in out/gpu-check/."
  echo
  echo "| check | result | seconds |"
  echo "| --- | --- | --- |"
  echo "| quick start on cuda: train, infer, eval | $( [ "$qs_ok" = 1 ] && echo pass || echo fail ): mean Dice $dice (>= 0.90), cuda labels identical to the cpu's in $same of $total cases, training ${train_sps:-?} samples/s | $(( ${secs[qs_train]:-0} + ${secs[qs_infer_cuda]:-0} + ${secs[qs_eval]:-0} )) |"
  echo "| test_gpu (ops, conv tiles and precisions, training step + checkpoint on cuda vs cpu) | $(status test_gpu): cases ${test_gpu_cases:-?}, assertions ${test_gpu_asserts:-?} | ${secs[test_gpu]:-} |"
  echo "| test_gpu under compute-sanitizer memcheck | $(status memcheck): ${sanitizer_summary:-?} | ${secs[memcheck]:-} |"
  echo "| unet_selftest (kernels vs the CPU backend) | $(status selftest): ${selftest_line:-?} | ${secs[selftest]:-} |"
  if [ "$skip_bench" = 0 ]; then
    echo "| train_bench, 3D nnU-Net 128^3 batch 2 (fp32, TF32, bf16, fp16) | $(status train_bench); table below | ${secs[train_bench]:-} |"
    echo "| train_bench, DLE UNet2D 572^2 batch 8 filters 64 (fp32, TF32, bf16, fp16) | $(status train_bench_unet2d); table below | ${secs[train_bench_unet2d]:-} |"
    echo "| train_bench, DLE UNet 3+ 320^2 batch 16 filters 64 (fp32, bf16) | $(status train_bench_unet3plus); table below | ${secs[train_bench_unet3plus]:-} |"
    echo "| gpu_conv_bench (ours vs cuDNN) | $(status conv_bench); table below | ${secs[conv_bench]:-} |"
    echo "| test_gpu with the sm_90a fprop (UNET_CONV_SM90=1) | $(status test_gpu_sm90) | ${secs[test_gpu_sm90]:-} |"
    echo "| gpu_conv_bench f16/bf16 with the sm_90a fprop | $(status conv_bench_sm90); log in out/gpu-check/conv_bench_sm90.log | ${secs[conv_bench_sm90]:-} |"
    echo "| train_bench, 3D nnU-Net (bf16, fp16) with the sm_90a path | $(status train_bench_sm90); table below | ${secs[train_bench_sm90]:-} |"
  fi
  if [ -s "$work/train_bench.log" ]; then
    echo
    echo "train_bench (PyTorch 2.11 + cuDNN 9.19 on an H200, same network: 5.36 fp32, 21.1 TF32, 33.4 AMP fp16, 28.4 AMP"
    echo "bf16 samples/s, 5.75 GiB peak under AMP; ../shared/gpu-runs/):"
    echo
    grep '^|' "$work/train_bench.log"
  fi
  if [ -s "$work/train_bench_sm90.log" ]; then
    echo
    echo "train_bench, the same 3D nnU-Net with UNET_CONV_SM90=1 (the wgmma fprop, dgrad with strides 1 and 2, and wgrad):"
    echo
    grep '^|' "$work/train_bench_sm90.log"
  fi
  if [ -s "$work/train_bench_unet2d.log" ]; then
    echo
    echo "train_bench, DLE's UNet2D (no PyTorch figure for it yet):"
    echo
    grep '^|' "$work/train_bench_unet2d.log"
  fi
  if [ -s "$work/train_bench_unet3plus.log" ]; then
    echo
    echo "train_bench, DLE's UNet 3+ (DLE's README, 1x A100 80G, batch 16: inference 70.93 img/s fp32, 87.02 AMP; training"
    echo "25.97 img/s on 1 GPU, TF without XLA/AMP):"
    echo
    grep '^|' "$work/train_bench_unet3plus.log"
  fi
  if [ -s "$work/conv_bench.json" ]; then
    echo
    echo "gpu_conv_bench per dtype (ratio = cuDNN time / ours: above 1, ours is faster; all = summed times of every row):"
    echo
    echo "| dtype | rows | ratio min | ratio geo. mean | ratio max | all rows: ours ms | cuDNN ms | ratio |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
    # One row object per line in the JSON (bench/lib/conv_timing.cpp writes it so).
    awk 'function field(k,   m) { if (match($0, "\"" k "\": \"?[^,\"]*")) { m = substr($0, RSTART, RLENGTH); sub(/^"[^"]*": "?/, "", m); return m } return "" }
         /"ours_ms"/ && field("skipped") == "false" && field("ratio") != "null" {
           d = field("dtype"); r = field("ratio") + 0; if (r <= 0) next
           n[d]++; lg[d] += log(r); o[d] += field("ours_ms"); c[d] += field("cudnn_ms")
           if (!(d in lo) || r < lo[d]) lo[d] = r; if (!(d in hi) || r > hi[d]) hi[d] = r }
         END { for (d in n) printf "| %s | %d | %.2f | %.2f | %.2f | %.1f | %.1f | %.2f |\n", d, n[d], lo[d], exp(lg[d] / n[d]), hi[d], o[d], c[d], c[d] / o[d] }' \
      "$work/conv_bench.json" | sort
  fi
  if [ -s "$work/conv_bench.log" ]; then
    echo
    echo "## gpu_conv_bench"
    echo '```'
    cat "$work/conv_bench.log"
    echo '```'
  fi
} > "$out.md"
num() { [ -n "$1" ] && echo "$1" || echo null; }
{
  echo "{"
  echo "  \"gpu\": \"$gpu\", \"driver\": \"$driver\", \"cuda\": \"$cuda_version\", \"commit\": \"$commit\", \"date\": \"$date_tag\","
  echo "  \"checks_passed\": $( [ "$checks_ok" = 1 ] && echo true || echo false ),"
  echo "  \"quickstart\": {\"passed\": $( [ "$qs_ok" = 1 ] && echo true || echo false ), \"mean_dice\": $(num "$dice"),"
  echo "                 \"cuda_cpu_identical_cases\": $same, \"cases\": $total, \"train_samples_per_s\": $(num "$train_sps"),"
  echo "                 \"train_exit\": ${rc[qs_train]:-null}, \"infer_exit\": ${rc[qs_infer_cuda]:-null}, \"eval_exit\": ${rc[qs_eval]:-null}},"
  echo "  \"test_gpu\": {\"exit\": ${rc[test_gpu]:-null}, \"cases\": \"${test_gpu_cases:-}\", \"assertions\": \"${test_gpu_asserts:-}\","
  echo "               \"seconds\": ${secs[test_gpu]:-null}, \"memcheck_exit\": ${rc[memcheck]:-null},"
  echo "               \"memcheck\": \"${sanitizer_summary:-}\", \"memcheck_seconds\": ${secs[memcheck]:-null}},"
  echo "  \"selftest\": {\"exit\": ${rc[selftest]:-null}, \"result\": \"${selftest_line:-}\"},"
  echo "  \"train_bench\": {\"exit\": ${rc[train_bench]:-null}, \"seconds\": ${secs[train_bench]:-null},"
  echo "                  \"result\": $( [ -s "$work/train_bench.json" ] && cat "$work/train_bench.json" || echo null )},"
  echo "  \"train_bench_unet2d\": {\"exit\": ${rc[train_bench_unet2d]:-null}, \"seconds\": ${secs[train_bench_unet2d]:-null},"
  echo "                  \"result\": $( [ -s "$work/train_bench_unet2d.json" ] && cat "$work/train_bench_unet2d.json" || echo null )},"
  echo "  \"train_bench_unet3plus\": {\"exit\": ${rc[train_bench_unet3plus]:-null}, \"seconds\": ${secs[train_bench_unet3plus]:-null},"
  echo "                  \"result\": $( [ -s "$work/train_bench_unet3plus.json" ] && cat "$work/train_bench_unet3plus.json" || echo null )},"
  echo "  \"conv_bench\": {\"exit\": ${rc[conv_bench]:-null}, \"seconds\": ${secs[conv_bench]:-null},"
  echo "                 \"result\": $( [ -s "$work/conv_bench.json" ] && cat "$work/conv_bench.json" || echo null )},"
  echo "  \"conv_bench_sm90\": {\"exit\": ${rc[conv_bench_sm90]:-null}, \"seconds\": ${secs[conv_bench_sm90]:-null},"
  echo "                 \"result\": $( [ -s "$work/conv_bench_sm90.json" ] && cat "$work/conv_bench_sm90.json" || echo null )},"
  echo "  \"train_bench_sm90\": {\"exit\": ${rc[train_bench_sm90]:-null}, \"seconds\": ${secs[train_bench_sm90]:-null},"
  echo "                  \"result\": $( [ -s "$work/train_bench_sm90.json" ] && cat "$work/train_bench_sm90.json" || echo null )}"
  echo "}"
} > "$out.json"
echo
cat "$out.md" | sed -n '1,14p'
echo "gpu_check: summary in $out.md and $out.json"
[ "$checks_ok" = 1 ]
