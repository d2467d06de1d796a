#!/usr/bin/env bash
# Draws docs/extend-lr.png: the learning rate of a 300-step run of the example (MLP) and of its
# extension to 600 steps with each schedule extension (--resume-changed auto --extend MODE),
# read from the runs' metrics.csv logs. Takes about a minute on 2 cores.
#   scripts/plot-extend.sh [output.png]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/extend-lr.png}

source scripts/plot-setup.sh
run() {  # directory max-steps extra-flags...
  local dir=$1 steps=$2
  shift 2
  build/release/examples/fashion_mnist --model mlp --epochs 1 --max-steps "$steps" --save-every-steps 100 \
    --log-every 5 --threads 2 --progress off --ckpt-dir "$dir/ckpt" --log-dir "$dir/logs" "$@"
}

echo "a 300-step run"
run "$work/base" 300 >/dev/null
modes=(rescale append_cosine "append_constant(0.3)")
for mode in "${modes[@]}"; do
  echo "extended to 600 steps: --resume-changed auto --extend $mode"
  cp -r "$work/base" "$work/$mode"
  run "$work/$mode" 600 --resume-changed auto --extend "$mode" | grep -E 'forked|->' || true
done

mkdir -p "$(dirname "$out")"
train_lr() { echo "\"$1/logs/metrics.csv\" every ::1 using 1:(strcol(3) eq \"train\" && \$1 $2 ? \$5 : NaN)"; }
gnuplot <<PLOT
set terminal pngcairo size 900,500 font ",11" noenhanced
set output "$out"
set datafile separator ","
set title "Fashion-MNIST MLP: a 300-step run (CosineWarmup) extended to 600 steps, one line per --extend"
set xlabel "optimizer step"
set ylabel "learning rate"
set key below
set grid
set arrow from 300, graph 0 to 300, graph 1 nohead dashtype 3 lc rgb "#888888"
set label "fork: --resume-changed auto --extend ..." at 300, graph 0.95 offset 0.5,0
plot $(train_lr "$work/base" "<= 300") with lines lw 4 lc rgb "#444444" title "the 300-step run", \
     $(train_lr "$work/rescale" "> 300") with lines lw 2 lc rgb "#1f77b4" title "rescale (default)", \
     $(train_lr "$work/append_cosine" "> 300") with lines lw 2 lc rgb "#d62728" title "append_cosine", \
     $(train_lr "$work/append_constant(0.3)" "> 300") with lines lw 2 lc rgb "#2ca02c" title "append_constant(0.3)"
PLOT
echo "wrote $out"
