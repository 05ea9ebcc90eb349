#!/usr/bin/env bash
# Scale-out on NATS vs one host, in one run (docs/benchmarks.md "Scale-out on NATS"):
# cross-host push, a room of 10k members over three gateways, registry lookups, each next
# to the same work on one gateway with a backend on its rings. Plain loopback processes (no
# network namespaces): a three-node nats-server cluster, three gateway+bridge "hosts", two
# workers, the reference gateway, and client processes of corelay-nats-bench. Bounded:
# every wait is capped by --timeout-s (default 180 s) and every load is a fixed count.
#
#   tools/bench/scripts/nats_scaleout.sh [corelay-nats-bench run options...]
#
# Needs nats-server (tools/test.sh installs Debian's package) and an open-files limit of at
# least 20000 (each side's 10k client sockets are spread over several processes; the one-host
# gateway holds 10k).
set -euo pipefail
cd "$(dirname "$0")/../../.."
command -v nats-server >/dev/null || { echo "needs nats-server (apt-get install nats-server)" >&2; exit 2; }
ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge 20000 ] || { echo "open-files limit $(ulimit -n) < 20000" >&2; exit 2; }
cargo build --release -q -p corelay --bin corelay -p corelay-nats --bins
TARGET=${CARGO_TARGET_DIR:-target}
set -x
"$TARGET/release/corelay-nats-bench" run "$@"
