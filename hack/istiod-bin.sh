#!/usr/bin/env bash
# istiod-bin.sh: build (once) and cache Istio's istiod (pilot-discovery) from the Go module proxy, at
# the istio.io/istio version test/interop/go.mod requires; nothing prebuilt is downloaded and nothing
# of Istio's lands in this repository. Prints the binary's path on stdout.
# A first build took about 950 CPU-seconds here (~8 minutes on 2 idle CPUs; the Go build cache already
# held the Kubernetes test binaries' dependencies) and peaked at about 2.5 GB of memory.
#
#   ISTIO_VERSION    istio.io/istio version (default: the one test/interop/go.mod requires)
#   ISTIOD_BIN_CACHE cache root             (default $HOME/.cache/istiod-bin)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${ISTIO_VERSION:-}" ]; then
  ISTIO_VERSION=$(awk '$1=="istio.io/istio"{print $2; exit}' "$ROOT/test/interop/go.mod")
fi
[ -n "$ISTIO_VERSION" ] || { echo "istiod-bin: no istio.io/istio in test/interop/go.mod" >&2; exit 1; }
CACHE=${ISTIOD_BIN_CACHE:-$HOME/.cache/istiod-bin}
GOVER=$(go env GOVERSION)
OUT=$CACHE/istio-$ISTIO_VERSION-$GOVER
BIN=$OUT/pilot-discovery
log() { echo "istiod-bin: $*" >&2; }

if [ -x "$BIN" ]; then echo "$BIN"; exit 0; fi
# One build at a time: wait for another, which may have built it.
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
if [ -x "$BIN" ]; then echo "$BIN"; exit 0; fi
log "building istio.io/istio/pilot/cmd/pilot-discovery@$ISTIO_VERSION into $OUT"
mkdir -p "$OUT"
d=$CACHE/src/istio-$ISTIO_VERSION; mkdir -p "$d"
imod=$(cd "$d" && GOFLAGS=-mod=mod go mod download -json "istio.io/istio@$ISTIO_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
gov=$(awk '$1=="go"{print $2; exit}' "$imod")
# A module of its own that requires only istio.io/istio: minimal version selection then picks the
# dependency versions Istio's own go.mod lists (it has no replace directives to carry over).
printf 'module local/istiodbin\n\ngo %s\n\nrequire istio.io/istio %s\n\ntool istio.io/istio/pilot/cmd/pilot-discovery\n' \
  "$gov" "$ISTIO_VERSION" > "$d/go.mod"
rm -f "$d/go.sum"
(cd "$d" && go mod tidy >&2)
rev=${ISTIO_VERSION##*-}
ld="-s -w"
for kv in buildVersion=$ISTIO_VERSION buildGitRevision=$rev buildStatus=Clean buildTag=$ISTIO_VERSION buildOS=$(go env GOOS) buildArch=$(go env GOARCH); do
  ld="$ld -X istio.io/istio/pkg/version.$kv"
done
(cd "$d" && CGO_ENABLED=0 go build -trimpath -ldflags="$ld" -o "$BIN.tmp" istio.io/istio/pilot/cmd/pilot-discovery && mv "$BIN.tmp" "$BIN")
echo "$BIN"
