#!/usr/bin/env bash
# The test command: installs what the tests need (Debian packages), then runs
# every test CI runs (vet, unit, fuzz smoke, end-to-end in network
# namespaces, interop with upstream Istio's Go HBONE). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
make test "$@"
