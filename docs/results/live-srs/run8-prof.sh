#!/usr/bin/env bash
# corelay alone: publisher + N viewers, perf record of the gateway during the window.
set -u
n=${1:-8000}; gop=${2:-on}; out=/work/peers/live/prof-$gop-$n; mkdir -p $out
R=/work/rtarget/release
ulimit -n 20000
taskset -c 0 ${GW:-$R/corelay} run --config /work/peers/live/q1/corelay-gop-$gop.toml --no-admin > $out/gw.log 2>&1 &
gw=$!
sleep 1
rm -f $out/clock
taskset -c 1 $R/corelay-bench live-publish --flv /work/peers/live/q1/pub.flv --clock-file $out/clock --rtmp rtmp://127.0.0.1:11935/live/bench > $out/pub.log 2>&1 &
pub=$!
sleep 4
[ "${PERF:-1}" = 1 ] && (sleep 12; perf record -F 999 -g -p $gw -o $out/perf.data -- sleep 10 > $out/perf.log 2>&1) &
taskset -c 1 $R/corelay-bench live-viewers --label "corelay gop=$gop $n" --url http://127.0.0.1:18080/live/bench.flv --server-pid $gw --viewers $n --workers ${WORKERS:-4} --clock-file $out/clock ${JSON:+--json $JSON} --secs 20 --settle-secs 5 2>&1 | grep -v '^result'
wait %3 2>/dev/null
kill $pub $gw; wait
