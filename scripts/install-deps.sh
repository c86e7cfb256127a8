#!/usr/bin/env bash
# Installs what building, the demo and the tests need on a Debian machine.
# Idempotent: packages already present are not reinstalled. Must run as root.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
  echo "install-deps: must run as root (Ambit's local mode creates network namespaces)" >&2
  exit 1
fi

# Debian packages: command -> package.
declare -A want=(
  [ip]=iproute2
  [nft]=nftables
  [curl]=curl
  [tcpdump]=tcpdump
  [iperf3]=iperf3
  [stunnel4]=stunnel4
  [make]=make
  [git]=git
  [jq]=jq
  [nginx]=nginx-light
  # the cluster tier (make test-cluster): the node's runtime
  [containerd]=containerd
  [runc]=runc
)
missing=()
for cmd in "${!want[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${want[$cmd]}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Packages with daemons (nginx) must not start them: the benchmark runs
  # its own, inside a pod. policy-rc.d 101 forbids service starts.
  policy=/usr/sbin/policy-rc.d
  had_policy=0
  [ -e "$policy" ] && had_policy=1
  if [ "$had_policy" = 0 ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ "$had_policy" = 0 ] && rm -f "$policy"
fi

if ! command -v go >/dev/null 2>&1; then
  echo "install-deps: Go is required (go 1.26 or newer on PATH)" >&2
  exit 1
fi
echo "install-deps: ok ($(go version))"
