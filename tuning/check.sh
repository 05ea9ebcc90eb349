#!/usr/bin/env bash
# corelay host check: every kernel/limit setting that matters for holding N idle connections,
# its current value, the value recommended for N, OK/WARN/FAIL/N/A and why.
#
#   tuning/check.sh [--connections N] [--processes P] [--pid PID] [--json]
#
# Read-only and unprivileged; works in containers (missing or unreadable entries print n/a and why).
# Exit code: 0 when nothing is FAIL, 1 when something is, 2 on a usage error.
# CORELAY_SYSCTL_ROOT=/dir reads sysctls from a fake tree instead of /proc/sys (tests).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tuning/lib.sh
. "$HERE/lib.sh"

usage() {
    cat <<'EOF'
usage: check.sh [--connections N] [--processes P] [--pid PID] [--json]
  --connections N   connections this host must hold (default 1000000)
  --processes P     gateway processes sharing them via SO_REUSEPORT (default 1)
  --pid PID         also check the limits of a running corelay process (/proc/PID/limits)
  --json            machine-readable output
Exit: 0 no FAIL, 1 at least one FAIL, 2 usage error.
EOF
}

N=1000000
P=1
PID=""
JSON=0
while (( $# )); do
    case "$1" in
        --connections) N=${2:-}; shift 2 || die "--connections needs a value" ;;
        --connections=*) N=${1#*=}; shift ;;
        --processes) P=${2:-}; shift 2 || die "--processes needs a value" ;;
        --processes=*) P=${1#*=}; shift ;;
        --pid) PID=${2:-}; shift 2 || die "--pid needs a value" ;;
        --pid=*) PID=${1#*=}; shift ;;
        --json) JSON=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done
if ! is_uint "$N" || (( N == 0 )); then die "--connections must be a positive integer"; fi
if ! is_uint "$P" || (( P == 0 )); then die "--processes must be a positive integer"; fi
[[ -z "$PID" ]] || is_uint "$PID" || die "--pid must be a process id"

compute_recs "$N" "$P"

NAMES=() CURS=() RECS=() STATS=() WHYS=()
row() { NAMES+=("$1"); CURS+=("$2"); RECS+=("$3"); STATS+=("$4"); WHYS+=("$5"); }

# num_row KEY FAIL_BELOW WHY: scalar sysctl, WARN below REC, FAIL below FAIL_BELOW (0 = never FAIL).
num_row() {
    local key=$1 failbelow=$2 why=$3 cur st
    if ! sysctl_get "$key"; then row "$key" "n/a" "${REC[$key]}" "N/A" "$READ_ERR; $why"; return; fi
    if (( failbelow > 0 && cur < failbelow )); then st=FAIL
    elif below "$key" "$cur"; then st=WARN
    else st=OK; fi
    row "$key" "$cur" ">= ${REC[$key]}" "$st" "$why"
}

G=$(( N / 1000 ))k
(( N < 1000 )) && G=$N

# --- file descriptors -------------------------------------------------------------------------
num_row fs.file-max "${REC[fs.file-max]}" \
    "system-wide open files: N x 1.1 + 64k headroom for backends, logs, TIME_WAIT churn"
if sysctl_get fs.nr_open; then
    if (( cur < NOFILE_NEED )); then
        st=FAIL
        why="no process can get ${NOFILE_NEED} fds; raise it or run $(ceil_div "$N" $(( cur > FD_HEADROOM * 2 ? cur - FD_HEADROOM : 1 ))) processes (--processes)"
    elif (( cur < NOFILE_REC )); then st=WARN; why="ceiling for RLIMIT_NOFILE; LimitNOFILE=${NOFILE_REC} fails above it"
    else st=OK; why="ceiling for RLIMIT_NOFILE: one process holds ${PER_PROC} connections + ${FD_HEADROOM} other fds"; fi
    row fs.nr_open "$cur" ">= ${NOFILE_REC}" "$st" "$why"
else
    row fs.nr_open n/a "$NOFILE_REC" N/A "$READ_ERR"
fi

