#!/usr/bin/env bash
# Runs a command against LibTorch 2.x: inside a Debian trixie root (LibTorch 2.6, g++ 14,
# clang++ 19, python3-torch 2.6), made with debootstrap from the Debian mirror apt already uses, on first
# use, and reused after.
#
#   scripts/libtorch2-root.sh COMMAND [ARGS...]
#
# The checkout is visible inside at the same path, and COMMAND runs from the checkout's root,
# so build trees made inside (build/*-torch2) sit next to the host's. Needs root or sudo.
# The root lives in $KEEL_LIBTORCH2_ROOT (default ~/.cache/keel/trixie-libtorch2, about 2.5 GB);
# delete that folder to start over.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
root=${KEEL_LIBTORCH2_ROOT:-$HOME/.cache/keel/trixie-libtorch2}

if (($# == 0)); then
  echo "usage: scripts/libtorch2-root.sh COMMAND [ARGS...]" >&2
  exit 2
fi
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "keel: the LibTorch 2.x root needs root or sudo (debootstrap, chroot, mount)" >&2; exit 1; }
  exec sudo --preserve-env=KEEL_LIBTORCH2_ROOT,HOME "$0" "$@"
fi

# What keel's build and test suite need there: scripts/install-deps.sh --tests's list, less the
# sanitizer runtimes (the sanitizer run is on the host).
packages=(
  cmake ninja-build g++ clang ccache pkg-config
  libtorch-dev libgloo-dev libboost-dev libcereal-dev libxxhash-dev
  libcli11-dev zlib1g-dev dataset-fashion-mnist libopenblas0-pthread
  doctest-dev python3-torch
)

mirror=$(sed -n 's/^URIs: *\(http[^ ]*debian\/\?\) *$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
mirror=${mirror:-http://deb.debian.org/debian}

# One user of the root at a time: a second waits (the mounts below are shared).
mkdir -p "$(dirname "$root")"
exec 9>"$root.lock"
flock 9

if [[ ! -x "$root/usr/bin/apt-get" ]]; then
  if ! command -v debootstrap >/dev/null; then
    echo "keel: installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >/dev/null ||
      { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap; }
  fi
  echo "keel: making a Debian trixie root for LibTorch 2.x in $root (from $mirror)"
  rm -rf "$root.partial"
  debootstrap --variant=minbase trixie "$root.partial" "$mirror" >"$root.debootstrap.log" 2>&1 ||
    { tail -20 "$root.debootstrap.log" >&2; echo "keel: debootstrap failed (log: $root.debootstrap.log)" >&2; exit 1; }
  rm -rf "$root"
  mv "$root.partial" "$root"  # only a finished root is ever used
fi

mounted=()
cleanup() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
mount_into() {  # mount_into TARGET MOUNT-ARGS...
  local target=$1
  shift
  mkdir -p "$target"
  mount "$@" "$target"
  mounted+=("$target")
}
mount_into "$root/proc" -t proc proc
mount_into "$root/sys" --bind -o ro /sys
mount_into "$root$repo" --bind "$repo"
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true

missing=$( (chroot "$root" dpkg-query -W -f='${Package} ${Status}\n' "${packages[@]}" 2>/dev/null || true) |
            awk '$NF == "installed" {print $1}' | sort | comm -13 - <(printf '%s\n' "${packages[@]}" | sort) | tr '\n' ' ')
if [[ -n "${missing// /}" ]]; then
  echo "keel: installing into the LibTorch 2.x root: $missing"
  chroot "$root" /usr/bin/env DEBIAN_FRONTEND=noninteractive bash -c \
    "apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $missing >/tmp/keel-apt.log 2>&1 ||
     { tail -20 /tmp/keel-apt.log >&2; exit 1; }"
fi

cd "$repo"
chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 \
  CCACHE_DIR=/root/.ccache TERM="${TERM:-dumb}" CI="${CI:-}" \
  bash -c 'cd "$1" && shift && exec "$@"' keel-root "$repo" "$@"
