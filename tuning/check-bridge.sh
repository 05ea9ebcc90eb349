#!/usr/bin/env bash
# corelay NATS bridge check: NATS reachable, JetStream on, the events stream and the presence
# bucket with the wanted replica count and a lease, the gateway's attach socket, and the
# running bridge answering with its counters. Read-only.
#
#   tuning/check-bridge.sh [--nats URLS] [--gateway-id ID] [--attach PATH] [--replicas N]
#
# Exit: 0 all ok, 1 something failed, 2 usage error. BRIDGE=/path/to/corelay-nats-bridge
# overrides the binary (default: on PATH, else target/{release,debug}).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --nats|--gateway-id|--attach|--replicas) [ $# -ge 2 ] || { echo "missing value for $1" >&2; exit 2; }
      args+=("$1" "$2"); shift 2 ;;
    -h|--help) sed -n 2,10p "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
bin="${BRIDGE:-}"
if [ -z "$bin" ]; then
  if command -v corelay-nats-bridge >/dev/null; then bin=corelay-nats-bridge
  elif [ -x "$HERE/../target/release/corelay-nats-bridge" ]; then bin="$HERE/../target/release/corelay-nats-bridge"
  elif [ -x "$HERE/../target/debug/corelay-nats-bridge" ]; then bin="$HERE/../target/debug/corelay-nats-bridge"
  else echo "FAIL corelay-nats-bridge not found (cargo build -p corelay-nats --release)"; exit 1; fi
fi
# Open files: one bridge holds few sockets, but the NATS client buffers per connection.
nofile=$(ulimit -n)
if [ "$nofile" -lt 4096 ]; then echo "WARN ulimit -n is $nofile (4096 or more recommended)"; else echo "ok   ulimit -n $nofile"; fi
CORELAY_LOG=${CORELAY_LOG:-warn} "$bin" check "${args[@]}" || exit 1
