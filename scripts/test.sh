#!/usr/bin/env bash
# The README's second command: installs what is missing, then tests keel in these parts:
#
#   gcc        g++ 12, C++17, LibTorch 1.13 (Debian bookworm, this machine): the whole suite,
#              warnings as errors.
#   consumers  tests/consumers/run.sh: a project of a user's for each way in (find_package after
#              cmake --install and after installing the .deb, add_subdirectory, FetchContent,
#              the single header alone), built from scratch with -Werror (g++ C++17 and C++20,
#              clang++ C++17), preempted and resumed (needs the gcc part's build).
#   clang      clang++ 14, C++17, LibTorch 1.13, under AddressSanitizer + UndefinedBehaviorSanitizer,
#              warnings as errors, against the generated single header alone (first checked to
#              be what scripts/single-header.py makes of include/): every in-process test, the
#              compile-fail tests, the README's quick start; and each header under include/ on
#              its own. The tests that start processes (resume across processes, SIGKILL,
#              signals, keel-ckpt) run in gcc (and libtorch2, where LibTorch can matter).
#              clang++ 14 cannot parse LibTorch 1.13's headers in C++20, so no part builds that.
#   libtorch2  clang++ 19, LibTorch 2.6 (Debian trixie, in a root that scripts/libtorch2-root.sh
#              makes on first use and reuses after): the whole suite but the header check, the
#              compile-fail file and the slow process tests of keel's code above LibTorch
#              (signals, disk faults, the example's flags, workers, logs, forks and ranks);
#              keel-ckpt's export is read back by trixie's python3-torch 2.6; the benchmarks are
#              built too, so that they keep compiling. No Node.js there: the TensorBoard reader's
#              test runs in the gcc and clang parts. clang++ rather than trixie's g++ 14: it
#              builds the suite in 4 minutes instead of 13, which keeps all of this under 45
#              minutes on 2 cores (g++ 14 passes too: scripts/test.sh libtorch2-gcc).
#   cross      tests/cross_libtorch/run.sh: a checkpoint written with either LibTorch loads with
#              the other, bit for bit (needs gcc and libtorch2 built).
#   fuzz       the checkpoint reader under libFuzzer for a minute (fuzz/run.sh).
#
#   scripts/test.sh            every part above, in that order (CI runs exactly this)
#   scripts/test.sh PART...    only those parts, e.g. scripts/test.sh libtorch2 cross; also
#                              libtorch2-gcc, the libtorch2 part with g++ 14 (not in CI: time)
set -euo pipefail
cd "$(dirname "$0")/.."

