#!/usr/bin/env bash
# The local-mode demo: builds Ambit, brings up samples/demo (two nodes, a
# client pod and two echo pods as network namespaces), sends traffic, prints
# what happened, and tears everything down. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
make --no-print-directory build >/dev/null
export PATH="$PWD/bin:$PATH"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

cleanup() { step "ambit local down"; ambit local down; }
trap cleanup EXIT

step "ambit local up -f samples/demo"
ambit local up -f samples/demo

step "ambit local status"
ambit local status

status=$(ambit local status -o json)
pod_ip() { jq -r --arg n "$1" '.pods[] | select(.namespace=="demo" and .name==$n) | .ip' <<<"$status"; }
client_ip=$(pod_ip client)
echo1_ip=$(pod_ip echo-1)
echo2_ip=$(pod_ip echo-2)
banner_ip=$(pod_ip banner)

step "client ($client_ip, node1) -> echo-1 ($echo1_ip, same node), by pod IP"
ambit local exec demo/client -- ambit sample client "http://$echo1_ip:8080/" -n 5

step "client ($client_ip, node1) -> echo-2 ($echo2_ip, other node), by pod IP"
ambit local exec demo/client -- ambit sample client "http://$echo2_ip:8080/" -n 5

step "what echo-2 saw (its reply to one request)"
ambit local exec demo/client -- curl -sS "http://$echo2_ip:8080/"

step "client -> banner ($banner_ip:2525), a server-first protocol"
ambit local exec demo/client -- ambit sample client "banner://$banner_ip:2525" -n 2
