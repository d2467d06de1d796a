#!/usr/bin/env bash
# Wall time to compile (-O2, C++17, no precompiled header, no ccache) a TU that only includes
# LibTorch against one that instantiates a full keel Trainer, with g++ and clang++.
#   bench/compile_time.sh [repeats]
set -euo pipefail
cd "$(dirname "$0")/.."
repeats=${1:-3}
flags=(-std=c++17 -O2 -Iinclude -isystem /usr/include/torch/csrc/api/include -c -o /dev/null)

median_seconds() {  # compiler file
  local times=()
  for ((i = 0; i < repeats; ++i)); do
    local start end
    start=$(date +%s.%N)
    "$1" "${flags[@]}" "$2"
    end=$(date +%s.%N)
    times+=("$(awk -v a="$start" -v b="$end" 'BEGIN { print b - a }')")
  done
  printf '%s\n' "${times[@]}" | sort -n | sed -n "$(((repeats + 1) / 2))p"
}

echo "| compiler | <torch/torch.h> only (s) | full keel Trainer (s) | ratio |"
echo "|---|---|---|---|"
for compiler in g++ clang++; do
  base=$(median_seconds "$compiler" bench/compile_time_torch.cpp)
  full=$(median_seconds "$compiler" bench/compile_time_trainer.cpp)
  printf '| %s | %.1f | %.1f | %.2f |\n' "$compiler" "$base" "$full" "$(awk -v a="$full" -v b="$base" 'BEGIN { print a / b }')"
done
