#!/usr/bin/env bash
# Runs every fuzz target in the module for the given time each (default 20s).
# New interesting inputs land in the package's testdata/fuzz/ corpus; commit
# the ones that found bugs.
set -euo pipefail
cd "$(dirname "$0")/.."
t=${1:-20s}
for pkg in $(go list ./...); do
  for f in $(go test -list '^Fuzz' "$pkg" 2>/dev/null | grep '^Fuzz' || true); do
    echo "== $pkg $f ($t)"
    go test -run '^$' -fuzz "^${f}\$" -fuzztime "$t" "$pkg"
  done
done
