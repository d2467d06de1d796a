#!/usr/bin/env bash
# Every header under include/keel compiles on its own: one translation unit per header that
# includes only that header, checked with -fsyntax-only, as many at once as there are cores.
# A header that relies on an include it does not make fails here.
#   scripts/check-headers.sh [compiler]     (default clang++)
set -euo pipefail
cd "$(dirname "$0")/.."
export KEEL_HEADER_COMPILER=${1:-clang++}
check_one() {
  local out
  # (USE_C10D_GLOO, USE_DISTRIBUTED: what LibTorch's CMake target defines for its users)
  if ! out=$(echo "#include <$1>" | "$KEEL_HEADER_COMPILER" -std=c++17 -fsyntax-only -Wall -Wextra -Iinclude \
             -isystem /usr/include/torch/csrc/api/include -DUSE_C10D_GLOO -DUSE_DISTRIBUTED -x c++ - 2>&1); then
    printf 'FAILED: %s\n%s\n' "$1" "$out"
    return 1
  fi
}
export -f check_one
headers=$(cd include && find keel -name '*.hpp' | sort)
count=$(echo "$headers" | wc -l)
failed=$(echo "$headers" | xargs -P "$(nproc)" -I{} bash -c 'check_one {} || echo "::failed::"' | tee /dev/stderr |
         grep -c '^::failed::$' || true)
echo "$((count - failed)) passed, ${failed} failed"
((failed == 0))
