#!/usr/bin/env bash
# Data-parallel throughput: the Fashion-MNIST example trained by one process (batch 2B, T
# threads) and by two ranks under keel-run (batch B each, T/2 threads each: the same samples per
# step, the same cores), the ranks' gradient all-reduces overlapped with the backward pass
# (--dist-overlap on, buckets of --dist-bucket-kb) and not, taking turns at going first.
# samples/s is the job's, as rank 0's metrics.csv logs it (every rank's samples); each round's
# figure is the median of its rows after the first, and the table holds the median over the rounds.
#   bench/data_parallel.sh [rounds] [models] [steps] [batch per rank] [threads in all] [bucket kB]
#       (defaults: 3 rounds; models "mlp cnn"; 300 steps; batch 32; 2 threads; 1024 kB, the default)
# Builds the example and keel-run in build/bench (Release) unless KEEL_EXAMPLE and KEEL_RUN name them.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
models=${2:-"mlp cnn"}
steps=${3:-300}
batch=${4:-32}
threads=${5:-2}
bucket_kb=${6:-1024}
dir=${KEEL_BENCH_DIR:-build/bench/data_parallel}
example=${KEEL_EXAMPLE:-build/bench/examples/fashion_mnist}
launcher=${KEEL_RUN:-build/bench/tools/keel-run}
if [[ -z "${KEEL_EXAMPLE:-}" || -z "${KEEL_RUN:-}" ]]; then
  scripts/install-deps.sh
  cmake -S . -B build/bench -G Ninja -DCMAKE_BUILD_TYPE=Release -DKEEL_BUILD_BENCH=ON \
        -DKEEL_BUILD_TESTS=OFF -DKEEL_BUILD_EXAMPLES=ON >/dev/null
  cmake --build build/bench --target fashion_mnist keel_run >/dev/null
fi

median() { printf '%s\n' "$@" | sort -g | sed -n "$((($# + 1) / 2))p"; }
# The median samples/s of a metrics.csv's training rows after the first (its clock starts at fit).
rate() { awk -F, '$3 == "train" { if (n++) print $6 }' "$1" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
run() {  # run RANKS BATCH THREADS OVERLAP: one run (RANKS processes of BATCH samples and THREADS threads each)
  local ranks=$1 per_rank=$2 each=$3 overlap=$4 name=ranks-$1-$4 launch=()
  ((ranks > 1)) && launch=("$launcher" --nproc-per-node "$ranks")
  rm -rf "${dir:?}/$name"
  "${launch[@]}" "$example" --model "$model" --max-steps "$steps" --epochs 1 --save-every-steps 0 --log-every 20 \
    --validation-size 0 --progress off --threads "$each" --batch-size "$per_rank" \
    --dist-overlap "$overlap" --dist-bucket-kb "$bucket_kb" \
    --ckpt-dir "$dir/$name/ckpt" --log-dir "$dir/$name/logs" >/dev/null
  rate "$dir/$name/logs/metrics.csv"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b / a }'; }

echo "| model | samples per step | one process: samples/s | two ranks, overlap: samples/s | two ranks, no overlap: samples/s | overlap / one | no overlap / one |"
echo "|---|---|---|---|---|---|---|"
for model in $models; do
  one=() on=() off=()
  for ((r = 0; r < rounds; ++r)); do
    for ((k = 0; k < 3; ++k)); do  # (round r starts with configuration r % 3)
      case $(((r + k) % 3)) in
        0) one+=("$(run 1 $((2 * batch)) "$threads" on)") ;;
        1) on+=("$(run 2 "$batch" $((threads / 2)) on)") ;;
        2) off+=("$(run 2 "$batch" $((threads / 2)) off)") ;;
      esac
    done
  done
  echo "  $model one: ${one[*]}; overlap: ${on[*]}; no overlap: ${off[*]}" >&2
  a=$(printf '%.0f' "$(median "${one[@]}")")
  b=$(printf '%.0f' "$(median "${on[@]}")")
  c=$(printf '%.0f' "$(median "${off[@]}")")
  echo "| $model | $((2 * batch)) | $a | $b | $c | $(ratio "$a" "$b") | $(ratio "$a" "$c") |"
done
