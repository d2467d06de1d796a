#!/usr/bin/env bash
# Builds the benchmarks in Release and runs them; the tables in bench/README.md come from here.
#   bench/run.sh [--steps N] [--threads T] [--repeats R]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build/bench -G Ninja -DCMAKE_BUILD_TYPE=Release -DKEEL_BUILD_BENCH=ON \
      -DKEEL_BUILD_TESTS=OFF -DKEEL_BUILD_EXAMPLES=OFF >/dev/null
cmake --build build/bench --target bench_step_overhead
echo "## Training step: keel against a hand-written LibTorch loop"
echo
build/bench/bench/bench_step_overhead "$@"
