#!/usr/bin/env bash
# Two corelay binaries side by side in one run (an engine change "before" and "after"):
# idle ws and wss bytes per connection at 10k, echo msgs/s and gateway CPU per message
# (100 connections, 32 B, one in flight, one shard pinned to CPU 0, load on CPU 1), and echo
# through the ring (`corelay demo --shards 1`, gateway + backend on CPU 0). Runs alternate
# A, B, A, B... so that a host's background load falls on both alike; prints medians.
#
#   ab.sh BEFORE_BIN AFTER_BIN BENCH_BIN [RUNS] [OUT_DIR]
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: $0 BEFORE_BIN AFTER_BIN BENCH_BIN [RUNS] [OUT_DIR]" >&2; exit 2; }
A=$(realpath "$1"); B=$(realpath "$2"); BENCH=$(realpath "$3"); RUNS=${4:-2}
OUT=${5:-$(mktemp -d /tmp/corelay-ab.XXXXXX)}
mkdir -p "$OUT"
command -v openssl >/dev/null || { echo "needs openssl (wss certificate)" >&2; exit 2; }
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -addext basicConstraints=critical,CA:FALSE -keyout "$OUT/k.pem" -out "$OUT/c.pem" 2>/dev/null
cat >"$OUT/wss.toml" <<EOF
[server]
listen = ["127.0.0.1:0"]
tls_listen = ["127.0.0.1:0"]
shards = 1
pin = false
[backend]
mode = "echo"
[tls]
cert = "$OUT/c.pem"
key = "$OUT/k.pem"
EOF

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# start LOG CMD...: runs CMD in the background, waits for its ready line, sets GW_PID.
start() {
    local log=$1; shift
    "$@" >"$log" 2>&1 &
    GW_PID=$!
    PIDS+=("$GW_PID")
    for _ in $(seq 200); do grep -q "listening on ws://" "$log" && return 0; sleep 0.05; done
    echo "gateway did not start: $log" >&2; exit 1
}
addr() { sed -n "s#.*listening on $2://\([^/]*\)/.*#\1#p" "$1" | head -1; }
stop() { kill -TERM "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

for r in $(seq "$RUNS"); do
    for side in A B; do
        bin=$A; [ $side = B ] && bin=$B
        d="$OUT/$side-$r"; mkdir -p "$d"
        # Echo, one shard pinned to CPU 0, the client on CPU 1.
        start "$d/echo.log" taskset -c 0 "$bin" run --echo --listen 127.0.0.1:0 --shards 1 --no-admin
        taskset -c 1 "$BENCH" echo --url "ws://$(addr "$d/echo.log" ws)/" --connections 100 --size 32 \
            --inflight 1 --duration 10 --warmup 2 --server-pids "$GW_PID" --json "$d/echo.json" \
            >/dev/null 2>>"$d/bench.log"
        stop "$GW_PID"
        # Through the ring: gateway and its demo backend (a child: same affinity) on CPU 0.
        start "$d/ring.log" taskset -c 0 "$bin" demo --listen 127.0.0.1:0 --admin 127.0.0.1:0 --shards 1
        bk=$(sed -n 's/.*pid=\([0-9]*\).*demo backend started.*/\1/p; s/.*demo backend started.*pid=\([0-9]*\).*/\1/p' "$d/ring.log" | head -1)
        for _ in $(seq 200); do grep -q "demo backend attached\|backend attached" "$d/ring.log" && break; sleep 0.05; done
        taskset -c 1 "$BENCH" echo --url "ws://$(addr "$d/ring.log" ws)/" --connections 100 --size 32 \
            --inflight 1 --duration 10 --warmup 2 --server-pids "$GW_PID,$bk" --json "$d/ring.json" \
            >/dev/null 2>>"$d/bench.log"
        stop "$GW_PID"
        # Idle density, ws then wss, 10k connections.
        start "$d/ws.log" "$bin" run --echo --listen 127.0.0.1:0 --shards 1 --no-admin
        "$BENCH" density --url "ws://$(addr "$d/ws.log" ws)/" --connections 10000 --step 5000 --workers 1 \
            --source-ips 2 --hold 5 --settle 2 --gateway-pids "$GW_PID" --json "$d/ws.json" \
            >/dev/null 2>>"$d/bench.log"
        stop "$GW_PID"
        start "$d/wss.log" "$bin" run --config "$OUT/wss.toml" --no-admin
        "$BENCH" density --url "wss://$(addr "$d/wss.log" wss)/" --tls --ca "$OUT/c.pem" --connections 10000 \
            --step 5000 --workers 1 --source-ips 2 --hold 5 --settle 2 --gateway-pids "$GW_PID" \
            --json "$d/wss.json" >/dev/null 2>>"$d/bench.log"
        stop "$GW_PID"
        echo "run $r $side done" >&2
    done
done

python3 - "$OUT" "$RUNS" "$A" "$B" <<'EOF'
import json, statistics, sys, os
out, runs, a, b = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def load(side, r, name):
    return json.load(open(os.path.join(out, f"{side}-{r}", name)))
def held(j):
    return j["steps"][-1]["user_bytes_per_conn"]
rows = [
    ("idle ws, user B/conn at 10k", lambda s, r: held(load(s, r, "ws.json"))),
    ("idle wss, user B/conn at 10k", lambda s, r: held(load(s, r, "wss.json"))),
    ("echo msgs/s (100 conns, 32 B, 1 in flight)", lambda s, r: load(s, r, "echo.json")["msgs_per_sec"]),
    ("echo gateway CPU µs/msg", lambda s, r: load(s, r, "echo.json")["server_cpu"][0]["us_per_msg"]),
    ("ring msgs/s (demo, 1 shard)", lambda s, r: load(s, r, "ring.json")["msgs_per_sec"]),
    ("ring gateway + backend CPU µs/msg", lambda s, r: sum(c["us_per_msg"] for c in load(s, r, "ring.json")["server_cpu"])),
]
print(f"A = {a}\nB = {b}\n")
print("| figure | A runs | B runs | A median | B median | B/A |")
print("|---|---|---|---:|---:|---:|")
for name, f in rows:
    va = [f("A", r) for r in range(1, runs + 1)]
    vb = [f("B", r) for r in range(1, runs + 1)]
    ma, mb = statistics.median(va), statistics.median(vb)
    fmt = lambda xs: ", ".join(f"{x:,.1f}" for x in xs)
    print(f"| {name} | {fmt(va)} | {fmt(vb)} | {ma:,.1f} | {mb:,.1f} | {mb / ma:.2f} |")
EOF
