#!/usr/bin/env bash
# The README's second command: installs what is missing, then
#   1. builds and runs the whole test suite with g++ and with clang++ (keel must build with both;
#      the benchmarks are built too, so that they keep compiling);
#   2. runs the in-process tests (checkpoint reading and damage, serialization, loader, trainer)
#      again under AddressSanitizer and UndefinedBehaviorSanitizer (clang++);
#   3. fuzzes the checkpoint reader for a minute (fuzz/run.sh; longer runs: see README).
# CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh --tests
jobs=$(nproc)

for compiler in g++ clang++; do
  build=build/test-${compiler%++}
  echo "== keel tests with ${compiler}"
  CXX=$compiler cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DKEEL_BUILD_TESTS=ON -DKEEL_BUILD_EXAMPLES=ON -DKEEL_BUILD_BENCH=ON >/dev/null
  cmake --build "$build"
  ctest --test-dir "$build" -j "$jobs" --output-on-failure --timeout 900
done

echo "== in-process tests under AddressSanitizer + UndefinedBehaviorSanitizer (clang++)"
build=build/test-asan
CXX=clang++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKEEL_BUILD_TESTS=ON \
    -DKEEL_BUILD_EXAMPLES=OFF -DKEEL_SANITIZE=address,undefined >/dev/null
cmake --build "$build" --target keel_tests
# detect_leaks=0: LibTorch's process-lifetime singletons are not leaks worth a report.
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  "$build/tests/keel_tests" \
  --source-file='*test_checkpoint*,*test_serialization*,*test_loader*,*test_training_failures*,*test_trainer*,*test_sampler*,*test_reflect*,*test_hooks*'

echo "== fuzzing the checkpoint reader (60 s)"
fuzz/run.sh 60
