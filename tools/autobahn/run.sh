#!/usr/bin/env bash
# Autobahn|Testsuite (fuzzingclient) against a WebSocket echo server, checked against
# tools/autobahn/expected.txt.
#
#   tools/autobahn/run.sh HOST PORT [CASE ...]
#
# CASE: ids or patterns ("5.*", "7.1.6"); default every case in expected.txt (1.* - 11.*).
# Env: AUTOBAHN_REPORT  report directory (default $TMPDIR/corelay-autobahn-report; emptied
#                       first); AUTOBAHN_TIMEOUT seconds for the whole run (default 900);
#      PYTHON           interpreter for the venv (default python3).
# Builds the pinned venv on first use (setup.sh; cached). Exit 0 when every case passed.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 HOST PORT [CASE ...]" >&2
  exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$(bash "$here/setup.sh")"
report="${AUTOBAHN_REPORT:-${TMPDIR:-/tmp}/corelay-autobahn-report}"
rm -rf "$report"
mkdir -p "$report"
host="$1" port="$2"
shift 2
echo "autobahn: fuzzingclient -> ws://$host:$port, report and log in $report" >&2
start=$(date +%s)
# The suite logs every case to stdout; keep that in the report directory, show the verdict.
rc=0
PYTHONDONTWRITEBYTECODE=1 PYTHONWARNINGS=ignore \
  timeout --kill-after=10 "${AUTOBAHN_TIMEOUT:-900}" \
  "$venv/bin/python" "$here/client.py" --report "$report" "$host" "$port" "$@" \
  >"$report/client.log" 2>&1 || rc=$?
grep "^autobahn: " "$report/client.log" || true
echo "autobahn: finished in $(($(date +%s) - start))s, exit $rc" >&2
if [ "$rc" -ne 0 ]; then
  case $rc in
    124 | 137) echo "autobahn: timed out after ${AUTOBAHN_TIMEOUT:-900}s" >&2 ;;
  esac
  echo "autobahn: last lines of $report/client.log:" >&2
  tail -n 20 "$report/client.log" >&2
fi
exit "$rc"
