#!/usr/bin/env bash
# A local stand-in for python:3.11-slim, built without a registry (CI has none):
# Debian bookworm (whose python3 is 3.11) from the Debian mirror apt is configured
# with, by debootstrap --variant=minbase, imported into podman's image store.
#
#   bash scripts/image-base.sh        -> prints the image reference on stdout
#
# Needs root, podman and debootstrap (scripts/image-smoke.sh installs them). The
# root filesystem is cached as a tar under ${XDG_CACHE_HOME:-~/.cache}/progress-relay/
# image/, keyed by this script's own text, so later runs import it in seconds (or
# find the image already in podman's store and do nothing). DEBIAN_MIRROR overrides
# the mirror read from /etc/apt/sources.list.d/ or /etc/apt/sources.list.
#
# The Dockerfile only assumes `python3` and `python3 -m pip`, which both bases have.
# What this base still bridges, and why:
#   - /usr/lib/python3.*/EXTERNALLY-MANAGED is removed: Debian marks its system
#     Python as managed by apt (PEP 668), so `pip install .` would refuse to run;
#     python:3.11-slim's Python is not apt's and has no such marker. Removing it here
#     keeps the Dockerfile's install line the one users run on the registry base.
#   - ENV LANG=C.UTF-8 and PATH as python:3.11-slim sets them (an imported root
#     filesystem has no environment of its own).
set -euo pipefail
cd "$(dirname "$0")/.."

SUITE=bookworm
PACKAGES=python3,python3-pip,ca-certificates
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/progress-relay/image
KEY=$(cksum <scripts/image-base.sh | cut -d' ' -f1)
TAG=localhost/progress-relay-base:$SUITE-$KEY
TAR=$CACHE/base-$SUITE-$KEY.tar

log() { echo "image-base: $*" >&2; }

# The first Debian mirror apt uses for $SUITE: deb822 stanzas (*.sources) first,
# then one-line entries (*.list); deb.debian.org when there is none.
debian_mirror() {
  local f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    uri=$(awk -v suite="$SUITE" '
      BEGIN { RS = "" }
      {
        uri = ""; deb = 0; found = 0
        n = split($0, lines, "\n")
        for (i = 1; i <= n; i++) {
          if (lines[i] ~ /^URIs:/) { split(lines[i], w, /[ \t]+/); uri = w[2] }
          if (lines[i] ~ /^Types:/ && lines[i] ~ /[ \t]deb([ \t]|$)/) deb = 1
          if (lines[i] ~ /^Suites:/) {
            m = split(lines[i], w, /[ \t]+/)
            for (j = 2; j <= m; j++) if (w[j] == suite) found = 1
          }
        }
        if (deb && found && uri != "") { print uri; exit }
      }' "$f")
    if [ -n "$uri" ]; then echo "$uri"; return; fi
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    uri=$(awk -v suite="$SUITE" '
      $1 == "deb" {
        i = 2
        if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
        if ($(i + 1) == suite) { print $i; exit }
      }' "$f")
    if [ -n "$uri" ]; then echo "$uri"; return; fi
  done
  echo http://deb.debian.org/debian
}

# Remove a half-built root filesystem, never through a mount debootstrap left behind.
cleanup() {
  rm -f "$TAR.partial"
  if grep -qF " $1/" /proc/self/mounts; then
    log "left $1 in place: something is still mounted under it"
  else
    rm -rf "$1"
  fi
}

if podman image exists "$TAG"; then
  log "$TAG already in podman's store"
  echo "$TAG"
  exit 0
fi

mkdir -p "$CACHE"
if [ ! -s "$TAR" ]; then
  mirror=${DEBIAN_MIRROR:-$(debian_mirror)}
  root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  trap 'cleanup "$root"' EXIT
  log "debootstrap $SUITE from $mirror (about a minute, once)"
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$mirror" >"$CACHE/debootstrap.log" 2>&1 || {
    tail -n 20 "$CACHE/debootstrap.log" >&2
    exit 1
  }
  rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
  # What an image does not need: apt's package lists and downloads, docs, man pages.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/log/*
  tar --numeric-owner -C "$root" -cf "$TAR.partial" .
  mv "$TAR.partial" "$TAR"
  # Older bases (an earlier version of this script) are dead weight.
  find "$CACHE" -maxdepth 1 -name "base-*.tar" ! -name "$(basename "$TAR")" -delete
fi

log "importing $TAR as $TAG"
podman import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  "$TAR" "$TAG" >/dev/null
echo "$TAG"
