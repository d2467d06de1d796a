#!/usr/bin/env bash
# Every header under include/keel compiles on its own: one translation unit per header that
# includes only that header, checked with -fsyntax-only. A header that relies on an include
# it does not make fails here.
#   scripts/check-headers.sh [compiler]     (default clang++)
set -euo pipefail
cd "$(dirname "$0")/.."
compiler=${1:-clang++}
torch_api=/usr/include/torch/csrc/api/include
failed=0
count=0
for header in $(cd include && find keel -name '*.hpp' | sort); do
  count=$((count + 1))
  if ! echo "#include <${header}>" | "$compiler" -std=c++17 -fsyntax-only -Wall -Wextra -Iinclude \
       -isystem "$torch_api" -x c++ - 2>/tmp/keel-header-check.$$; then
    echo "FAILED: ${header}"
    cat /tmp/keel-header-check.$$
    failed=$((failed + 1))
  fi
done
rm -f /tmp/keel-header-check.$$
echo "$((count - failed)) passed, ${failed} failed"
((failed == 0))
