#!/usr/bin/env bash
# What the plot-*.sh scripts need: keel's dependencies, gnuplot, and the example built in
# build/release. Sourced by them (it also sets $work, a scratch directory removed at exit
# unless KEEP_WORK is set).
scripts/install-deps.sh
if ! command -v gnuplot >/dev/null; then
  sudo=(); [[ $(id -u) -ne 0 ]] && sudo=(sudo)
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends gnuplot-nox
fi
cmake -S . -B build/release -G Ninja -DCMAKE_BUILD_TYPE=Release -DKEEL_BUILD_TESTS=OFF >/dev/null
cmake --build build/release --target fashion_mnist

work=$(mktemp -d)
[[ -n "${KEEP_WORK:-}" ]] && echo "keeping $work"
trap '[[ -n "${KEEP_WORK:-}" ]] || rm -rf "$work"' EXIT
