#!/usr/bin/env bash
# Draws docs/resume-loss.png: the training loss of an uninterrupted run and of a run killed with
# SIGKILL twice and resumed, overlaid, from their metrics.csv logs. The curves coincide because
# the resumed run is bitwise identical. Takes a few minutes on 2 cores.
#   scripts/plot-resume.sh [output.png]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/resume-loss.png}

source scripts/plot-setup.sh
run() {  # directory; exec, so that a background run's $! is the trainer itself
  exec build/release/examples/fashion_mnist --model cnn --max-steps 600 --epochs 1 --save-every-steps 100 \
    --log-every 10 --threads 2 --progress off --ckpt-dir "$1/ckpt" --log-dir "$1/logs" --resume auto
}

echo "uninterrupted run"
(run "$work/whole") >/dev/null

kills=()
for step in 200 400; do
  echo "run killed with SIGKILL once a checkpoint at step >= $step exists"
  (run "$work/killed") >/dev/null 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    newest=$(ls "$work/killed/ckpt" 2>/dev/null | sed -n 's/^step-0*\([0-9][0-9]*\)\.ckpt$/\1/p' | sort -n | tail -1 || true)
    if [[ -n "$newest" && "$newest" -ge "$step" ]]; then
      kill -9 "$pid"
      break
    fi
    sleep 0.05
  done
  wait "$pid" 2>/dev/null || true
  kills+=("$(tail -n 1 "$work/killed/logs/metrics.csv" | cut -d, -f1)")
done
echo "resumed to the end"
(run "$work/killed") | grep -E 'resumed|state_digest' || true
(run "$work/whole") | grep state_digest

mkdir -p "$(dirname "$out")"
gnuplot <<PLOT
set terminal pngcairo size 900,500 font ",11"
set output "$out"
set datafile separator ","
set title "Fashion-MNIST CNN: training loss, uninterrupted and killed twice (kill -9) then resumed"
set xlabel "optimizer step"
set ylabel "training loss (mean of the step's batch)"
set key top right
set grid
set arrow from ${kills[0]}, graph 0 to ${kills[0]}, graph 1 nohead dashtype 3 lc rgb "#888888"
set arrow from ${kills[1]}, graph 0 to ${kills[1]}, graph 1 nohead dashtype 3 lc rgb "#888888"
set label "kill -9, resumed" at ${kills[0]}, graph 0.6 offset 0.5,0
set label "kill -9, resumed" at ${kills[1]}, graph 0.6 offset 0.5,0
plot "$work/whole/logs/metrics.csv" every ::1 using 1:(strcol(3) eq "train" ? \$4 : NaN) \
       with lines lw 4 lc rgb "#9ecae1" title "uninterrupted", \
     "$work/killed/logs/metrics.csv" every ::1 using 1:(strcol(3) eq "train" ? \$4 : NaN) \
       with linespoints lw 1 pt 7 ps 0.5 lc rgb "#d62728" title "killed twice, resumed with --resume auto"
PLOT
echo "wrote $out"
