#!/usr/bin/env bash
# Prints the path of a Python interpreter that has the test suite's pinned packages
# (tools/py/requirements.txt), building the venv once into a cache keyed by the pins and the
# interpreter version. Idempotent and safe to run from several test processes at once (flock).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
req="$here/requirements.txt"
py="${PYTHON:-python3}"
key="$( (cat "$req"; "$py" -c 'import sys; print(sys.version)') | sha256sum | cut -c1-16)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/corelay"
venv="$cache/pytest-$key"
mkdir -p "$cache"
exec 9>"$cache/pytest.lock"
flock 9
if [ ! -x "$venv/bin/python" ]; then
  tmp="$venv.tmp.$$"
  rm -rf "$tmp"
  "$py" -m venv "$tmp" >&2
  "$tmp/bin/python" -m pip install -q --disable-pip-version-check --no-deps --require-hashes -r "$req" >&2
  # venvs hard-code their own path in scripts; only the interpreter is used, so a rename is fine.
  mv "$tmp" "$venv"
fi
echo "$venv/bin/python"
