#!/usr/bin/env bash
# keel's training step against a hand-written LibTorch loop on a tiny model, where the
# framework's own cost shows (bench/tiny_step.cpp). Whole processes, pinned to one core, one
# LibTorch and one OpenBLAS thread, the two alternating; prints the medians as a Markdown row.
#   bench/tiny_step.sh [runs] [steps]        (defaults: 9 runs of 20000 steps each)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-9}
steps=${2:-20000}
bench=${KEEL_TINY_BENCH:-build/bench/bench/bench_tiny_step}
if [[ -z "${KEEL_TINY_BENCH:-}" ]]; then
  scripts/install-deps.sh
  cmake -S . -B build/bench -G Ninja -DCMAKE_BUILD_TYPE=Release -DKEEL_BUILD_BENCH=ON \
        -DKEEL_BUILD_TESTS=OFF -DKEEL_BUILD_EXAMPLES=OFF >/dev/null
  cmake --build build/bench --target bench_tiny_step >/dev/null
fi
core=$(($(nproc) - 1))
one() {  # mode -> microseconds per step
  OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 taskset -c "$core" "$bench" --mode "$1" --steps "$steps" |
    sed -n 's/^us_per_step=//p'
}
hand=() keel=()
for ((r = 0; r < runs; ++r)); do
  if ((r % 2 == 0)); then hand+=("$(one hand)"); keel+=("$(one keel)")
  else keel+=("$(one keel)"); hand+=("$(one hand)"); fi
done
median() { printf '%s\n' "$@" | sort -g | sed -n "$((($# + 1) / 2))p"; }
h=$(median "${hand[@]}")
k=$(median "${keel[@]}")
echo "| model | batch | threads | hand-written LibTorch us/step | keel us/step | ratio | runs x steps |"
echo "|---|---|---|---|---|---|---|"
awk -v h="$h" -v k="$k" -v r="$runs" -v s="$steps" \
  'BEGIN { printf "| tiny MLP 32-64-1 | 16 | 1 | %.1f | %.1f | %.3f | %d x %d |\n", h, k, k / h, r, s }'
echo "hand: ${hand[*]}" >&2
echo "keel: ${keel[*]}" >&2
echo
echo "What keel adds per step, each piece timed alone (microseconds per call):"
OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 taskset -c "$core" "$bench" --mode parts --steps "$steps" | sed 's/^/  /'
