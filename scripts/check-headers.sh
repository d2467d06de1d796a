#!/usr/bin/env bash
# Every header under include/keel compiles on its own: one translation unit per header that
# includes only that header, checked with -fsyntax-only, as many at once as there are cores.
# A header that relies on an include it does not make fails here.
#   scripts/check-headers.sh [compiler]     (default clang++)
#
# Parsing <torch/types.h> (ATen) is most of each check: 5.8 s of a header's 6-10 s here. So it
# is parsed once, into a precompiled header, and given first to each header whose own include
# tree (its preprocessor dependencies, -M) reaches <torch/types.h> anyway. That changes only
# the order in which the same declarations are seen; a header that does not reach it on its
# own is checked without it, so a missing include still fails.
set -euo pipefail
cd "$(dirname "$0")/.."
export KEEL_HEADER_COMPILER=${1:-clang++}
# (USE_C10D_GLOO, USE_DISTRIBUTED: what LibTorch's CMake target defines for its users)
export KEEL_HEADER_FLAGS="-std=c++17 -Wall -Wextra -Iinclude -isystem /usr/include/torch/csrc/api/include
                          -DUSE_C10D_GLOO -DUSE_DISTRIBUTED"
KEEL_HEADER_PCH_DIR=$(mktemp -d)
export KEEL_HEADER_PCH_DIR
trap 'rm -rf "$KEEL_HEADER_PCH_DIR"' EXIT
# A compiler without clang's -include-pch (g++ wants a .gch beside a header) checks plainly.
if [[ $("$KEEL_HEADER_COMPILER" --version) == *clang* ]]; then
  # shellcheck disable=SC2086
  echo '#include <torch/types.h>' |
    "$KEEL_HEADER_COMPILER" $KEEL_HEADER_FLAGS -x c++-header - -o "$KEEL_HEADER_PCH_DIR/types.pch"
fi
check_one() {
  local out pch=()
  # shellcheck disable=SC2086
  if [[ -f $KEEL_HEADER_PCH_DIR/types.pch ]] &&
     echo "#include <$1>" | "$KEEL_HEADER_COMPILER" $KEEL_HEADER_FLAGS -M -x c++ - 2>/dev/null |
       grep -q '/torch/types\.h\b'; then
    pch=(-include-pch "$KEEL_HEADER_PCH_DIR/types.pch")
  fi
  # shellcheck disable=SC2086
  if ! out=$(echo "#include <$1>" |
             "$KEEL_HEADER_COMPILER" $KEEL_HEADER_FLAGS -fsyntax-only "${pch[@]}" -x c++ - 2>&1); then
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
