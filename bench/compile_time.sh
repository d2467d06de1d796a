#!/usr/bin/env bash
# Compile times of keel's Trainer (-O2, C++17, no ccache), with g++ and clang++, each the median
# of REPEATS runs:
#   1. a TU that only includes LibTorch, a TU with one full Trainer (bench/compile_time_trainer.cpp),
#      and the same with a second Trainer type beside it: one with the same optimizer, scheduler
#      and format but another model and callbacks (bench/compile_time_same_policies.cpp), and one
#      with other policies throughout (bench/compile_time_two_trainers.cpp);
#   2. the two remedies for a program with many TUs: a precompiled header of LibTorch and keel
#      (bench/compile_time_pch.hpp: built once, then the Trainer TU with it), and `extern template`
#      (bench/compile_time_extern.hpp: the TU that uses the Trainer, and the one file that
#      compiles its members, bench/compile_time_instantiation.cpp). The script checks that the
#      extern-template TU leaves fit undefined and that the two link into one program.
#   bench/compile_time.sh [REPEATS] [TABLES]     (default 3; TABLES: both, trainers or remedies)
set -euo pipefail
cd "$(dirname "$0")/.."
repeats=${1:-3}
tables=${2:-both}
flags=(-std=c++17 -O2 -Iinclude -isystem /usr/include/torch/csrc/api/include)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

median_seconds() {  # COMPILER ARGS...: compiles REPEATS times, prints the median wall time
  local times=()
  for ((i = 0; i < repeats; ++i)); do
    local start end
    start=$(date +%s.%N)
    "$@"
    end=$(date +%s.%N)
    times+=("$(awk -v a="$start" -v b="$end" 'BEGIN { print b - a }')")
  done
  printf '%s\n' "${times[@]}" | sort -n | sed -n "$(((repeats + 1) / 2))p"
}
# COMPILER SOURCE...: compiles the sources in turn, REPEATS rounds (interleaved, so that the
# host's drift over minutes touches each alike), and prints each source's median wall time.
interleaved_medians() {
  local compiler=$1
  shift
  local -A times=()
  for ((i = 0; i < repeats; ++i)); do
    for source in "$@"; do
      local start end
      start=$(date +%s.%N)
      compile "$compiler" "$source"
      end=$(date +%s.%N)
      times[$source]+="$(awk -v a="$start" -v b="$end" 'BEGIN { print b - a }') "
    done
  done
  for source in "$@"; do
    printf '%s\n' ${times[$source]} | sort -n | sed -n "$(((repeats + 1) / 2))p"
  done
}
compile() {  # COMPILER SOURCE [EXTRA...]: one TU to an object in the work directory
  local compiler=$1 source=$2
  shift 2
  "$compiler" "${flags[@]}" "$@" -c "$source" -o "$work/$(basename "$source" .cpp).o"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

declare -A trainer
if [[ $tables != remedies ]]; then
echo "| compiler | <torch/torch.h> only (s) | one Trainer (s) | ratio | a second type, same policies (s) | a second type, other policies (s) |"
echo "|---|---|---|---|---|---|"
for compiler in g++ clang++; do
  interleaved_medians "$compiler" bench/compile_time_torch.cpp bench/compile_time_trainer.cpp \
    bench/compile_time_same_policies.cpp bench/compile_time_two_trainers.cpp >"$work/medians"
  { read -r base; read -r one; read -r same; read -r other; } <"$work/medians"
  trainer[$compiler]=$one
  printf '| %s | %.1f | %.1f | %s | +%.1f | +%.1f |\n' "$compiler" "$base" "$one" "$(ratio "$one" "$base")" \
    "$(awk -v a="$same" -v b="$one" 'BEGIN { print a - b }')" "$(awk -v a="$other" -v b="$one" 'BEGIN { print a - b }')"
done
fi
[[ $tables == trainers ]] && exit 0

echo
echo "| compiler | one Trainer (s) | precompiled header, built once (s) | the Trainer TU with it (s) | extern template: the TU using the Trainer (s) | the one TU compiling its members (s) |"
echo "|---|---|---|---|---|---|"
for compiler in g++ clang++; do
  mkdir -p "$work/pch-$compiler"
  cp bench/compile_time_pch.hpp "$work/pch-$compiler/"
  if [[ $compiler == g++ ]]; then
    pch_out=$work/pch-$compiler/compile_time_pch.hpp.gch
    use_pch=(-include "$work/pch-$compiler/compile_time_pch.hpp" -Winvalid-pch)
  else
    pch_out=$work/pch-$compiler/compile_time_pch.pch
    use_pch=(-include-pch "$pch_out")
  fi
  pch_build=$(median_seconds "$compiler" "${flags[@]}" -x c++-header bench/compile_time_pch.hpp -o "$pch_out")
  with_pch=$(median_seconds compile "$compiler" bench/compile_time_trainer.cpp "${use_pch[@]}")
  user=$(median_seconds compile "$compiler" bench/compile_time_extern_user.cpp)
  instantiation=$(median_seconds compile "$compiler" bench/compile_time_instantiation.cpp)
  # The extern-template TU must not have compiled fit, and the two objects must make a program.
  [[ -n ${trainer[$compiler]:-} ]] || trainer[$compiler]=$(median_seconds compile "$compiler" bench/compile_time_trainer.cpp)
  nm -C "$work/compile_time_extern_user.o" >"$work/symbols.txt"  # (grep -q on a pipe: SIGPIPE under pipefail)
  grep -q ' U .*::fit<Data, Data>' "$work/symbols.txt" ||
    { echo "bench/compile_time.sh: the extern-template TU ($compiler) compiled fit itself" >&2; exit 1; }
  "$compiler" "$work/compile_time_extern_user.o" "$work/compile_time_instantiation.o" -o "$work/extern_program" \
    -L/usr/lib/x86_64-linux-gnu -ltorch -ltorch_cpu -lc10
  "$work/extern_program"
  printf '| %s | %.1f | %.1f | %.1f | %.1f | %.1f |\n' "$compiler" "${trainer[$compiler]}" "$pch_build" "$with_pch" "$user" "$instantiation"
done
