#!/usr/bin/env bash
# Prints the node_modules directory holding the browser players the tests drive (mpegts.js,
# hls.js: exact versions and integrity hashes in tools/browser/package-lock.json), installing
# them once with `npm ci` into a cache keyed by the lock file. Idempotent and safe to run from
# several test processes at once (flock). No install scripts run.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
key="$(cat "$here/package.json" "$here/package-lock.json" | sha256sum | cut -c1-16)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/corelay"
dir="$cache/browser-$key"
mkdir -p "$cache"
exec 9>"$cache/browser.lock"
flock 9
if [ ! -f "$dir/node_modules/.complete" ]; then
  tmp="$dir.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  cp "$here/package.json" "$here/package-lock.json" "$tmp/"
  (cd "$tmp" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
  touch "$tmp/node_modules/.complete"
  rm -rf "$dir"
  mv "$tmp" "$dir"
fi
echo "$dir/node_modules"
