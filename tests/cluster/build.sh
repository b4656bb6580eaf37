#!/usr/bin/env bash
# Build the binaries of a single-node Kubernetes cluster (control plane, kubelet,
# kube-proxy, CoreDNS, the pause program, plus helm and the image registry that
# images/build.sh hands images to containerd through) from the Go module proxy,
# cached under $LMFORGE_CACHE/bin/k8s-<version>/.
# Each binary is skipped if it is already in the cache.
#
#   tests/cluster/build.sh          # prints the bin dir on the last line
set -euo pipefail

# 1.35 is the last line whose kubelet runs on containerd 1.x (Debian bookworm has 1.6).
K8S_VERSION=v1.35.4          # k8s.io/kubernetes; staging modules are v0.<minor>.<patch>
ETCD_VERSION=v3.6.16         # go.etcd.io/etcd/server/v3
HELM_VERSION=v3.19.0         # helm.sh/helm/v3
COREDNS_VERSION=v1.14.7      # github.com/coredns/coredns (its client-go is v0.35)
REGISTRY_VERSION=v3.1.2      # github.com/distribution/distribution/v3 (the registry)
KUEUE_VERSION=v0.17.0        # sigs.k8s.io/kueue
KUBERAY_VERSION=v1.5.0       # github.com/ray-project/kuberay/ray-operator

CACHE=${LMFORGE_CACHE:-$HOME/.cache/lmforge}
BIN=$CACHE/bin/k8s-$K8S_VERSION
mkdir -p "$BIN"

export CGO_ENABLED=0
# Scratch space next to $BIN, so that installing a binary is a rename on one
# filesystem: an interrupted build never leaves a partial binary in $BIN.
WORK=$(mktemp -d "$CACHE/bin/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

log() { echo "build.sh: $*" >&2; }

# Move freshly built binaries from $1 into $BIN.
install_from() {
  local dir=$1 name
  for name in "${@:2}"; do
    mv -f "$dir/$name" "$BIN/$name"
  done
}

build_kubernetes() {
  local want=() pkgs=() c
  for c in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy; do
    [[ -x $BIN/$c ]] || { want+=("$c"); pkgs+=("k8s.io/kubernetes/cmd/$c"); }
  done
  if ((${#want[@]} == 0)); then log "kubernetes $K8S_VERSION: cached"; return; fi
  log "kubernetes $K8S_VERSION: building ${want[*]}"
  local t0=$SECONDS mod=$WORK/k8s staging minor=${K8S_VERSION#v1.}
  mkdir -p "$mod/out" && cd "$mod"
  go mod init lmforge.local/k8s-build >/dev/null 2>&1
  # kubernetes' go.mod requires its staging modules at v0.0.0 and replaces them
  # with ./staging/...; replaces only work in the main module, so map each to
  # its published v0.<minor>.<patch> here instead.
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  staging=$(awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" {print $1}' "$gomod")
  local edits=(-require="k8s.io/kubernetes@$K8S_VERSION")
  for c in $staging; do edits+=(-replace="$c=$c@v0.$minor"); done
  go mod edit "${edits[@]}"
  go get "${pkgs[@]/%/@$K8S_VERSION}"
  local v=$K8S_VERSION maj=${K8S_VERSION#v}; maj=${maj%%.*}; local mi=${minor%%.*}
  local ld="-s -w" p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$v -X $p.gitMajor=$maj -X $p.gitMinor=$mi -X $p.gitTreeState=clean"
  done
  GOFLAGS=-mod=mod go build -trimpath -ldflags="$ld" -o out/ "${pkgs[@]}"
  install_from out "${want[@]}"
  log "kubernetes $K8S_VERSION: built in $((SECONDS - t0))s"
}

build_etcd() {
  if [[ -x $BIN/etcd ]]; then log "etcd $ETCD_VERSION: cached"; return; fi
  log "etcd $ETCD_VERSION: building"
  local t0=$SECONDS mod=$WORK/etcd
  mkdir -p "$mod/out" && cd "$mod"
  go mod init lmforge.local/etcd >/dev/null 2>&1
  # Same as etcd's own main.go (module go.etcd.io/etcd/v3).
  cat > main.go <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  GOFLAGS=-mod=mod go build -trimpath -ldflags="-s -w" -o out/etcd .
  install_from out etcd
  log "etcd $ETCD_VERSION: built in $((SECONDS - t0))s"
}

# `go install <package>@<version>` as $BIN/<name>.
build_go() {
  local name=$1 version=$2 package=$3 ldflags=${4:-}
  if [[ -x $BIN/$name ]]; then log "$name $version: cached"; return; fi
  log "$name $version: building"
  local t0=$SECONDS
  mkdir -p "$WORK/$name"
  GOBIN=$WORK/$name go install -trimpath -ldflags="-s -w $ldflags" "$package@$version"
  install_from "$WORK/$name" "$name"
  log "$name $version: built in $((SECONDS - t0))s"
}

# The pod sandbox's program: kubernetes' own pause.c (in the module's build/), linked statically.
build_pause() {
  if [[ -x $BIN/pause ]]; then log "pause: cached"; return; fi
  local dir
  dir=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  gcc -Os -static -DVERSION="$K8S_VERSION" -o "$WORK/pause" "$dir/build/pause/linux/pause.c"
  strip "$WORK/pause"
  install_from "$WORK" pause
  log "pause: built"
}

# Kueue's binary, and the manifests tests/cluster/kueue.py applies (its CRDs and webhook
# configurations) from the same module, so that the cache alone starts it.
build_kueue() {
  build_go kueue "$KUEUE_VERSION" sigs.k8s.io/kueue/cmd/kueue \
    "-X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION"
  local out=$BIN/kueue-manifests
  if [[ -f $out/webhook.yaml ]]; then log "kueue manifests: cached"; return; fi
  local dir
  dir=$(go mod download -json "sigs.k8s.io/kueue@$KUEUE_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  mkdir -p "$WORK/kueue-manifests/crds"
  cp "$dir"/config/components/crd/bases/*.yaml "$WORK/kueue-manifests/crds/"
  cp "$dir/config/components/webhook/manifests.yaml" "$WORK/kueue-manifests/webhook.yaml"
  rm -rf "$out" && mv "$WORK/kueue-manifests" "$out"
  log "kueue manifests: copied"
}

# KubeRay's operator, and its CRDs (tests/cluster/kuberay.py applies them) from the same module.
build_kuberay() {
  build_go ray-operator "$KUBERAY_VERSION" github.com/ray-project/kuberay/ray-operator
  local out=$BIN/kuberay-crds
  if [[ -f $out/ray.io_rayclusters.yaml ]]; then log "kuberay CRDs: cached"; return; fi
  local dir
  dir=$(go mod download -json "github.com/ray-project/kuberay/ray-operator@$KUBERAY_VERSION" |
    sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  mkdir -p "$WORK/kuberay-crds"
  cp "$dir"/config/crd/bases/*.yaml "$WORK/kuberay-crds/"
  rm -rf "$out" && mv "$WORK/kuberay-crds" "$out"
  log "kuberay CRDs: copied"
}

T0=$SECONDS
build_etcd
build_kubernetes
build_pause
build_go coredns "$COREDNS_VERSION" github.com/coredns/coredns
build_go registry "$REGISTRY_VERSION" github.com/distribution/distribution/v3/cmd/registry
build_go helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm \
  "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
build_kueue
build_kuberay
log "all done in $((SECONDS - T0))s"
echo "$BIN"
