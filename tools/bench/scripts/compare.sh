#!/usr/bin/env bash
# Side-by-side run: builds corelay and corelay-bench (release), then runs `corelay-bench compare`
# (servers pinned to CPU 0, the load to CPU 1; see docs/benchmarks.md, "io_uring groundwork /
# peers"). Extra arguments go to `compare`, e.g.
#   tools/bench/scripts/compare.sh --uws /path/to/uWebSockets/EchoServer --runs 2 --json out.json
set -euo pipefail
cd "$(dirname "$0")/../../.."
# Two builds: `--bin corelay` would apply to both packages.
nice -n "${NICE:-0}" cargo build --release -q -p corelay --bin corelay
nice -n "${NICE:-0}" cargo build --release -q -p corelay-bench
target="${CARGO_TARGET_DIR:-target}/release"
exec "$target/corelay-bench" compare --corelay "$target/corelay" "$@"