nofile_row() { # NAME VALUE STRICT
    local name=$1 v=$2 strict=$3 st why
    if [[ "$v" == unlimited ]] || (( v >= NOFILE_NEED )); then
        st=OK; why="one fd per connection: ${PER_PROC} per process + headroom"
    elif (( strict )); then
        st=FAIL; why="this process cannot accept more than ~$(( v > FD_HEADROOM ? v - FD_HEADROOM : v )) connections (EMFILE)"
    else
        st=WARN; why="only for processes started from this shell; corelay.service sets LimitNOFILE=${NOFILE_REC}"
    fi
    row "$name" "$v" ">= ${NOFILE_NEED} (${NOFILE_REC})" "$st" "$why"
}
nofile_row "nofile soft (this shell)" "$(ulimit -Sn)" 0
nofile_row "nofile hard (this shell)" "$(ulimit -Hn)" 0

MEMLOCK_NEED_KB=$(( $(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1) * 16 * 1024 ))
KREL=$(uname -r)
kver_ge() { # kver_ge 5 12
    local maj min rest
    IFS=. read -r maj min rest <<<"${KREL%%-*}"
    min=${min%%[!0-9]*}
    (( maj > $1 || (maj == $1 && ${min:-0} >= $2) ))
}
memlock_row() { # NAME VALUE_KB
    local name=$1 v=$2 st why
    if [[ "$v" == unlimited ]] || (( v >= MEMLOCK_NEED_KB )); then
        st=OK; why="io_uring: registered buffers are charged to RLIMIT_MEMLOCK"
    elif kver_ge 5 12; then
        st=WARN; why="kernel ${KREL%%-*} >= 5.12 charges io_uring rings to memcg, but registered (fixed) buffers still count here"
    else
        st=FAIL; why="kernel < 5.12 charges io_uring rings to RLIMIT_MEMLOCK: shards fail to start"
    fi
    row "$name" "$v" "unlimited (>= ${MEMLOCK_NEED_KB} KiB)" "$st" "$why"
}
memlock_row "memlock (this shell, KiB)" "$(ulimit -l)"

