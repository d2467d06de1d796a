#!/usr/bin/env bash
# The README's first command: installs what is missing, builds the Fashion-MNIST example and
# trains it with checkpoints under runs/fashion-mnist. Run it again and it resumes from the
# newest valid checkpoint (also after a crash or kill -9). Extra flags go to the example:
#   scripts/train-fashion-mnist.sh --epochs 5
# It also builds keel-run (build/release/tools/keel-run), to start the example as several
# data-parallel processes (README, "Data-parallel training").
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cmake -S . -B build/release -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DKEEL_BUILD_TESTS=OFF -DKEEL_BUILD_EXAMPLES=ON >/dev/null
cmake --build build/release --target fashion_mnist keel_run
# The example defaults to --ckpt-dir runs/fashion-mnist/checkpoints and --resume auto.
exec build/release/examples/fashion_mnist "$@"
