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
  # Go's fuzzing coordinator sometimes gives up on a busy worker at the end
  # of -fuzztime ("context deadline exceeded", no failing input written);
  # that run is repeated once. A real failure writes its input under
  # testdata/fuzz and fails at once.
  for attempt in 1 2; do
    out=$(go test -run='^$' -fuzz="^${name}\$" -fuzztime="$fuzztime" "$pkg" 2>&1) && { echo "$out"; break; }
    echo "$out"
    if [ "$attempt" = 1 ] && grep -q 'context deadline exceeded' <<<"$out" && ! grep -q 'Failing input written' <<<"$out"; then
      echo "fuzz: $pkg $name: the fuzzing engine timed out a worker (no failing input); running it again"
      continue
    fi
    echo "fuzz: $pkg $name FAILED" >&2
    status=1
    break
  done
done < <(git ls-files -co --exclude-standard '*_test.go' | grep -v '^test/interop/' | xargs grep -Hn '^func Fuzz' || true)
exit $status