if [[ -n "$PID" ]]; then
    if [[ -r "/proc/$PID/limits" ]]; then
        read -r s h < <(awk '/^Max open files/ { print $4, $5 }' "/proc/$PID/limits")
        nofile_row "nofile soft (pid $PID)" "$s" 1
        nofile_row "nofile hard (pid $PID)" "$h" 1
        read -r s < <(awk '/^Max locked memory/ { print $4 }' "/proc/$PID/limits")
        [[ "$s" == unlimited ]] || s=$(( s / 1024 ))
        memlock_row "memlock (pid $PID, KiB)" "$s"
        fds=$(find "/proc/$PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l || true)
        row "open fds (pid $PID)" "$fds" "< nofile soft" OK "fds in use now"
    else
        row "limits (pid $PID)" n/a "-" FAIL "/proc/$PID/limits not readable: no such process or not ours"
    fi
fi

# --- accept path ------------------------------------------------------------------------------
num_row net.core.somaxconn 0 \
    "accept-queue cap per listener: after a restart all clients reconnect at once"
num_row net.ipv4.tcp_max_syn_backlog 0 \
    "half-open (SYN_RECV) queue during reconnect storms; beyond it syncookies take over"
num_row net.core.netdev_max_backlog 0 \
    "per-CPU input queue before the stack (RPS); drops during bursts show in /proc/net/softnet_stat"
if sysctl_get net.ipv4.tcp_syncookies; then
    (( cur >= 1 )) && st=OK || st=WARN
    row net.ipv4.tcp_syncookies "$cur" ">= 1" "$st" "SYN floods and reconnect storms beyond tcp_max_syn_backlog"
else
    row net.ipv4.tcp_syncookies n/a 1 N/A "$READ_ERR"
fi

# --- ports ------------------------------------------------------------------------------------
if sysctl_get net.ipv4.ip_local_port_range; then
    read -r lo hi <<<"$cur"
    ports=$(( hi - lo + 1 ))
    row net.ipv4.ip_local_port_range "$cur" "server: any; client: ${REC[net.ipv4.ip_local_port_range]}" OK \
        "server side needs no ephemeral ports; a load generator needs $(ceil_div "$N" "$ports") source IPs x ${ports} ports for ${G} conns"
else
    row net.ipv4.ip_local_port_range n/a "${REC[net.ipv4.ip_local_port_range]}" N/A "$READ_ERR; only matters on the client/load-generator side"
fi

# --- memory -----------------------------------------------------------------------------------
if sysctl_get net.ipv4.tcp_mem; then
    read -r _ cp ch <<<"$cur"
    if (( ch < TCP_MEM_PRESSURE )); then st=FAIL; why="hard limit below ${G} x $(( TCP_BUF_BYTES_PER_CONN / 1024 )) KiB queued: sockets drop data/abort at N"
    elif below net.ipv4.tcp_mem "$cur"; then st=WARN; why="pages; pressure (2nd) should be >= N x ${TCP_BUF_BYTES_PER_CONN} B queued / ${PAGE} B page; now $(human_bytes $(( cp * PAGE )))"
    else st=OK; why="pages; pressure point $(human_bytes $(( cp * PAGE ))) >= N x ${TCP_BUF_BYTES_PER_CONN} B"; fi
    row net.ipv4.tcp_mem "$cur" ">= ${REC[net.ipv4.tcp_mem]}" "$st" "$why"
else
    row net.ipv4.tcp_mem n/a "${REC[net.ipv4.tcp_mem]}" N/A "$READ_ERR (global sysctl: set on the host)"
fi
for k in net.ipv4.tcp_rmem net.ipv4.tcp_wmem; do
    if sysctl_get "$k"; then
        read -r mn _ <<<"$cur"
        if (( mn > 16384 )); then st=WARN; why="min (1st) is the per-socket floor under pressure: N x ${mn} B = $(human_bytes $(( N * mn ))); keep 4096"
        elif (( mn < 4096 )); then st=WARN; why="min below one page stalls sockets under memory pressure"
        else st=OK; why="1st value = floor kept per socket under pressure (N x min); idle sockets allocate none until data arrives"; fi
        row "$k" "$cur" "${REC[$k]} (min 4096)" "$st" "$why"
    else
        row "$k" n/a "${REC[$k]}" N/A "$READ_ERR"
    fi
done
for k in net.core.rmem_default net.core.wmem_default; do
    if sysctl_get "$k"; then
        (( cur > 1048576 )) && st=WARN || st=OK
        row "$k" "$cur" "${REC[$k]} (<= 1 MiB)" "$st" "default buffer of non-TCP sockets (unix, UDP, SO_RCVBUF base); TCP uses tcp_rmem/tcp_wmem"
    else
        row "$k" n/a "${REC[$k]}" N/A "$READ_ERR"
    fi
done
num_row vm.max_map_count 0 \
    "allocator arenas, glommio/io_uring and backend shm-ring mappings; 65530 default is tight for multi-GB heaps"

# host memory: idle sockets (kernel) + corelay user space, then with the tcp_mem budget on top.
mem_total=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo 2>/dev/null || echo 0)
mem_total=$(( ${mem_total:-0} * 1024 ))
mem_src="MemTotal"
if [[ -r /sys/fs/cgroup/memory.max ]]; then
    cg=$(cat /sys/fs/cgroup/memory.max)
    if is_uint "$cg" && (( cg < mem_total )); then mem_total=$cg; mem_src="cgroup memory.max"; fi
fi
idle_need=$(( N * (KERNEL_BYTES_PER_SOCKET + USER_BYTES_PER_CONN) ))
busy_need=$(( idle_need + N * TCP_BUF_BYTES_PER_CONN ))
if (( mem_total == 0 )); then st=N/A
elif (( mem_total < idle_need )); then st=FAIL
elif (( mem_total < busy_need + 1073741824 )); then st=WARN
else st=OK; fi
row "memory ($mem_src)" "$(human_bytes "$mem_total")" ">= $(human_bytes $(( busy_need + 1073741824 )))" "$st" \
    "idle: N x (${KERNEL_BYTES_PER_SOCKET} B kernel + ${USER_BYTES_PER_CONN} B corelay) = $(human_bytes "$idle_need"), + N x ${TCP_BUF_BYTES_PER_CONN} B buffers + 1 GiB"

# --- conntrack --------------------------------------------------------------------------------
if sysctl_get net.netfilter.nf_conntrack_max; then
    if (( cur < N )); then st=FAIL; why="table full -> 'nf_conntrack: table full, dropping packet'; raise, or bypass with raw-table NOTRACK (CT --notrack) on the gateway ports"
    elif below net.netfilter.nf_conntrack_max "$cur"; then st=WARN; why="N entries + TIME_WAIT/closing ones; or bypass with raw-table NOTRACK on the gateway ports"
    else st=OK; why="one entry (~256 B slab + hash bucket) per tracked connection; NOTRACK in the raw table avoids it entirely"; fi
    row net.netfilter.nf_conntrack_max "$cur" ">= ${REC[net.netfilter.nf_conntrack_max]}" "$st" "$why"
