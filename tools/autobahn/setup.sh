#!/usr/bin/env bash
# Build (once) the venv holding the Autobahn|Testsuite fuzzingclient, ported to Python 3.
# Prints the venv's path on stdout; progress goes to stderr.
#
# The venv lives in ${XDG_CACHE_HOME:-~/.cache}/corelay/autobahn-<key>, where the key hashes
# everything that shapes it (requirements.txt, port.py, py3compat.py, the Python version):
# a second run finds it and does nothing; changing any of those builds a new one beside it.
# It is built under a temporary name and renamed when complete, so an interrupted or
# concurrent build never leaves a half-made venv where the next run would use it.
# Env: PYTHON (default python3; 3.11 is what CI has).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
log() { echo "autobahn-setup: $*" >&2; }

pyver="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
key="$( { cat "$here/requirements.txt" "$here/port.py" "$here/py3compat.py"; echo "python $pyver"; } \
  | sha256sum | cut -c1-16)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/corelay"
venv="$cache/autobahn-$key"
if [ -f "$venv/.complete" ]; then
  echo "$venv"
  exit 0
fi

mkdir -p "$cache"
tmp="$(mktemp -d "$cache/.autobahn-$key.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
log "building $venv (Python $pyver; pinned packages from tools/autobahn/requirements.txt)"
"$python" -m venv "$tmp"
# --no-deps: requirements.txt is the complete closure; --require-hashes: and nothing else.
"$tmp/bin/python" -m pip install --quiet --disable-pip-version-check --no-compile \
  --no-deps --require-hashes -r "$here/requirements.txt" >&2
"$tmp/bin/python" -m pip check >&2
"$tmp/bin/python" "$here/port.py" "$("$tmp/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" >&2
# Smoke test: every case module imports and the case table is complete.
"$tmp/bin/python" -W ignore "$here/client.py" --count-cases >&2

# Only bin/python is ever called (never the scripts, whose #! lines name the temporary path),
# and a venv's python finds its packages relative to itself, so the renamed venv works.
touch "$tmp/.complete"
if ! mv -T "$tmp" "$venv" 2>/dev/null; then
  # Another run completed the same venv first: use that one.
  [ -f "$venv/.complete" ] || { log "cannot create $venv"; exit 1; }
  echo "$venv"
  exit 0
fi
trap - EXIT
log "ready: $venv"
echo "$venv"
