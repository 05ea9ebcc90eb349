#!/usr/bin/env bash
# Echo through the ring with every SDK, and Python `websockets` in-process, under the same load:
# msgs/s, latency and CPU µs per message of the gateway and of the backend
# (corelay-bench echo --server-pids). One run:
#
#   tools/bench/scripts/sdk_echo.sh [--reps 3] [--duration 10] [--connections 100] [--size 32]
#                                   [--inflight "1 16"] [--only rust,c,go,py,py-aio,...]
#                                   [--out DIR] [--no-build]
#
# Cases (each on a fresh release gateway: `corelay run`, ring mode, 1 shard; the backend is
# the SDK's backend-check contract example, which echoes any binary message):
#   rust      corelay backend --contract (the Rust SDK)
#   c         sdk/c/examples/echo_rooms_auth.c (-O2, static libcorelay_backend.a)
#   go        sdk/go/examples/check_backend (cgo over the static library)
#   py        sdk/python/examples/check_backend.py, pure Python, blocking loop
#   py-aio    the same, asyncio loop
#   py-c      the same, blocking, CORELAY_PY_IMPL=c (ctypes over libcorelay_backend.so)
#   py-c-aio  the same, asyncio, CORELAY_PY_IMPL=c
#   py-ws     tools/bench/scripts/py_ws_echo.py: a Python `websockets` echo server, no gateway
#             (its CPU is in the backend column; the gateway column is empty)
# Every (case, inflight) runs --reps times; the table shows the repetition with the median
# msgs/s (its CPU and latency columns belong to that same run). JSON of every run in --out.
# Load generator, gateway and backend share the host's cores: the numbers are relative.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
REPS=3; DURATION=10; CONNS=100; SIZE=32; INFLIGHT="1 16"; BUILD=1
ONLY="rust,c,go,py,py-aio,py-c,py-c-aio,py-ws"
OUT="${TMPDIR:-/tmp}/corelay-sdk-echo.$$"
die() { echo "sdk_echo.sh: $*" >&2; exit 2; }
while (( $# )); do
    case "$1" in
        --reps) REPS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --connections) CONNS=$2; shift 2 ;;
        --size) SIZE=$2; shift 2 ;;
        --inflight) INFLIGHT=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        *) die "unknown option $1" ;;
    esac
done
target="${CARGO_TARGET_DIR:-$root/target}"
rel="$target/release"
mkdir -p "$OUT"
has() { [[ ",$ONLY," == *",$1,"* ]]; }

if (( BUILD )); then
    # Separately: `--bin corelay` would restrict the C library's package to a binary too.
    (cd "$root" && cargo build --release -p corelay --bin corelay \
        && cargo build --release -p corelay-backend-c -p corelay-bench)
fi
if [ ! -x "$rel/corelay" ] || [ ! -x "$rel/corelay-bench" ] || [ ! -e "$rel/libcorelay_backend.a" ]; then
    die "release binaries missing in $rel (run without --no-build)"
fi
# The static library alone in a directory: the C and Go examples link it in.
mkdir -p "$OUT/lib" && cp "$rel/libcorelay_backend.a" "$OUT/lib/"
if has c; then
    cc -std=c11 -O2 -o "$OUT/echo_c" "$root/sdk/c/examples/echo_rooms_auth.c" \
        -I"$root/sdk/c/include" -L"$OUT/lib" -lcorelay_backend -lgcc_s -lutil -lrt -lpthread -lm -ldl
fi
if has go; then
    (cd "$root/sdk/go" && GOCACHE="$target/go-cache" GOPATH="$target/go-path" GOFLAGS=-mod=mod \
        GOPROXY=off CGO_LDFLAGS="-L$OUT/lib" go build -o "$OUT/echo_go" ./examples/check_backend)
fi
PY="$(bash "$root/tools/py/env.sh")"   # pinned venv: websockets for py-ws

pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# wait_for FILE PATTERN PID: bounded poll (20 s) for a log line, failing if PID exits.
wait_for() {
    for ((t = 0; t < 200; t++)); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        kill -0 "$3" 2>/dev/null || die "process $3 exited: $(tail -5 "$1")"
        sleep 0.1
    done
    die "no '$2' in $1 within 20 s: $(tail -5 "$1")"
}

stop() {  # stop PID: SIGTERM, bounded wait, SIGKILL
    kill -TERM "$1" 2>/dev/null || return 0
    for ((t = 0; t < 50; t++)); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null || true
}