else
    row net.netfilter.nf_conntrack_max n/a "${REC[net.netfilter.nf_conntrack_max]} if loaded" N/A "$READ_ERR: fine, no per-connection conntrack cost (if loaded later: size it or NOTRACK the gateway ports)"
fi

# --- TIME_WAIT --------------------------------------------------------------------------------
if sysctl_get net.ipv4.tcp_tw_reuse; then
    row net.ipv4.tcp_tw_reuse "$cur" "server: any; client: 1" OK \
        "only affects outgoing connect(): matters on the load generator, not for accepted sockets"
else
    row net.ipv4.tcp_tw_reuse n/a "client: 1" N/A "$READ_ERR"
fi
if sysctl_get net.ipv4.tcp_fin_timeout; then
    (( cur > 60 )) && st=WARN || st=OK
    row net.ipv4.tcp_fin_timeout "$cur" "<= ${REC[net.ipv4.tcp_fin_timeout]}" "$st" \
        "FIN_WAIT_2 lifetime of orphaned sockets after the gateway closes (not TIME_WAIT, which is fixed at 60 s)"
else
    row net.ipv4.tcp_fin_timeout n/a "<= 30" N/A "$READ_ERR"
fi
num_row net.ipv4.tcp_max_tw_buckets 0 \
    "a drain/restart closing N conns server-side leaves N TIME_WAIT sockets (~256 B each) for 60 s; overflow skips TIME_WAIT"
if sysctl_get net.ipv4.tcp_keepalive_time; then
    (( cur > 900 )) && st=WARN || st=OK
    row net.ipv4.tcp_keepalive_time "$cur" "<= ${REC[net.ipv4.tcp_keepalive_time]}" "$st" \
        "NAT/LB idle mappings expire after 300-600 s; default for SO_KEEPALIVE sockets without TCP_KEEPIDLE (WebSocket pings also keep them)"
else
    row net.ipv4.tcp_keepalive_time n/a "<= 300" N/A "$READ_ERR"
fi

# --- CPU / IRQ --------------------------------------------------------------------------------
if proc_running irqbalance; then
    row irqbalance running "pinned by irq-affinity.sh, or irqbalance with banned CPUs" WARN \
        "irqbalance moves NIC IRQs onto shard cores and undoes tuning/irq-affinity.sh; stop it or use IRQBALANCE_BANNED_CPUS"
else
    row irqbalance "not running" "not running (or banned CPUs)" OK "NIC IRQs stay where tuning/irq-affinity.sh put them"
fi

nics=()
for d in /sys/class/net/*; do
    [[ -e "$d/device" ]] || continue   # physical (or virtio) NICs only; lo, veth, bridges have no device
    nics+=("${d##*/}")
