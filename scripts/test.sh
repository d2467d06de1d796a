#!/usr/bin/env bash
# The README's second command: installs what is missing, then builds and runs the whole test
# suite with g++ and with clang++ (keel must build with both); the benchmarks are built too, so
# that they keep compiling. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh --tests
jobs=$(nproc)

for compiler in g++ clang++; do
  build=build/test-${compiler%++}
  echo "== keel tests with ${compiler}"
  CXX=$compiler cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DKEEL_BUILD_TESTS=ON -DKEEL_BUILD_EXAMPLES=ON -DKEEL_BUILD_BENCH=ON >/dev/null
  cmake --build "$build"
  ctest --test-dir "$build" -j "$jobs" --output-on-failure --timeout 900
done
