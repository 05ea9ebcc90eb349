#!/usr/bin/env bash
# Start / stop N corelay gateway processes sharing ONE port with SO_REUSEPORT (multi-process mode),
# for density runs on hosts where one process cannot hold enough fds.
#
#   tools/bench/scripts/gateways.sh start N PORT DIR [--shards S] [--cpus C] [--bin PATH]
#                                   [--ping-interval-ms MS] [--idle-ms MS] [--ring]
#   tools/bench/scripts/gateways.sh pids DIR       # comma-separated pids (for --gateway-pids)
#   tools/bench/scripts/gateways.sh stop DIR       # SIGTERM all, wait (bounded), SIGKILL leftovers
#
# Process i gets DIR/gw-i.toml: listen 127.0.0.1:PORT, shards S (default 1), pin = false,
# cpu_offset = (i*S) mod C, its own attach socket DIR/attach-i.sock; logs to DIR/gw-i.log.
# PORT 0: the first process picks the port, the others join it.
set -euo pipefail

die() { echo "gateways.sh: $*" >&2; exit 2; }
cmd=${1:-}; shift || true
case "$cmd" in
start)
    N=${1:?N}; PORT=${2:?PORT}; DIR=${3:?DIR}; shift 3
    SHARDS=1; CPUS=$(nproc); BIN=${CORELAY_BIN:-corelay}; MODE="echo"; PING=30000; IDLE=120000
    while (( $# )); do
        case "$1" in
            --shards) SHARDS=$2; shift 2 ;;
            --cpus) CPUS=$2; shift 2 ;;
            --bin) BIN=$2; shift 2 ;;
            --ring) MODE=ring; shift ;;
            --ping-interval-ms) PING=$2; shift 2 ;;
            --idle-ms) IDLE=$2; shift 2 ;;
            *) die "unknown option $1" ;;
        esac
    done
    ADMIN_BASE="${ADMIN_BASE:-19100}"   # gateway i serves /metrics on 127.0.0.1:ADMIN_BASE+i
    mkdir -p "$DIR"; : > "$DIR/pids"
    for ((i = 0; i < N; i++)); do
        cat > "$DIR/gw-$i.toml" <<TOML
[server]
listen = ["127.0.0.1:$PORT"]
admin = "127.0.0.1:$(( ADMIN_BASE + i ))"
shards = $SHARDS
cpu_offset = $(( (i * SHARDS) % CPUS ))
pin = false
[timeouts]
ping_interval_ms = $PING
idle_ms = $IDLE
[backend]
mode = "$MODE"
attach_socket = "$DIR/attach-$i.sock"
[log]
level = "warn,corelay=info"
TOML
        "$BIN" run --config "$DIR/gw-$i.toml" 2> "$DIR/gw-$i.log" < /dev/null &
        echo $! >> "$DIR/pids"
        # Wait (bounded) for "listening on ws://ADDR/".
        for ((t = 0; t < 100; t++)); do
            grep -q 'listening on ws://' "$DIR/gw-$i.log" 2>/dev/null && break
            sleep 0.1
        done
        line=$(grep -m1 -o 'listening on ws://[0-9.]*:[0-9]*' "$DIR/gw-$i.log") || die "gateway $i did not start: $(tail -3 "$DIR/gw-$i.log")"
        if [[ $PORT == 0 ]]; then PORT=${line##*:}; fi
    done
    echo "$PORT" > "$DIR/port"
    echo "started $N gateway processes on ws://127.0.0.1:$PORT/ (pids in $DIR/pids)"
    ;;
pids)
    DIR=${1:?DIR}; paste -sd, "$DIR/pids" ;;
stop)
    DIR=${1:?DIR}
    mapfile -t P < "$DIR/pids"
    kill -TERM "${P[@]}" 2>/dev/null || true
    for ((t = 0; t < 300; t++)); do
        alive=0; for p in "${P[@]}"; do kill -0 "$p" 2>/dev/null && alive=$((alive + 1)); done
        (( alive == 0 )) && break
        sleep 0.1
    done
    for p in "${P[@]}"; do kill -0 "$p" 2>/dev/null && { echo "killing $p" >&2; kill -KILL "$p"; }; done
    echo "stopped ${#P[@]} gateway processes"
    ;;
*) die "usage: gateways.sh start N PORT DIR [--shards S] [--cpus C] [--bin PATH] | pids DIR | stop DIR" ;;
esac
