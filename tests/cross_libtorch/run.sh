#!/usr/bin/env bash
# A checkpoint written with one LibTorch loads with the other, both ways, with today's keel:
# LibTorch 1.13 on this machine, LibTorch 2.x in the trixie root (scripts/libtorch2-root.sh).
#
#   tests/cross_libtorch/run.sh HOST_BUILD ROOT_BUILD
#
# HOST_BUILD and ROOT_BUILD are build trees with resume_driver and keel-ckpt, made on the host
# and inside the root. Each side writes a checkpoint, the other side loads it and saves it again
# at once, and keel-ckpt diff must find the very same state (every section byte, every tensor
# bit). Then each side trains on from the other's checkpoint. The files written by released
# keel versions under tests/fixtures/ are checked by the test suite itself, on both sides.
set -euo pipefail
cd "$(dirname "$0")/../.."
host=$1
inner=$2
for build in "$host" "$inner"; do
  for program in tests/resume_driver tools/keel-ckpt; do
    [[ -x "$build/$program" ]] || { echo "cross_libtorch: $build/$program is missing; build it first" >&2; exit 2; }
  done
done

work=$(pwd)/build/cross-libtorch
rm -rf "$work"
mkdir -p "$work"
in_root() { scripts/libtorch2-root.sh "$@"; }
# expect TEXT COMMAND...: runs COMMAND, shows its keel messages, fails unless TEXT is in them.
expect() {
  local text=$1 out
  shift
  out=$("$@" 2>&1) || { echo "$out" >&2; echo "cross_libtorch: failed: $*" >&2; exit 1; }
  grep -E "^keel|state_digest" <<<"$out" || true
  grep -qF -- "$text" <<<"$out" || { echo "cross_libtorch: '$text' missing from the output of: $*" >&2; exit 1; }
}
driver_args=(--variant adamw_cosine --epochs 10)

echo "-- LibTorch 1.13 writes, LibTorch 2.x reads"
"$host/tests/resume_driver" "${driver_args[@]}" --max-steps 7 --ckpt-dir "$work/a" --save-to "$work/a.ckpt" >/dev/null
# The resume says that it runs on another LibTorch version, so no longer bitwise.
expect "torch_version '1.13.0' (here '2.6.0')" in_root "$inner/tests/resume_driver" "${driver_args[@]}" --max-steps 7 --ckpt-dir "$work/b" \
  --resume "$work/a.ckpt" --save-to "$work/a-reloaded.ckpt"
"$host/tools/keel-ckpt" diff "$work/a.ckpt" "$work/a-reloaded.ckpt"

echo "-- LibTorch 2.x writes, LibTorch 1.13 reads"
in_root "$inner/tests/resume_driver" "${driver_args[@]}" --max-steps 7 --ckpt-dir "$work/c" --save-to "$work/c.ckpt" >/dev/null
expect "torch_version '2.6.0' (here '1.13.0')" "$host/tests/resume_driver" "${driver_args[@]}" --max-steps 7 --ckpt-dir "$work/d" \
  --resume "$work/c.ckpt" --save-to "$work/c-reloaded.ckpt"
in_root "$inner/tools/keel-ckpt" diff "$work/c.ckpt" "$work/c-reloaded.ckpt"

echo "-- each trains on from the other's checkpoint"
expect "resumed from $work/a.ckpt (epoch 0, step 7)" in_root "$inner/tests/resume_driver" "${driver_args[@]}" --max-steps 14 --ckpt-dir "$work/e" \
  --resume "$work/a.ckpt" --save-to "$work/e.ckpt"
expect "resumed from $work/e.ckpt (epoch 1, step 14)" "$host/tests/resume_driver" "${driver_args[@]}" --max-steps 21 --ckpt-dir "$work/f" \
  --resume "$work/e.ckpt"
echo "cross_libtorch: ok"
