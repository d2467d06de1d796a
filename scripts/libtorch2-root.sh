#!/usr/bin/env bash
# Runs a command against LibTorch 2.x: inside a Debian trixie root (LibTorch 2.6, g++ 14,
# clang++ 19, python3-torch 2.6), made with debootstrap from the Debian mirror apt already
# uses, on first use, and reused after.
#
#   scripts/libtorch2-root.sh COMMAND [ARGS...]
#
# The checkout is visible inside at the same path, and COMMAND runs from the checkout's root,
# so build trees made inside (build/torch2-*) sit next to the host's. COMMAND gets a clean
# environment (PATH, HOME, LANG, TERM): pass variables with `env`, as in
#   scripts/libtorch2-root.sh env CXX=clang++ cmake -S . -B build/mine-torch2 -G Ninja
# Needs root or sudo; through sudo, COMMAND runs as the calling user, so what it writes is
# theirs. The mounts live in a mount namespace of this script's own and end with it, even when
# it is killed. The root lives in $KEEL_LIBTORCH2_ROOT (default ~/.cache/keel/trixie-libtorch2,
# about 2.5 GB); delete that folder to start over.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
root=$(realpath -m "${KEEL_LIBTORCH2_ROOT:-$HOME/.cache/keel/trixie-libtorch2}")

if (($# == 0)); then
  echo "usage: scripts/libtorch2-root.sh COMMAND [ARGS...]" >&2
  exit 2
fi
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null ||
    { echo "keel: the LibTorch 2.x root needs root or sudo (debootstrap, chroot, mount)" >&2; exit 1; }
  mkdir -p "$(dirname "$root")"  # the caller's own folder, not root's
  exec sudo env KEEL_LIBTORCH2_ROOT="$root" "$0" "$@"
fi
if [[ -z "${KEEL_LIBTORCH2_NAMESPACE:-}" ]]; then
  exec env KEEL_LIBTORCH2_ROOT="$root" KEEL_LIBTORCH2_NAMESPACE=1 unshare --mount --propagation private "$0" "$@"
fi

mirror=$(sed -n 's/^URIs: *\(http[^ ]*debian\/\?\) *$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1 || true)
mirror=${mirror:-http://deb.debian.org/debian}

# One user of the root at a time: a second waits.
mkdir -p "$(dirname "$root")"
exec 9>"$root.lock"
flock 9

if [[ ! -x "$root/usr/bin/apt-get" ]]; then
  if ! command -v debootstrap >/dev/null; then
    echo "keel: installing debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends debootstrap >/dev/null ||
      { apt-get update -q && apt-get install -y -q --no-install-recommends debootstrap; }
  fi
  echo "keel: making a Debian trixie root for LibTorch 2.x in $root (from $mirror)"
  rm -rf "$root.partial"
  debootstrap --variant=minbase trixie "$root.partial" "$mirror" >"$root.debootstrap.log" 2>&1 ||
    { tail -20 "$root.debootstrap.log" >&2; echo "keel: debootstrap failed (log: $root.debootstrap.log)" >&2; exit 1; }
  rm -rf "$root"
  mv "$root.partial" "$root"  # only a finished root is ever used
fi

mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mkdir -p "$root$repo"
mount --bind "$repo" "$root$repo"
# A CUDA toolkit's headers, where this machine has them: the NCCL path's compile check
# (scripts/check-nccl.sh) runs in the root too.
if [[ -f /usr/local/cuda/include/nccl.h ]]; then
  mkdir -p "$root/usr/local/cuda/include"
  mount --bind /usr/local/cuda/include "$root/usr/local/cuda/include"
fi
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true

inside=(/usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 TERM="${TERM:-dumb}")
# What keel's build and tests need, from the same list as on the host (less Node.js: the
# TensorBoard reader's test runs on the host, scripts/test.sh).
chroot "$root" "${inside[@]}" HOME=/root "$repo/scripts/install-deps.sh" --tests --no-node

# Through sudo, the command runs as the caller, with a home of its own inside the root.
as_caller=()
home=/root
if [[ -n "${SUDO_UID:-}" && "${SUDO_UID}" != 0 ]]; then
  as_caller=(--userspec="$SUDO_UID:${SUDO_GID:-$SUDO_UID}")
  home=/tmp/keel-home-$SUDO_UID
  mkdir -p "$root$home"
  chown "$SUDO_UID:${SUDO_GID:-$SUDO_UID}" "$root$home"
fi
cd "$repo"
chroot "${as_caller[@]}" "$root" "${inside[@]}" HOME="$home" CCACHE_DIR="$home/.ccache" \
  bash -c 'cd "$1" && shift && exec "$@"' keel-root "$repo" "$@"
