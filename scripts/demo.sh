#!/usr/bin/env bash
# The local-mode demo: builds Ambit, brings up samples/demo (two nodes, a
# client pod and two echo pods as network namespaces, in a namespace that is
# part of the ambient mesh), sends traffic, shows that it travelled in mTLS
# with each workload's identity, and tears everything down. Run as root.
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

echo_vip=$(jq -r '.services[] | select(.namespace=="demo" and .name=="echo") | .clusterIP' <<<"$status")

step "client ($client_ip, node1) -> Service echo ($echo_vip:8080): ztunnel picks an endpoint"
ambit local exec demo/client -- ambit sample client "http://$echo_vip:8080/" -n 6 -c 3 --new-conn-per-request -q

step "client ($client_ip, node1) -> echo-1 ($echo1_ip, same node), by pod IP"
ambit local exec demo/client -- ambit sample client "http://$echo1_ip:8080/" -n 5

step "client ($client_ip, node1) -> echo-2 ($echo2_ip, other node), by pod IP"
ambit local exec demo/client -- ambit sample client "http://$echo2_ip:8080/" -n 5

step "what echo-2 saw (its reply to one request)"
ambit local exec demo/client -- curl -sS "http://$echo2_ip:8080/"

step "client -> banner ($banner_ip:2525), a server-first protocol"
ambit local exec demo/client -- ambit sample client "banner://$banner_ip:2525" -n 2

step "what the ztunnels saw: every connection in HBONE (mutual TLS), with SPIFFE identities"
state=/run/ambit/local
jq -r 'select(.msg=="connection complete" and .direction=="outbound") |
  "node1 outbound  \(."src.identity") -> \(."dst.identity" // "-")  via \(."dst.addr")  (\(.route))"' \
  "$state/ztunnel-node1.log" | sort | uniq -c
jq -r 'select(.msg=="connection complete" and .direction=="inbound") |
  "node2 inbound   \(."src.identity" // "plaintext") -> \(."dst.identity")  for \(."dst.addr")"' \
  "$state/ztunnel-node2.log" | sort | uniq -c

step "ztunnel metrics on node2 (Istio's names and labels)"
ip netns exec ambit-node2 curl -sS http://127.0.0.1:15020/metrics | grep '^istio_tcp_connections_opened_total' |
  sed -E 's/.*destination_principal="([^"]*)".*source_principal="([^"]*)".*\} ([0-9]+)$/istio_tcp_connections_opened_total{source_principal="\2", destination_principal="\1", ...} \3/'
