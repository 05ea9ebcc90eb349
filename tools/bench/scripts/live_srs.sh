#!/usr/bin/env bash
# Live streaming side by side: corelay and SRS, each pinned to one core (CPU 0), the publisher
# and the viewers on the other (CPU 1). See docs/benchmarks.md, "Live streaming: corelay vs SRS".
#
#   tools/bench/scripts/live_srs.sh --srs /path/to/srs [--viewers "2000 8000"] [--gop "on off"]
#                                   [--secs 20] [--out DIR] [--workers 4] [--mw 350]
#                                   [--steer-rx]
#
# The servers, the publisher and the viewers run at nice $PRIO (default -10: ahead of
# whatever else the machine is building; both servers alike).
# --mw is corelay's live.mw_latency_ms (merged writes): 350 by default, SRS's own default
# mw_latency for HTTP-FLV, so that both servers batch a viewer's writes over the same budget
# (0: corelay writes every tag as it comes, the lowest latency).
#
# --steer-rx (root) sets loopback's Receive Packet Steering to CPU 1 for the run (restored on
# exit): a loopback segment is then received on the viewers' CPU, as it would be on the
# viewers' own hosts, instead of in the sending server's context. Without it each server is
# also charged for its viewers' TCP receive path and wake-ups. Both servers run alike.
#
# --srs is a checkout of github.com/ossrs/srs (the directory holding trunk/). If trunk/objs/srs
# is missing it is built: ./configure --rtc=off --srt=off --ffmpeg-fit=off --sys-ssl=on
# --sanitizer=off && make (SRS's release build is --sanitizer=off; its default is an ASAN
# build). The large test media files of SRS's repository are not needed.
#
# One ffmpeg-made FLV (testsrc2 640x360 25 fps, H.264 600 kbit/s, keyframe every 2 s, AAC
# 64 kbit/s) is published by `corelay-bench live-publish` to both servers at once for the whole
# run; for each GOP cache setting both servers are restarted, then for each viewer count
# `corelay-bench live-viewers` runs against corelay, then against SRS.
set -euo pipefail
cd "$(dirname "$0")/../../.."
repo=$PWD
srs="" viewers="2000 8000" gops="on off" secs=20 out=/tmp/live-srs workers=4 settle=5 mw=350 prio=${PRIO:--10}
steer=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --srs) srs=$2; shift 2 ;;
        --viewers) viewers=$2; shift 2 ;;
        --gop) gops=$2; shift 2 ;;
        --secs) secs=$2; shift 2 ;;
        --settle) settle=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --workers) workers=$2; shift 2 ;;
        --mw) mw=$2; shift 2 ;;
        --steer-rx) steer=1; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ -n $srs ]] || { echo "--srs PATH (an ossrs/srs checkout) is required" >&2; exit 2; }
srs=$(cd "$srs" && pwd)
mkdir -p "$out"
log="$out/run.log"
say() { echo "$@" | tee -a "$log"; }
rps=/sys/class/net/lo/queues/rx-0/rps_cpus
if [[ $steer == 1 ]]; then
    old_rps=$(cat "$rps")
    echo 2 > "$rps"
    say "loopback receive steered to CPU 1 (rps_cpus $old_rps -> 2)"
fi

if [[ ! -x $srs/trunk/objs/srs ]]; then
    say "building SRS in $srs/trunk"
    (cd "$srs/trunk" && ./configure --rtc=off --srt=off --ffmpeg-fit=off --sys-ssl=on --sanitizer=off && make) \
        >"$out/srs-build.log" 2>&1
fi
nice -n "${NICE:-0}" cargo build --release -q -p corelay --bin corelay
nice -n "${NICE:-0}" cargo build --release -q -p corelay-bench
target="${CARGO_TARGET_DIR:-target}/release"
bench="$target/corelay-bench"

flv="$out/pub.flv"
if [[ ! -s $flv ]]; then
    ffmpeg -hide_banner -loglevel error -y -f lavfi -i testsrc2=size=640x360:rate=25 \
        -f lavfi -i sine=frequency=440:sample_rate=44100 -t 60 \
        -c:v libx264 -preset veryfast -tune zerolatency -b:v 600k -maxrate 600k -bufsize 1200k \
        -g 50 -keyint_min 50 -sc_threshold 0 -pix_fmt yuv420p \
        -c:a aac -b:a 64k -ac 2 -ar 44100 -f flv "$flv"
fi

