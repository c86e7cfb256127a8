#!/usr/bin/env bash
# k8s-testbins.sh: build (once) and cache the real Kubernetes binaries the envtest and cluster tests run
# (etcd, kube-apiserver, ...), from the Go module proxy; nothing prebuilt is downloaded.
# Prints the directory holding them on stdout (use it as KUBEBUILDER_ASSETS for envtest).
#
#   K8S_VERSION   k8s.io/kubernetes release          (default v1.36.3)
#   ETCD_VERSION  go.etcd.io/etcd/server/v3 release  (default v3.6.8, what k8s 1.36 pins)
#   COMPONENTS    cmd/ names under k8s.io/kubernetes  (default "kube-apiserver kube-controller-manager")
#                 also possible: kube-scheduler kubelet kubectl
#   K8S_BIN_CACHE cache root                          (default $HOME/.cache/k8s-testbins)
set -euo pipefail
K8S_VERSION=${K8S_VERSION:-v1.36.3}
ETCD_VERSION=${ETCD_VERSION:-v3.6.8}
COMPONENTS=${COMPONENTS:-"kube-apiserver kube-controller-manager"}
CACHE=${K8S_BIN_CACHE:-$HOME/.cache/k8s-testbins}
GOVER=$(go env GOVERSION)
OUT=$CACHE/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-$GOVER
log() { echo "k8s-testbins: $*" >&2; }

missing=""
for c in etcd $COMPONENTS; do [ -x "$OUT/$c" ] || missing="$missing $c"; done
if [ -z "$missing" ]; then echo "$OUT"; exit 0; fi
# One build at a time (test packages run this in parallel): wait for the
# other, then build only what it did not.
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
missing=""
for c in etcd $COMPONENTS; do [ -x "$OUT/$c" ] || missing="$missing $c"; done
if [ -z "$missing" ]; then echo "$OUT"; exit 0; fi
log "building$missing into $OUT"
mkdir -p "$OUT"
SRC=$CACHE/src; mkdir -p "$SRC"

# --- etcd: tiny main around etcdmain ---------------------------------------
if [[ " $missing " == *" etcd "* ]]; then
  d=$SRC/etcd-$ETCD_VERSION; mkdir -p "$d"
  cat > "$d/main.go" <<'EOF'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
  printf 'module local/etcdbin\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" > "$d/go.mod"
  (cd "$d" && go mod tidy >&2 && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$OUT/etcd.tmp" . && mv "$OUT/etcd.tmp" "$OUT/etcd")
fi

# --- Kubernetes components from k8s.io/kubernetes ---------------------------
kmissing=$(echo "$missing" | sed 's/\betcd\b//g' | xargs || true)
if [ -n "$kmissing" ]; then
  d=$SRC/kubernetes-$K8S_VERSION; mkdir -p "$d"
  kmod=$(cd "$d" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  gov=$(awk '$1=="go"{print $2; exit}' "$kmod")
  # staging modules are required as v0.0.0 and replaced by ./staging/... in k8s.io/kubernetes itself;
  # replace directives of dependencies are ignored, so pin them to the published v0.X.Y here.
  staging=$(awk '/^require \(/{r=1;next} r&&/^\)/{r=0} r&&$2=="v0.0.0"{print $1}' "$kmod")
  sv="v0.${K8S_VERSION#v1.}"
  {
    printf 'module local/k8sbins\n\ngo %s\n\nrequire k8s.io/kubernetes %s\n\ntool (\n' "$gov" "$K8S_VERSION"
    for c in $COMPONENTS; do printf '\tk8s.io/kubernetes/cmd/%s\n' "$c"; done
    printf ')\n\nreplace (\n'
    for m in $staging; do printf '\t%s => %s %s\n' "$m" "$m" "$sv"; done
    printf ')\n'
  } > "$d/go.mod"
  rm -f "$d/go.sum"
  (cd "$d" && go mod tidy >&2)
  minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  for c in $kmissing; do
    (cd "$d" && CGO_ENABLED=0 go build -trimpath -ldflags="$ld" -o "$OUT/$c.tmp" "k8s.io/kubernetes/cmd/$c" && mv "$OUT/$c.tmp" "$OUT/$c")
  done
fi
echo "$OUT"