done
if (( ${#nics[@]} == 0 )); then
    row "NIC queue IRQs" "n/a" "one IRQ per queue, spread over cores" N/A \
        "no physical NIC visible (container/VM netns: the host handles IRQs)"
    row "RPS/XPS masks" "n/a" "set when queues < cores" N/A "no physical NIC visible"
else
    ncpu=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
    for nic in "${nics[@]}"; do
        rxq=$(find "/sys/class/net/$nic/queues" -maxdepth 1 -name 'rx-*' 2>/dev/null | wc -l || true)
        irqs=$(nic_queue_irqs "$nic" | wc -l)
        if (( rxq >= ncpu )); then st=OK; why="as many queues as cores: spread IRQs one per core (irq-affinity.sh)"
        elif (( ncpu > 1 )); then st=WARN; why="fewer queues than cores: RPS/XPS spreads protocol work (tuning/irq-affinity.sh $nic)"
        else st=OK; why="single core"; fi
        row "NIC queue IRQs ($nic)" "${rxq} rx queues, ${irqs:-0} IRQs" "1 IRQ per queue per core" "$st" "$why (/proc/interrupts)"
        rps=$(cat "/sys/class/net/$nic/queues/rx-0/rps_cpus" 2>/dev/null || echo n/a)
        xps=$(cat "/sys/class/net/$nic/queues/tx-0/xps_cpus" 2>/dev/null || echo n/a)
        if [[ "$rps" == n/a ]]; then st=N/A
        elif (( rxq < ncpu && ncpu > 1 )) && [[ "${rps//[0,]/}" == "" ]]; then st=WARN
        else st=OK; fi
        row "RPS/XPS masks ($nic)" "rps=${rps} xps=${xps}" "all cores when queues < cores" "$st" \
            "/sys/class/net/$nic/queues/{rx,tx}-*/{rps,xps}_cpus"
    done
fi

if [[ -r /sys/kernel/mm/transparent_hugepage/enabled ]]; then
    thp=$(sed -n 's/.*\[\(.*\)\].*/\1/p' /sys/kernel/mm/transparent_hugepage/enabled)
    [[ "$thp" == always ]] && st=WARN || st=OK
    row "transparent_hugepage" "$thp" "madvise (or never)" "$st" \
        "'always' makes khugepaged compact/collapse the heap: latency spikes and RSS bloat for many small objects"
else
    row "transparent_hugepage" n/a "madvise" N/A "/sys/kernel/mm/transparent_hugepage not present"
fi

govs=$(cat /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor 2>/dev/null | sort -u | tr '\n' ' ' || true)
govs=${govs% }
if [[ -z "$govs" ]]; then
    row "cpu governor" n/a performance N/A "no cpufreq in /sys/devices/system/cpu/cpu*/cpufreq (VM or container: the hypervisor controls frequency)"
elif [[ "$govs" == performance ]]; then
    row "cpu governor" "$govs" performance OK "shards busy-poll io_uring; no frequency ramp-up latency"
else
    row "cpu governor" "$govs" performance WARN "frequency ramp-up adds latency to bursty shards (cpupower frequency-set -g performance)"
fi

row kernel.pid_max "-" "not needed" OK "thread-per-core: one thread per shard, no per-connection threads or processes"

# --- output -----------------------------------------------------------------------------------
fails=0 warns=0 oks=0 nas=0
for s in "${STATS[@]}"; do
    case "$s" in FAIL) fails=$((fails+1)) ;; WARN) warns=$((warns+1)) ;; OK) oks=$((oks+1)) ;; *) nas=$((nas+1)) ;; esac
done

json_str() {
    local s=$1
    s=${s//\\/\\\\}; s=${s//\"/\\\"}; s=${s//$'\t'/ }; s=${s//$'\n'/ }
    printf '"%s"' "$s"
}

if (( JSON )); then
    printf '{\n  "connections": %s,\n  "processes": %s,\n  "sysctl_root": %s,\n  "kernel": %s,\n  "checks": [\n' \
        "$N" "$P" "$(json_str "$SYSCTL_ROOT")" "$(json_str "$KREL")"
    last=$(( ${#NAMES[@]} - 1 ))
    for i in "${!NAMES[@]}"; do
        printf '    {"name": %s, "current": %s, "recommended": %s, "status": %s, "why": %s}%s\n' \
            "$(json_str "${NAMES[$i]}")" "$(json_str "${CURS[$i]}")" "$(json_str "${RECS[$i]}")" \
            "$(json_str "${STATS[$i]}")" "$(json_str "${WHYS[$i]}")" "$([[ $i -lt $last ]] && echo ,)"
    done
    printf '  ],\n  "summary": {"ok": %d, "warn": %d, "fail": %d, "na": %d}\n}\n' "$oks" "$warns" "$fails" "$nas"
else
    printf 'corelay host check for %s connections (%s process%s, %s per process); kernel %s; sysctls from %s\n\n' \
        "$N" "$P" "$([[ $P -gt 1 ]] && echo es)" "$PER_PROC" "$KREL" "$SYSCTL_ROOT"
    fmt='%-34s %-24s %-31s %-6s %s\n'
    # shellcheck disable=SC2059 # the format is ours
    printf "$fmt" SETTING CURRENT RECOMMENDED STATUS WHY
    for i in "${!NAMES[@]}"; do
        # shellcheck disable=SC2059
        printf "$fmt" "${NAMES[$i]}" "${CURS[$i]}" "${RECS[$i]}" "${STATS[$i]}" "${WHYS[$i]}"
    done
    printf '\n%d OK, %d WARN, %d FAIL, %d N/A\n' "$oks" "$warns" "$fails" "$nas"
fi
(( fails == 0 ))
