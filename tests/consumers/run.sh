#!/usr/bin/env bash
# Builds and runs the projects under tests/consumers, one per way of adding keel to a project,
# each a copy outside keel's tree, configured and built from scratch in OUT/<way>:
#
#   install           cmake --install of KEEL_BUILD to a prefix; find_package(keel) (g++, C++17)
#   deb               KEEL_BUILD's Debian package (cpack), installed with apt-get install ./keel_*.deb
#                     and removed after; find_package(keel) from /usr (g++, C++17; needs root or sudo)
#   add_subdirectory  keel's source tree added to the project (g++, C++20)
#   fetch_content     FetchContent from a source archive of the working tree (clang++, C++17)
#   single_header     single_include/keel/keel.hpp copied into the project, nothing else of keel
#                     (clang++, C++17)
#   single_header_cxx20  the same with g++, C++20
#
# Each consumer builds with -Wall -Wextra -Wpedantic -Werror, then trains: preempted by SIGTERM
# at step 6 (exit 143 after its checkpoint), run again (it must resume), and once more in a
# fresh directory without a stop: the two must print the same state digest. The installed ways
# also run the installed keel-ckpt on the checkpoints.
#
#   tests/consumers/run.sh KEEL_BUILD OUT [WAY...]     (default: every way, in the order above)
# KEEL_BUILD: a built keel tree configured as the top-level project (keel-ckpt built).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
(($# >= 2)) || { echo "usage: tests/consumers/run.sh KEEL_BUILD OUT [WAY...]" >&2; exit 2; }
keel_build=$(realpath "$1")
mkdir -p "$2"
out=$(realpath "$2")
shift 2
ways=("$@")
((${#ways[@]})) || ways=(install add_subdirectory deb fetch_content single_header single_header_cxx20)

launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
sudo=()
[[ $(id -u) -ne 0 ]] && sudo=(sudo -n)

fail() { echo "tests/consumers/run.sh: $way: $*" >&2; exit 1; }

# build PROJECT COMPILER STANDARD CMAKE-ARGS...: copies tests/consumers/PROJECT and consumer.cpp
# to OUT/<way>/src, configures and builds it in OUT/<way>/build.
build() {
  local project=$1 compiler=$2 standard=$3
  shift 3
  mkdir -p "$out/$way/src"
  cp "$repo/tests/consumers/consumer.cpp" "$repo/tests/consumers/expect_parent_unchanged.cmake" "$out/$way/src/"
  cp -r "$repo/tests/consumers/$project" "$out/$way/src/project"
  if [[ $project == single_header ]]; then
    mkdir -p "$out/$way/src/project/vendor/keel"
    cp "$repo/single_include/keel/keel.hpp" "$out/$way/src/project/vendor/keel/"
  fi
  echo "-- $way: $compiler, C++$standard"
  CXX=$compiler cmake -S "$out/$way/src/project" -B "$out/$way/build" -G Ninja -DCMAKE_CXX_STANDARD="$standard" \
    "${launcher[@]}" "$@" >"$out/$way/configure.log" || { cat "$out/$way/configure.log"; fail "configure failed"; }
  cmake --build "$out/$way/build" || fail "build failed"
}

# train_and_resume: the preempted run, its resume, and a run never stopped.
train_and_resume() {
  local program=$out/$way/build/consumer run=$out/$way/run status=0
  "$program" "$run/stopped" 6 >"$run.stopped.out" 2>&1 || status=$?
  ((status == 143)) || { cat "$run.stopped.out"; fail "preempted at step 6, the consumer exited with $status, not 143"; }
  # keel's handler, not SIGTERM's default action (which also gives 143): a checkpoint at step 6.
  grep -q "stopped by SIGTERM after saving .*step-000000006" "$run.stopped.out" ||
    { cat "$run.stopped.out"; fail "SIGTERM at step 6 did not save a checkpoint of step 6"; }
  "$program" "$run/stopped" >"$run.resumed.out" 2>&1 || { cat "$run.resumed.out"; fail "the resume failed"; }
  grep -q "keel: resumed from .*(epoch 0, step 6)" "$run.resumed.out" ||
    { cat "$run.resumed.out"; fail "the second run did not resume from step 6"; }
  "$program" "$run/whole" >"$run.whole.out" 2>&1 || { cat "$run.whole.out"; fail "the run never stopped failed"; }
  local resumed whole
  resumed=$(grep -o 'state_digest=[0-9a-f]*' "$run.resumed.out") || fail "no state digest after the resume"
  whole=$(grep -o 'state_digest=[0-9a-f]*' "$run.whole.out") || fail "no state digest"
  [[ $resumed == "$whole" ]] || fail "resumed: $resumed, never stopped: $whole"
  grep -q " step=12 " "$run.resumed.out" || { cat "$run.resumed.out"; fail "the resumed run did not end at step 12"; }
  echo "-- $way: preempted at step 6, resumed, ended at step 12 with $resumed, as the run never stopped"
}

# installed_tool EXPECTED_PATH: the keel-ckpt the package exports is the installed one and reads
# the checkpoints.
installed_tool() {
  local tool
  tool=$(cat "$out/$way/build/keel-ckpt-path")
  [[ $tool == "$1" ]] || fail "keel::keel-ckpt is '$tool', expected '$1'"
  "$tool" verify "$out/$way/run/stopped/checkpoints/last.ckpt" || fail "keel-ckpt verify failed"
}

# run_way WAY: builds and runs one consumer (output: OUT/WAY.log).
run_way() {
  way=$1
    rm -rf "${out:?}/$way"
    mkdir -p "$out/$way"
    case $way in
      install)
        cmake --install "$keel_build" --prefix "$out/$way/prefix" >/dev/null
        build find_package g++ 17 -DCMAKE_PREFIX_PATH="$out/$way/prefix"
        train_and_resume
        installed_tool "$out/$way/prefix/bin/keel-ckpt"
        ;;
      deb)
        if ((${#sudo[@]})) && ! sudo -n true 2>/dev/null; then
          fail "installing the package needs root or sudo without a password"
        fi
        if dpkg-query -W -f='${Status}' keel 2>/dev/null | grep -q "install ok installed"; then
          fail "a keel package is installed already; this test installs and removes its own: remove it first (apt-get remove keel)"
        fi
        (cd "$keel_build" && cpack -G DEB -B "$out/$way/package" >/dev/null)
        deb=$(ls "$out/$way/package"/keel_*.deb)
        echo "-- $way: $(basename "$deb"), $(dpkg-deb -f "$deb" Depends | cut -c1-150)..."
        trap '"${sudo[@]}" apt-get remove -y -q keel >/dev/null' EXIT
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$deb" >/dev/null
        build find_package g++ 17
        train_and_resume
        installed_tool /usr/bin/keel-ckpt
        "${sudo[@]}" apt-get remove -y -q keel >/dev/null
        trap - EXIT
        ;;
      add_subdirectory)
        build add_subdirectory g++ 20 -DKEEL_SOURCE_DIR="$repo"
        train_and_resume
        ;;
      fetch_content)
        archive=$out/$way/keel-src.tar.gz
        tar -C "$repo" --exclude=./build --exclude=./.git --exclude=node_modules --transform 's,^\.,keel,' \
          -czf "$archive" .
        build fetch_content clang++ 17 -DKEEL_ARCHIVE="$archive" \
          -DKEEL_ARCHIVE_SHA256="$(sha256sum "$archive" | cut -d' ' -f1)"
        train_and_resume
        ;;
      single_header)
        build single_header clang++ 17
        train_and_resume
        ;;
      single_header_cxx20)
        build single_header g++ 20
        train_and_resume
        ;;
    esac
}

# The consumers build one translation unit each: as many lanes as cores, each taking every
# lanes-th way in turn; the logs are printed in order at the end.
"$repo/scripts/single-header.py" --check >/dev/null ||
  { echo "tests/consumers/run.sh: single_include/keel/keel.hpp is out of date: run scripts/single-header.py" >&2; exit 1; }
for way in "${ways[@]}"; do
  [[ " install deb add_subdirectory fetch_content single_header single_header_cxx20 " == *" $way "* ]] ||
    { echo "tests/consumers/run.sh: unknown way '$way'" >&2; exit 2; }
  rm -f "$out/$way.log"
done
rm -f "$out"/lane-*.failed
lanes=$(nproc)
if ((lanes > ${#ways[@]})); then lanes=${#ways[@]}; fi
pids=()
for ((lane = 0; lane < lanes; ++lane)); do
  (
    for ((i = lane; i < ${#ways[@]}; i += lanes)); do
      # errexit holds inside run_way only in a subshell of its own that no || or if tests.
      set +e
      (
        set -e
        run_way "${ways[i]}"
      ) >"$out/${ways[i]}.log" 2>&1
      rc=$?
      set -e
      ((rc == 0)) || echo "${ways[i]}" >>"$out/lane-$lane.failed"
    done
  ) &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
for way in "${ways[@]}"; do
  if [[ -f $out/$way.log ]]; then
    echo "== consumer: $way"
    cat "$out/$way.log"
  fi
done
failed=$(cat "$out"/lane-*.failed 2>/dev/null | tr '\n' ' ' || true)  # no file: none failed
if ((status != 0)) || [[ -n $failed ]]; then
  echo "tests/consumers/run.sh: failed: ${failed:-a lane}" >&2
  exit 1
fi
echo "== consumers: ${ways[*]}: built, preempted, resumed"
