#!/usr/bin/env bash
# Build lmforge's images from images/*.Dockerfile and import them into containerd's k8s.io
# namespace, where the test node's kubelet finds them (imagePullPolicy IfNotPresent).
#
#   images/build.sh            # tests/cluster/build.sh first (it builds the pause program)
#
# No container registry is reachable here, so the base image is a Debian root filesystem from
# debootstrap with Debian's Python 3.11 in a venv (python and pip on the PATH, as in the public
# python:3.11-slim-bookworm, which stays each Dockerfile's default BASE), and the pause image is
# kubernetes' pause.c. Everything lives under $LMFORGE_CACHE: docker's data root (its layer
# cache: a code change rebuilds only each image's last layer), a registry's storage and
# containerd's root (the images pods run). The daemons are started here and stopped by PID at
# the end.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${LMFORGE_CACHE:-$HOME/.cache/lmforge}
BIN=${1:-$(bash tests/cluster/build.sh | tail -1)}
TAG=0.1.0
SUITE=bookworm
BASE=lmforge/base:$SUITE-python3.11
PAUSE=registry.k8s.io/pause:3.10
DOCKER=/usr/bin/docker         # Debian's client: BuildKit built in, no buildx plugin needed
CONTAINERD_ROOT=$CACHE/containerd
REGISTRY=127.0.0.1:${LMFORGE_REGISTRY_PORT:-5123}
RUN=$(mktemp -d /tmp/lmforge-images.XXXXXX)
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null && while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done; done
  umount -R "$RUN/rootfs" 2>/dev/null || true
  rm -rf "$RUN"
}
trap cleanup EXIT
log() { echo "images/build.sh: $*" >&2; }

wait_for() {  # wait_for SECONDS COMMAND...
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { log "timed out: $*"; return 1; }
    sleep 0.5
  done
}

# dockerd of our own: builds only (--network host), so no bridge and no iptables rules.
export DOCKER_HOST=unix://$RUN/docker.sock DOCKER_BUILDKIT=1
dockerd --data-root "$CACHE/docker" --exec-root "$RUN/docker-exec" --pidfile "$RUN/docker.pid" \
  --host "$DOCKER_HOST" --bridge none --iptables=false --ip6tables=false \
  >"$RUN/dockerd.log" 2>&1 &
PIDS+=($!)
wait_for 60 $DOCKER info || { cat "$RUN/dockerd.log" >&2; exit 1; }

if ! $DOCKER image inspect "$BASE" >/dev/null 2>&1; then
  log "base $BASE: debootstrap $SUITE"
  t0=$SECONDS
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,passwd \
    "$SUITE" "$RUN/rootfs" http://deb.debian.org/debian >"$RUN/debootstrap.log" 2>&1 \
    || { tail -20 "$RUN/debootstrap.log" >&2; exit 1; }
  # Trust what this machine trusts (a TLS-inspecting proxy's CA, say): pip reaches PyPI through it.
  cp /usr/local/share/ca-certificates/*.crt "$RUN/rootfs/usr/local/share/ca-certificates/" 2>/dev/null || true
  chroot "$RUN/rootfs" update-ca-certificates >/dev/null
  chroot "$RUN/rootfs" python3 -m venv /opt/venv
  chroot "$RUN/rootfs" apt-get clean
  rm -rf "$RUN"/rootfs/var/lib/apt/lists/* "$RUN"/rootfs/var/log/*
  tar -C "$RUN/rootfs" --numeric-owner -c . | $DOCKER import \
    --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["python3"]' - "$BASE" >/dev/null
  log "base $BASE: built in $((SECONDS - t0))s"
fi

if ! $DOCKER image inspect "$PAUSE" >/dev/null 2>&1; then
  tar -C "$BIN" --owner=0 --group=0 -c pause | $DOCKER import --change 'ENTRYPOINT ["/pause"]' - "$PAUSE" >/dev/null
fi

for name in operator trainer serve; do
  log "lmforge-$name: building"
  t0=$SECONDS
  $DOCKER build --progress plain --network host -f "images/$name.Dockerfile" \
    --build-arg BASE="$BASE" --build-arg TORCH_INDEX=https://pypi.org/simple \
    -t "ghcr.io/lmforge/lmforge-$name:$TAG" . >"$RUN/build-$name.log" 2>&1 \
    || { tail -40 "$RUN/build-$name.log" >&2; exit 1; }
  log "lmforge-$name: built in $((SECONDS - t0))s"
done

# Hand each new image to containerd through a registry of our own on loopback: docker pushes
# only the layers the registry lacks and containerd pulls only those, so a code change moves
# one layer, not gigabytes. A marker per image records the docker ID containerd has.
cat >"$RUN/registry.yml" <<YAML
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $CACHE/registry}}
http: {addr: "$REGISTRY"}
YAML
"$BIN/registry" serve "$RUN/registry.yml" >"$RUN/registry.log" 2>&1 &
PIDS+=($!)
wait_for 30 curl -sf "http://$REGISTRY/v2/" || { cat "$RUN/registry.log" >&2; exit 1; }
containerd --root "$CONTAINERD_ROOT" --state "$RUN/containerd" --address "$RUN/containerd.sock" \
  >"$RUN/containerd.log" 2>&1 &
PIDS+=($!)
ctr() { command ctr --address "$RUN/containerd.sock" -n k8s.io "$@"; }
wait_for 30 ctr version
mkdir -p "$CACHE/imported"
for image in "$PAUSE" "ghcr.io/lmforge/lmforge-"{operator,trainer,serve}":$TAG"; do
  id=$($DOCKER image inspect -f '{{.Id}}' "$image")
  mark=$CACHE/imported/${image//[\/:]/_}
  if [[ -f $mark && $(<"$mark") == "$id" ]] && ctr images ls -q | grep -qx "$image"; then
    log "$image: in containerd"; continue
  fi
  t0=$SECONDS
  local_name=$REGISTRY/${image#*/}
  $DOCKER tag "$image" "$local_name"
  $DOCKER push --quiet "$local_name" >/dev/null
  $DOCKER rmi "$local_name" >/dev/null
  ctr images pull --plain-http "$local_name" >/dev/null
  ctr images tag --force "$local_name" "$image" >/dev/null
  ctr images rm "$local_name" >/dev/null
  echo "$id" >"$mark"
  log "$image: in containerd in $((SECONDS - t0))s"
done
$DOCKER image prune --force >/dev/null   # the images the new ones replaced
for image in "$BASE" "ghcr.io/lmforge/lmforge-"{operator,trainer,serve}":$TAG"; do
  log "$image: $($DOCKER image inspect -f '{{.Size}}' "$image" | numfmt --to=iec)"
done
