#!/usr/bin/env bash
# Builds the benchmarks in Release and runs them; the tables in bench/README.md come from here.
#   bench/run.sh [--steps N] [--repeats R]   (the step benchmark's options)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build/bench -G Ninja -DCMAKE_BUILD_TYPE=Release -DKEEL_BUILD_BENCH=ON \
      -DKEEL_BUILD_TESTS=OFF -DKEEL_BUILD_EXAMPLES=OFF >/dev/null
cmake --build build/bench --target bench_step_overhead bench_loader_throughput
bench=build/bench/bench/bench_step_overhead

echo "## Training step: keel against a hand-written LibTorch loop"
echo
echo "One thread everywhere (LibTorch intra-op and OpenBLAS): the quiet measure of keel's overhead."
echo
OPENBLAS_NUM_THREADS=1 "$bench" --threads 1 "$@"
echo
echo "Two LibTorch intra-op threads, OpenBLAS at its default (its own threads compete with"
echo "LibTorch's OpenMP threads on 2 cores, so these timings vary from run to run)."
echo
"$bench" --threads 2 "$@"
echo
echo "## Data loading: keel's BatchLoader against LibTorch's make_data_loader"
echo
echo "In-memory Fashion-MNIST (60000 images), shuffled, batches of 64; each figure the median of 5 one-epoch runs."
echo
build/bench/bench/bench_loader_throughput --epochs 1 --repeats 5
