#!/usr/bin/env bash
# Installs, with apt-get, the Debian packages keel needs that are not installed yet.
#   scripts/install-deps.sh            what building and training need
#   scripts/install-deps.sh --tests    also what the test suite needs
set -euo pipefail

packages=(
  cmake ninja-build g++ ccache pkg-config
  libtorch-dev libgloo-dev libboost-dev libcereal-dev libxxhash-dev
  libcli11-dev zlib1g-dev dataset-fashion-mnist
  # Debian's LibTorch calls BLAS through libblas.so.3; without an optimized BLAS that is the
  # reference implementation, about 6x slower for the example's matrix products.
  libopenblas0-pthread
)
if [[ "${1:-}" == "--tests" ]]; then
  # python3-torch: Debian's /usr/bin/python3 with torch, to prove exports load with torch.load
  # libclang-rt-dev: the sanitizer and libFuzzer runtimes for the ASan/UBSan job and the fuzzer
  packages+=(doctest-dev clang libclang-rt-dev python3-torch)
fi

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done
if ((${#missing[@]} == 0)); then
  exit 0
fi

echo "keel: installing ${missing[*]}"
sudo=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "keel: run as root or install sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
