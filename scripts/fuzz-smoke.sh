#!/usr/bin/env bash
# Runs every Go fuzz target of the module for a short, bounded time
# (FUZZTIME, default 10s each). Seed corpora under testdata/fuzz also run as
# plain tests in `go test`; this adds a little fresh exploration in CI.
set -euo pipefail
fuzztime=${FUZZTIME:-10s}
status=0
while IFS=: read -r file _ line; do
  name=$(sed -nE 's/^func (Fuzz[A-Za-z0-9_]+)\(.*/\1/p' <<<"$line")
  [ -n "$name" ] || continue
  pkg=./$(dirname "$file")
  echo "fuzz: $pkg $name ($fuzztime)"
  if ! go test -run='^$' -fuzz="^${name}\$" -fuzztime="$fuzztime" "$pkg"; then
    echo "fuzz: $pkg $name FAILED" >&2
    status=1
  fi
done < <(git ls-files -co --exclude-standard '*_test.go' | grep -v '^test/interop/' | xargs grep -Hn '^func Fuzz' || true)
exit $status
