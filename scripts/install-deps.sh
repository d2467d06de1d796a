#!/usr/bin/env bash
# Installs, with apt-get, the Debian packages keel needs that are not installed yet.
#   scripts/install-deps.sh                      what building and training need
#   scripts/install-deps.sh --tests              also what the test suite needs, and with npm the
#                                                TensorBoard reader's packages (tests/tensorboard)
#   scripts/install-deps.sh --tests --no-node    the test suite without Node.js (the LibTorch 2.x
#                                                root: its build leaves the reader's test out)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
node=1
[[ "${2:-}" == "--no-node" ]] && node=0

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
  # dpkg-dev, file: CPack's Debian package (tests/consumers), which lists keel-ckpt's libraries
  packages+=(doctest-dev clang libclang-rt-dev python3-torch dpkg-dev file)
  # Node.js and npm: tests/tensorboard/read_events.mjs reads TensorBoard event files without keel.
  # (A Node.js from elsewhere, with its own npm, is used as it is.)
  if ((node)) && ! command -v npm >/dev/null; then
    packages+=(nodejs npm)
  fi
fi

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done
if ((${#missing[@]} > 0)); then
  echo "keel: installing ${missing[*]}"
  sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "keel: run as root or install sudo to install: ${missing[*]}" >&2; exit 1; }
    sudo=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -q
  "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The reader's packages, at the versions of tests/tensorboard/package-lock.json (again when the
# lock file is newer than what npm installed).
reader=$repo/tests/tensorboard
if [[ "${1:-}" == "--tests" ]] && ((node)) &&
   [[ ! -f "$reader/node_modules/.package-lock.json" || "$reader/package-lock.json" -nt "$reader/node_modules/.package-lock.json" ]]; then
  echo "keel: installing the TensorBoard reader's npm packages (tests/tensorboard)"
  npm ci --prefix "$reader" --no-audit --no-fund --loglevel=error
fi
