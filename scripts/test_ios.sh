#!/usr/bin/env bash
# Build and test the Swift package in ios_app/ on Linux (what CI runs; needs root).
#
# Swift is not installable on Debian 12, so this keeps a Debian trixie chroot with its
# `swiftlang` package (Swift 6.0.3) in a cache outside the clone, created on the first run
# (a few minutes, about 3 GB) and reused afterwards:
#
#   ${MOBILEDIFF_CACHE:-$HOME/.cache/mobilediff}/swift-trixie/   the chroot
#       .../root/ios_app-build/                               SwiftPM's build folder
#
# The repository is bind-mounted read-only at /repo inside the chroot, so nothing is
# written into the clone; the tests read tests/vectors/ and models/tokenizer/ from there.
# Every mount is undone on exit, also on failure or Ctrl-C. Arguments go to `swift test`
# (e.g. `bash scripts/test_ios.sh --filter CLIPTokenizerTests`).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${MOBILEDIFF_CACHE:-${HOME:-/root}/.cache/mobilediff}
ROOT=$CACHE/swift-trixie
READY=$ROOT/.mobilediff-ready # written last, when the chroot is complete
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SCRATCH=/root/ios_app-build # SwiftPM's build folder, inside the chroot

log() { printf '[test_ios] %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  log "needs root (debootstrap, chroot and mount); run it with sudo"
  exit 1
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/swift-trixie.lock"
flock 9 # one run at a time per cache: runs share the chroot and its build folder

# Mount points under $ROOT, deepest first.
mounts_under_root() {
  awk -v root="$ROOT" 'index($2, root "/") == 1 { print $2 }' /proc/mounts | sort -r
}

unmount_all() {
  local target
  for target in $(mounts_under_root); do
    umount "$target" 2>/dev/null || umount -l "$target"
  done
}

trap unmount_all EXIT
unmount_all # left behind by a run that was killed before its trap ran

# A command inside the chroot, with a clean environment.
in_chroot() {
  chroot "$ROOT" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
}

create_chroot() {
  if [ -n "$(mounts_under_root)" ]; then
    log "refusing to delete $ROOT: something is still mounted under it"
    exit 1
  fi
  rm -rf "$ROOT"
  if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q debootstrap >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null && apt-get install -y -q debootstrap >/dev/null; }
  fi
  log "creating the Debian trixie chroot in $ROOT (once; a few minutes)"
  debootstrap --variant=minbase trixie "$ROOT" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
    { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
  cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
  mount -t proc proc "$ROOT/proc"
  log "installing swiftlang in the chroot (log: $CACHE/apt.log)"
  { in_chroot apt-get update -q &&
    in_chroot env DEBIAN_FRONTEND=noninteractive apt-get install -y -q swiftlang &&
    in_chroot apt-get clean; } >"$CACHE/apt.log" 2>&1 ||
    { tail -20 "$CACHE/apt.log" >&2; exit 1; }
  in_chroot swift --version >"$READY.partial" # swift needs /proc: its RUNPATH uses $ORIGIN
  umount "$ROOT/proc"
  mv "$READY.partial" "$READY"
}

if [ ! -f "$READY" ]; then
  create_chroot
fi
log "$(head -1 "$READY")"

mount -t proc proc "$ROOT/proc"
if [ ! -c "$ROOT/dev/null" ]; then # debootstrap could not make device nodes (a container)
  mount --rbind /dev "$ROOT/dev"
  mount --make-rslave "$ROOT/dev"
fi
mkdir -p "$ROOT/repo"
mount --bind "$REPO" "$ROOT/repo"
mount -o remount,bind,ro "$ROOT/repo"

in_chroot sh -c "cd /repo/ios_app && swift build --scratch-path $SCRATCH"
in_chroot sh -c "cd /repo/ios_app && exec swift test --disable-swift-testing --scratch-path $SCRATCH \"\$@\"" swift-test "$@"
