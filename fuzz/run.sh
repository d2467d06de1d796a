#!/usr/bin/env bash
# Builds the checkpoint fuzz target with clang++ (libFuzzer + ASan + UBSan), writes a seed
# corpus of real checkpoints, and fuzzes for the given number of seconds (default 60).
#   fuzz/run.sh [seconds] [extra libFuzzer flags...]
# Findings land in build/fuzz/findings/ (crash-*, leak-*, timeout-*); the corpus grows in
# build/fuzz/corpus/ and is reused by the next run.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
scripts/install-deps.sh --tests
CXX=clang++ cmake -S . -B build/fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKEEL_BUILD_FUZZ=ON \
      -DKEEL_BUILD_TESTS=OFF -DKEEL_BUILD_EXAMPLES=OFF >/dev/null
cmake --build build/fuzz --target fuzz_checkpoint fuzz_checkpoint_seeds
mkdir -p build/fuzz/corpus build/fuzz/findings
build/fuzz/fuzz/fuzz_checkpoint_seeds build/fuzz/corpus
# detect_leaks=0: LibTorch's process-lifetime singletons are not leaks worth a report.
ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=0 \
  build/fuzz/fuzz/fuzz_checkpoint -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=20 \
  -artifact_prefix=build/fuzz/findings/ -print_final_stats=1 "$@" build/fuzz/corpus
