#!/usr/bin/env bash
# The checked build (docs/emulator.md): builds the emulator and CUDA-kernel tests with AddressSanitizer + UBSan into
# build-checked/ (CMake -DUNET_CHECKED=ON: only the targets those tests need) and runs them. Run after tools/setup.sh
# (which installs the packages). usage: tools/checked_test.sh     (environment: CHECKED_BUILD_DIR=build-checked)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${CHECKED_BUILD_DIR:-build-checked}
start=$SECONDS
# Cache hits across clones: paths relative to the checkout, and the working directory left out of -g hashes.
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD} CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-1}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DUNET_CHECKED=ON >/dev/null
cmake --build "$build" -j "$(nproc)" --target unet_tests emu_smem_overflow emu_global_overflow
# detect_stack_use_after_return=0: fake stacks do not follow fiber switches. detect_leaks=0: LeakSanitizer cannot see
# pointers held only on suspended fiber stacks. UBSan stops at the first error so that it fails the test.
export ASAN_OPTIONS=detect_stack_use_after_return=0:detect_leaks=0:abort_on_error=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}
ctest --test-dir "$build" --output-on-failure -j "$(nproc)" -R '^test_(emu|cuda)'
echo "checked_test: done in $((SECONDS - start)) s"
