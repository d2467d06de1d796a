#!/usr/bin/env bash
# Checkpoint save and load speed: keel against LibTorch's archive of the same tensors and
# against dd of the same size (bench/checkpoint_io.cpp), for models of about 1 M, 50 M and
# 200 M parameters with AdamW's state. Each round is one process per model (keel and LibTorch
# alternate who goes first) followed by dd; the table holds the medians over the rounds.
#   bench/checkpoint_io.sh [rounds] [sizes] [tables]
#       (defaults: 5 rounds; sizes "1M 50M 200M"; tables "io async")
# Then the background-save table ("async"): bench_checkpoint_io --mode async, one process per round.
# The files go to $KEEL_BENCH_DIR (default: build/bench/ckpt, on the disk the repo is on).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
sizes=${2:-"1M 50M 200M"}
tables=${3:-"io async"}
dir=${KEEL_BENCH_DIR:-build/bench/ckpt}
bench=${KEEL_CKPT_BENCH:-build/bench/bench/bench_checkpoint_io}
if [[ -z "${KEEL_CKPT_BENCH:-}" ]]; then
  scripts/install-deps.sh
  cmake -S . -B build/bench -G Ninja -DCMAKE_BUILD_TYPE=Release -DKEEL_BUILD_BENCH=ON \
        -DKEEL_BUILD_TESTS=OFF -DKEEL_BUILD_EXAMPLES=OFF >/dev/null
  cmake --build build/bench --target bench_checkpoint_io >/dev/null
fi
mkdir -p "$dir"

shape() {  # size -> "width layers"
  case $1 in
    1M) echo "512 4" ;;
    50M) echo "3200 5" ;;
    200M) echo "6400 5" ;;
    *) echo "unknown size $1 (1M, 50M or 200M)" >&2; exit 2 ;;
  esac
}
median() { printf '%s\n' "$@" | sort -g | sed -n "$((($# + 1) / 2))p"; }
# dd's own timing of a run: "<bytes> bytes (...) copied, <seconds> s, ..." -> MB/s
dd_rate() { sed -n 's/^\([0-9]*\) bytes.* copied, \([0-9.e-]*\) s.*/\1 \2/p' | awk '{ printf "%.1f\n", $1 / $2 / 1e6 }'; }
# One size's figures over the rounds: all[key] holds every round's value, space-separated.
collect() { while IFS== read -r key value; do all[$key]+="$value "; done <<<"$1"; }  # key=value lines
m() { median ${all[$1]}; }
spread() { for key; do echo "  $size $key: ${all[$key]}" >&2; done; }  # every round's value, to stderr

if [[ " $tables " == *" io "* ]]; then
  echo "| model | checkpoint MB | keel save MB/s | LibTorch save MB/s | dd write+fsync MB/s | keel load MB/s | LibTorch load MB/s | dd read MB/s | keel load peak extra MB | LibTorch load peak extra MB | largest tensor MB |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  for size in $sizes; do
    read -r width layers < <(shape "$size")
    declare -A all=()
    for ((r = 0; r < rounds; ++r)); do
      order=keel-first
      ((r % 2)) && order=torch-first
      out=$("$bench" --width "$width" --layers "$layers" --dir "$dir" --order "$order")
      collect "$out"
      bytes=$(sed -n 's/^keel_file_bytes=//p' <<<"$out" | head -1)
      blocks=$(((bytes + 4194303) / 4194304))
      all[dd_write]+="$(dd if=/dev/zero of="$dir/dd.bin" bs=4M count="$blocks" conv=fsync 2>&1 | dd_rate) "
      all[dd_read]+="$(dd if="$dir/dd.bin" of=/dev/null bs=4M 2>&1 | dd_rate) "
      rm -f "$dir/dd.bin"
    done
    mb=$(awk -v b="$(m keel_file_bytes)" 'BEGIN { printf "%.1f", b / 1e6 }')
    rate() { awk -v b="$(m "$2")" -v s="$(m "$1")" 'BEGIN { printf "%.0f", b / s / 1e6 }'; }  # seconds key, bytes key
    megabytes() { awk -v b="$(m "$1")" 'BEGIN { printf "%.0f", b / 1e6 }'; }
    params=$(m parameters)
    echo "| $size ($params parameters, AdamW) | $mb | $(rate keel_save_s keel_file_bytes) | $(rate torch_save_s torch_file_bytes) | $(m dd_write) |" \
         "$(rate keel_load_s keel_file_bytes) | $(rate torch_load_s torch_file_bytes) | $(m dd_read) | $(megabytes keel_load_peak_extra_bytes) |" \
         "$(megabytes torch_load_peak_extra_bytes) | $(megabytes largest_tensor_bytes) |"
    spread keel_save_s torch_save_s dd_write keel_load_s torch_load_s dd_read
    unset all
  done
fi

if [[ " $tables " == *" async "* ]]; then
  echo
  echo "Background saves (async_save): a fit of 13 steps of batch 256 saving every 2 steps, three ways"
  echo "(no checkpoints, synchronous saves, async_save; the same final state_digest is checked). The fit"
  echo "without checkpoints copies the state into kept tensors where the others save; the async_save fit"
  echo "takes the same copy right before each save. Seconds."
  echo
  echo "| model | plain copy between steps | the same copy right before each async save | the same copy back to back | save holds training: synchronous | save holds training: async_save | async / copy right before it | step, no saves | step, async_save (write in flight) |"
  echo "|---|---|---|---|---|---|---|---|---|"
  for size in $sizes; do
    read -r width layers < <(shape "$size")
    declare -A all=()
    for ((r = 0; r < rounds; ++r)); do
      collect "$("$bench" --mode async --width "$width" --layers "$layers" --dir "$dir")"
    done
    ratio=$(awk -v a="$(m async_held_s)" -v c="$(m paired_copy_s)" 'BEGIN { printf "%.2f", a / c }')
    echo "| $size | $(m fit_copy_s) | $(m paired_copy_s) | $(m state_copy_s) | $(m sync_held_s) | $(m async_held_s) | $ratio | $(m no_saves_step_s) | $(m async_step_s) |"
    spread fit_copy_s paired_copy_s state_copy_s sync_held_s async_held_s no_saves_step_s async_step_s \
           async_held_each async_collect_each paired_copy_each
    unset all
  done
fi