# start_gateway DIR: sets GW_PID, GW_PORT.
start_gateway() {
    cat > "$1/gw.toml" <<TOML
[server]
listen = ["127.0.0.1:0"]
shards = 1
pin = false
[backend]
mode = "ring"
attach_socket = "$1/attach.sock"
[log]
level = "warn,corelay=info"
TOML
    "$rel/corelay" run --config "$1/gw.toml" 2> "$1/gw.log" < /dev/null &
    GW_PID=$!; pids+=("$GW_PID")
    wait_for "$1/gw.log" 'listening on ws://' "$GW_PID"
    GW_PORT=$(grep -m1 -o 'listening on ws://[0-9.]*:[0-9]*' "$1/gw.log"); GW_PORT=${GW_PORT##*:}
}

# backend_cmd CASE: sets BCMD to the command line of the case's backend.
backend_cmd() {
    local ex="$root/sdk/python/examples/check_backend.py"
    case "$1" in
        rust) BCMD=("$rel/corelay" backend --contract) ;;
        c) BCMD=("$OUT/echo_c") ;;
        go) BCMD=("$OUT/echo_go") ;;
        py|py-c) BCMD=("$PY" "$ex") ;;
        py-aio|py-c-aio) BCMD=("$PY" "$ex" --asyncio) ;;
        *) die "unknown case $1" ;;
    esac
}

run_echo() {  # run_echo URL PIDS JSON INFLIGHT
    "$rel/corelay-bench" echo --url "$1" --connections "$CONNS" --size "$SIZE" \
        --duration "$DURATION" --warmup 1 --inflight "$4" --server-pids "$(printf %s "$2" | sed "s/[a-z]*=//g")" --json "$3" \
        2>> "$OUT/bench.log" > /dev/null
}

for case in rust c go py py-aio py-c py-c-aio py-ws; do
    has "$case" || continue
    for inflight in $INFLIGHT; do
        for ((r = 1; r <= REPS; r++)); do
            dir="$OUT/$case-if$inflight-r$r"; mkdir -p "$dir"
            if [[ $case == py-ws ]]; then
                "$PY" "$root/tools/bench/scripts/py_ws_echo.py" --port 0 > "$dir/server.log" 2>&1 &
                B_PID=$!; pids+=("$B_PID")
                wait_for "$dir/server.log" 'listening on ws://' "$B_PID"
                port=$(grep -m1 -o 'listening on ws://[0-9.]*:[0-9]*' "$dir/server.log"); port=${port##*:}
                run_echo "ws://127.0.0.1:$port/" "backend=$B_PID" "$dir/echo.json" "$inflight"
                stop "$B_PID"
            else
                start_gateway "$dir"
                impl=pure; [[ $case == py-c* ]] && impl=c
                backend_cmd "$case"
                CORELAY_ATTACH="$dir/attach.sock" CORELAY_PY_IMPL=$impl \
                    CORELAY_BACKEND_LIB="$rel/libcorelay_backend.so" PYTHONPATH="$root/sdk/python" \
                    "${BCMD[@]}" > "$dir/backend.log" 2>&1 < /dev/null &
                B_PID=$!; pids+=("$B_PID")
                wait_for "$dir/gw.log" 'backend attached' "$B_PID"
                run_echo "ws://127.0.0.1:$GW_PORT/" "gateway=$GW_PID,backend=$B_PID" "$dir/echo.json" "$inflight"
                stop "$B_PID"; stop "$GW_PID"
            fi
            echo "$case inflight $inflight rep $r: $(grep 'msg/s' "$OUT/bench.log" | tail -1)" >&2
        done
    done
done

echo
echo "echo, $CONNS connections x $SIZE B, ${DURATION}s measured (+1 s warm-up), median of $REPS by msgs/s; $(nproc) cores, load before: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$OUT" "$ONLY" "$INFLIGHT" "$REPS" <<'PY'
import json, os, sys
out, only, inflights, reps = sys.argv[1], sys.argv[2].split(","), sys.argv[3].split(), int(sys.argv[4])
names = {"rust": "Rust SDK", "c": "C (ABI)", "go": "Go (cgo)", "py": "Python, pure, blocking",
         "py-aio": "Python, pure, asyncio", "py-c": "Python over C ABI, blocking",
         "py-c-aio": "Python over C ABI, asyncio", "py-ws": "Python websockets in-process"}
print("| backend | inflight | msgs/s | p50 µs | p99 µs | gateway CPU µs/msg | backend CPU µs/msg | total CPU µs/msg |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for case in names:
    if case not in only:
        continue
    for i in inflights:
        runs = []
        for r in range(1, reps + 1):
            p = os.path.join(out, f"{case}-if{i}-r{r}", "echo.json")
            if os.path.exists(p):
                runs.append(json.load(open(p)))
        if not runs:
            continue
        runs.sort(key=lambda e: e["msgs_per_sec"])
        e = runs[len(runs) // 2]
        # --server-pids order: gateway then backend; the in-process server is one pid.
        cpu = [u["us_per_msg"] for u in e["server_cpu"]]
        gw, be = (cpu[0], cpu[1]) if len(cpu) == 2 else (None, cpu[0] if cpu else None)
        tot = (gw or 0) + (be or 0)
        f = lambda v: "–" if v is None else f"{v:.1f}"
        print(f"| {names[case]} | {i} | {e['msgs_per_sec']:.0f} | {e['latency']['p50_us']:.0f} | "
              f"{e['latency']['p99_us']:.0f} | {f(gw)} | {f(be)} | {tot:.1f} |")
PY
echo "runs: $OUT"