default_parts=(gcc consumers clang libtorch2 cross fuzz)
parts=("$@")
((${#parts[@]})) || parts=("${default_parts[@]}")
for part in "${parts[@]}"; do
  [[ " ${default_parts[*]} libtorch2-gcc " == *" $part "* ]] ||
    { echo "scripts/test.sh: unknown part '$part' (${default_parts[*]} libtorch2-gcc)" >&2; exit 2; }
done

scripts/install-deps.sh --tests
jobs=$(nproc)
# Test builds compile with -O1 and no debug information (line tables where a sanitizer prints
# stacks): measured here, a keel test TU takes 57 s with the default -O2 -g and 32 s with
# -O1 -g0 (g++ 12), 60 s and 49 s under clang's sanitizers with -O1 -gline-tables-only; the
# tests' time is LibTorch's kernels, which these flags do not touch. Configure a tree of your
# own without them to debug.
configure() {  # configure BUILD_DIR COMPILER CMAKE-ARGS...
  local build=$1 compiler=$2
  shift 2
  CXX=$compiler cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="${KEEL_TEST_OPT_FLAGS:--O1 -g0 -DNDEBUG}" -DKEEL_BUILD_TESTS=ON "$@" >/dev/null
}
whole_suite() {  # whole_suite BUILD_DIR COMPILER JOBS EXCLUDE CMAKE-ARGS...: configure, build, run every
  local build=$1 compiler=$2 jobs=$3 exclude=$4  # test but those matching the regex EXCLUDE ("": none)
  shift 4
  configure "$build" "$compiler" -DKEEL_BUILD_EXAMPLES=ON "$@"
  cmake --build "$build"
  ctest --test-dir "$build" -j "$jobs" --output-on-failure --timeout 900 ${exclude:+-E "$exclude"}
}
in_libtorch2_root() {  # in_libtorch2_root COMMAND ARGS...: runs a command (or a function above) in the root
  scripts/libtorch2-root.sh bash -c "set -euo pipefail; $(declare -f configure whole_suite); \"\$@\"" keel "$@"
}
started=$SECONDS
part_done() { echo "== $1 passed ($((SECONDS - started)) s so far)"; }

for part in "${parts[@]}"; do
  case $part in
    gcc)
      echo "== gcc: the whole suite, g++ 12, C++17, LibTorch 1.13, warnings as errors"
      # The compile-fail file (accepted and refused forms) is built in the clang part, where it
      # overlaps the header check; here it would add a minute of compiles.
      whole_suite build/test-g g++ "$jobs" "" -DKEEL_WERROR=ON -DKEEL_COMPILE_FAIL_TESTS=OFF \
        -DKEEL_COMPILE_FAIL_SOURCES=OFF
      ;;
    consumers)
      echo "== consumers: a project of a user's for each way of adding keel"
      [[ -f build/test-g/build.ninja ]] ||
        { echo "scripts/test.sh: the consumers part installs and packages the gcc part's build: run that first" >&2; exit 2; }
      cmake --build build/test-g --target keel_ckpt  # what the install and the package ship
      tests/consumers/run.sh build/test-g build/consumers
      ;;
    clang)
      echo "== clang: in-process tests under ASan + UBSan, clang++ 14, C++17, LibTorch 1.13, single header"
      echo "   (not C++20: clang++ 14 cannot parse LibTorch 1.13's headers in C++20; g++ builds C++20 in the consumers part)"
      scripts/single-header.py --check
      KEEL_TEST_OPT_FLAGS="-O1 -gline-tables-only -DNDEBUG" \
        configure build/test-clang clang++ -DKEEL_BUILD_EXAMPLES=OFF -DKEEL_BUILD_TOOLS=OFF \
        -DKEEL_SANITIZE=address,undefined -DKEEL_PROCESS_TESTS=OFF -DKEEL_SINGLE_HEADER=ON -DKEEL_WERROR=ON
      cmake --build build/test-clang
      # detect_leaks=0: LibTorch's process-lifetime singletons are not leaks worth a report.
      ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        build/test-clang/tests/keel_tests
      ctest --test-dir build/test-clang -j "$jobs" --output-on-failure --timeout 1800 \
        -R '^(compile_fail|readme|headers)\.'
      ;;
    libtorch2 | libtorch2-gcc)
      compiler=clang++
      [[ $part == libtorch2-gcc ]] && compiler=g++
      echo "== $part: the whole suite, $compiler, LibTorch 2.6 (Debian trixie root)"
      # The slow process tests of keel's own code above LibTorch run in the gcc part only (six
      # minutes of processes): the example's flag combinations, worker counts and logs across
      # kills, the preemption signals, a second signal, a refusing disk, the example's forks and
      # its two ranks under keel-run (the resume driver's data-parallel tests do run here).
      # Here run the exactness, SIGKILL, fixture and keel-ckpt tests, which LibTorch's version
      # can change. The compile-fail file is built in the clang part.
      in_libtorch2_root whole_suite "build/torch2-${compiler%++}" "$compiler" "$jobs" \
        "every flag combination of the example|does not depend on the worker count|the metric logs hold every step|fault: SIGTERM, SIGINT and SIGUSR1|fault: a second signal|fault: a disk that refuses|the example trains longer with|the example trains as two ranks|the example.s MLP as two ranks" \
        -DKEEL_BUILD_BENCH=ON -DKEEL_CHECK_HEADERS=OFF -DKEEL_COMPILE_FAIL_TESTS=OFF -DKEEL_COMPILE_FAIL_SOURCES=OFF \
        -DKEEL_NODE_TESTS=OFF
      ;;
    cross)
      echo "== cross: checkpoints cross between LibTorch 1.13 and 2.6"
      # Today's programs on both sides (up to date after the gcc and libtorch2 parts).
      [[ -f build/test-g/build.ninja && -f build/torch2-clang/build.ninja ]] ||
        { echo "scripts/test.sh: the cross part needs the gcc and libtorch2 parts' builds: run those first" >&2; exit 2; }
      cmake --build build/test-g --target resume_driver keel_ckpt
      in_libtorch2_root cmake --build build/torch2-clang --target resume_driver keel_ckpt
      tests/cross_libtorch/run.sh build/test-g build/torch2-clang
      ;;
    fuzz)
      echo "== fuzz: the checkpoint reader (60 s)"
      fuzz/run.sh 60
      ;;
    *)
      echo "scripts/test.sh: unknown part '$part'" >&2
      exit 2
      ;;
  esac
  part_done "$part"
done
