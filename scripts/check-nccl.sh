#!/usr/bin/env bash
# keel/distributed's NCCL path (what a CUDA build of LibTorch compiles) compiles: the
# Fashion-MNIST example, whose Trainer is data-parallel, checked with -fsyntax-only under the
# definitions LibTorch's CMake target gives a CUDA build (USE_C10D_NCCL, USE_CUDA) against this
# machine's CUDA headers (cuda_runtime_api.h, and NCCL's nccl.h: here the CUDA toolkit's
# include directory has both). Nothing runs: a
# CPU-only LibTorch has no NCCL library to link, and a GPU is lent only now and then.
#   scripts/check-nccl.sh COMPILER CUDA_INCLUDE_DIR [TORCH_INCLUDE_DIR...]
#       (LibTorch's include directories: default Debian's, /usr/include and its C++ API's)
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: scripts/check-nccl.sh COMPILER CUDA_INCLUDE_DIR [TORCH_INCLUDE_DIR...]"
compiler=${1:?$usage}
cuda=${2:?$usage}
shift 2
torch=("$@")
((${#torch[@]})) || torch=(/usr/include /usr/include/torch/csrc/api/include)
stub=$(mktemp -d)
trap 'rm -rf "$stub"' EXIT
includes=()
generated=no
for dir in "${torch[@]}"; do
  # (not the compiler's own directories again: -isystem /usr/include breaks libstdc++'s #include_next)
  [[ $dir == /usr/include || $dir == /usr/local/include ]] || includes+=(-isystem "$dir")
  [[ -f $dir/c10/cuda/impl/cuda_cmake_macros.h ]] && generated=yes
done
# A CPU-only LibTorch installs c10's CUDA headers but not the one its CUDA build generates.
if [[ $generated == no ]]; then
  mkdir -p "$stub/c10/cuda/impl"
  printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' >"$stub/c10/cuda/impl/cuda_cmake_macros.h"
fi
printf '%s\n' '#include "examples/fashion_mnist/main.cpp"' \
  'static_assert(keel::dist::detail::has_nccl, "the NCCL path was not compiled: USE_C10D_NCCL is not defined, or nccl.h was not found");' |
  "$compiler" -std=c++17 -fsyntax-only -Wall -Wextra -Werror -DUSE_C10D_NCCL -DUSE_CUDA -DUSE_C10D_GLOO \
    -DUSE_DISTRIBUTED -I. -Iinclude -I"$stub" -isystem "$cuda" "${includes[@]}" -x c++ -
echo "the NCCL path compiles ($compiler, CUDA headers from $cuda)"