ulimit -n "$(ulimit -Hn)" # SRS checks max_connections against it
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()
}
# Every server stopped, and loopback's steering as it was.
finish() {
    cleanup
    if [[ -n ${old_rps:-} ]]; then echo "$old_rps" > "$rps"; fi
}
trap finish EXIT

wait_port() { # port: bounded wait until something listens
    for _ in $(seq 100); do
        ss -Hltn "sport = :$1" | grep -q LISTEN && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2; return 1
}

say "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
say "corelay $(git -C "$repo" rev-parse --short HEAD), SRS $(cat "$srs/COMMIT" 2>/dev/null || git -C "$srs" rev-parse --short HEAD 2>/dev/null || echo '?') ($("$srs/trunk/objs/srs" -v 2>&1 | tail -1))"
say "somaxconn $(cat /proc/sys/net/core/somaxconn); load: $(cat /proc/loadavg)"

for gop in $gops; do
    cache=$([[ $gop == on ]] && echo true || echo false)
    cat >"$out/corelay-gop-$gop.toml" <<EOF
[server]
listen = ["127.0.0.1:18080"]
shards = 1
cpu_offset = 0
pin = true
ready_requires_backend = false
[backend]
mode = "echo"
[timeouts]
ping_interval_ms = 0
idle_ms = 600000
[log]
level = "warn"
[live]
rtmp_listen = ["127.0.0.1:11935"]
gop_cache = $cache
mw_latency_ms = $mw
allow_all = true
EOF
    # SRS: its http.flv.live.conf plus the GOP cache switch; timestamps passed through
    # (time_jitter off: the default "full" restarts every viewer's timestamps at 0, which
    # would hide how old a frame is); max_connections above the viewer count; warnings only in
    # the log (per-connection trace lines would cost it CPU corelay does not spend).
    cat >"$out/srs-gop-$gop.conf" <<EOF
listen 11936;
max_connections 19000;
daemon off;
pid $out/srs.pid;
srs_log_tank file;
srs_log_file $out/srs-gop-$gop.log;
srs_log_level warn;
http_api { enabled off; }
http_server {
    enabled on;
    listen 18081;
    dir $srs/trunk/objs/nginx/html;
}
vhost __defaultVhost__ {
    play {
        gop_cache $gop;
        time_jitter off;
    }
    http_remux {
        enabled on;
        mount [vhost]/[app]/[stream].flv;
    }
}
EOF
    nice -n "$prio" taskset -c 0 "$target/corelay" run --config "$out/corelay-gop-$gop.toml" --no-admin \
        >"$out/corelay-gop-$gop.log" 2>&1 &
    cpid=$!; pids+=("$cpid")
    (cd "$srs/trunk" && exec nice -n "$prio" taskset -c 0 ./objs/srs -c "$out/srs-gop-$gop.conf") \
        >"$out/srs-gop-$gop.out" 2>&1 &
    spid=$!; pids+=("$spid")
    wait_port 11935; wait_port 18080; wait_port 11936; wait_port 18081
    rm -f "$out/clock"
    nice -n "$prio" taskset -c 1 "$bench" live-publish --flv "$flv" --clock-file "$out/clock" \
        --rtmp rtmp://127.0.0.1:11935/live/bench --rtmp rtmp://127.0.0.1:11936/live/bench \
        >"$out/publish-gop-$gop.log" 2>&1 &
    pids+=("$!")
    for _ in $(seq 100); do [[ -s $out/clock ]] && break; sleep 0.1; done
    [[ -s $out/clock ]] || { echo "publisher did not start" >&2; cat "$out/publish-gop-$gop.log" >&2; exit 1; }
    sleep 3 # a GOP in both caches
    for n in $viewers; do
        for s in corelay srs; do
            if [[ $s == corelay ]]; then url=http://127.0.0.1:18080/live/bench.flv; pid=$cpid; label="corelay mw=$mw"
            else url=http://127.0.0.1:18081/live/bench.flv; pid=$spid; label="srs"; fi
            cmd=(nice -n "$prio" taskset -c 1 "$bench" live-viewers --label "$label gop_cache=$gop $n" --url "$url"
                --server-pid "$pid" --viewers "$n" --workers "$workers" --clock-file "$out/clock"
                --secs "$secs" --settle-secs "$settle" --json "$out/$s-gop-$gop-$n.json")
            say "\$ ${cmd[*]}"
            "${cmd[@]}" 2>>"$log" | tee -a "$log"
            sleep 2 # the server lets the closed viewers go
        done
    done
    cleanup
done
say "done; results in $out"
