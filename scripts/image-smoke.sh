#!/usr/bin/env bash
# Build the container image from the project's Dockerfile and run it as k8s/ does,
# with no Docker engine and no registry: podman (rootful, runc), a local Debian base
# (scripts/image-base.sh, cached under ${XDG_CACHE_HOME:-~/.cache}/progress-relay/),
# then tests/test_image.py against the image.
#
#   bash scripts/image-smoke.sh [pytest args]   build, then run tests/test_image.py
#   bash scripts/image-smoke.sh --build-only    build; print the test's environment
#                                               (KEY=VALUE lines) on stdout
#
# CI (scripts/test-all.sh) uses --build-only and runs tests/test_image.py with the
# rest of the suite. As root on Debian it installs podman, runc and debootstrap from
# Debian's packages when they are missing. Timings and the image size go to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/progress-relay/image
IMAGE=${RELAY_TEST_IMAGE:-localhost/progress-relay:smoke}
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

build_only=false
if [ "${1:-}" = --build-only ]; then
  build_only=true
  shift
fi

log() { echo "image-smoke: $*" >&2; }
now() { date +%s.%N; }
seconds() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

started=$(now)
missing=()
for tool in podman runc debootstrap; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing ${missing[*]} from Debian's packages"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      podman runc debootstrap uidmap slirp4netns fuse-overlayfs >/dev/null
  else
    log "missing ${missing[*]}: install them (apt-get install podman runc debootstrap) and run this as root"
    exit 1
  fi
fi
if [ "$(id -u)" != 0 ]; then
  log "run this as root: the base is built with debootstrap and the image run by rootful podman"
  exit 1
fi
installed=$(now)

# Podman's defaults that fail on small or nested machines: ulimits above the
# machine's hard limits, crun on cgroup setups it cannot drive, journald events
# without systemd. This file is only passed to this script's podman (CONTAINERS_CONF).
mkdir -p "$CACHE"
nofile=$(ulimit -Hn)
[ "$nofile" = unlimited ] && nofile=1048576
nproc=$(ulimit -Hu)
{ [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; } && nproc=32768
cat >"$CACHE/containers.conf" <<EOF
# Written by scripts/image-smoke.sh; used through CONTAINERS_CONF.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_CONF=$CACHE/containers.conf

base=$(bash scripts/image-base.sh)
based=$(now)

# The host's CA bundle, mounted for the build's RUN steps only, lets pip reach the
# package index through a TLS-inspecting proxy; it is not copied into the image.
ca=()
[ -s "$CA_BUNDLE" ] && ca=(--volume "$CA_BUNDLE:$CA_BUNDLE:ro")
log "building $IMAGE on $base"
# --format docker keeps the HEALTHCHECK (the OCI format has none).
podman build --quiet --network host --format docker --build-arg "BASE_IMAGE=$base" \
  "${ca[@]}" --tag "$IMAGE" . >/dev/null
built=$(now)

size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
log "image $IMAGE: $((size / 1000000)) MB"
log "took $(seconds "$started" "$built") s: tools $(seconds "$started" "$installed") s," \
  "base $(seconds "$installed" "$based") s, image build $(seconds "$based" "$built") s"

if $build_only; then
  echo "RELAY_TEST_IMAGE=$IMAGE"
  echo "CONTAINERS_CONF=$CONTAINERS_CONF"
  exit 0
fi
RELAY_TEST_IMAGE=$IMAGE exec "$PY" -m pytest tests/test_image.py "$@"
