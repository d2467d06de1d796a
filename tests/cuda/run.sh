#!/usr/bin/env bash
# Builds and runs keel's CUDA checks (tests/cuda/cuda_checks.cpp) against the LibTorch of the
# Python found first (python3 -c 'import torch'), on a machine with a CUDA GPU.
#   tests/cuda/run.sh [EXTRA_INCLUDE_DIR]   (a directory with cereal/, boost/hana/, xxhash.h
#                                            where they are not installed)
set -euo pipefail
cd "$(dirname "$0")/../.."
prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
extra=${1:-}
cmake -S tests/cuda -B build/cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" \
  ${extra:+-DKEEL_EXTRA_INCLUDE="$(realpath "$extra")"} >/dev/null
cmake --build build/cuda
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
build/cuda/cuda_checks
