# shellcheck shell=bash disable=SC2034
# Shared by check.sh and apply.sh: where sysctls live, how to read them, and the
# recommended value of every setting as a function of the connection count.
# Sourced, never executed. Bash >= 4.
# (SC2034 is off: the globals here are used by the scripts that source this file.)

# Sysctl root: /proc/sys, or a fake tree for tests (files named like /proc/sys entries).
SYSCTL_ROOT="${CORELAY_SYSCTL_ROOT:-/proc/sys}"

# Measured on 6.18 (docs/tuning.md): Slab growth per idle TCP socket (sock + inode/dentry/file + tcp_sock).
KERNEL_BYTES_PER_SOCKET=3900
# corelay's own user-space bytes per idle connection (target; see docs/benchmarks.md for the measured figure).
USER_BYTES_PER_CONN="${CORELAY_USER_BYTES_PER_CONN:-512}"
# Budget of queued skb data per connection used to size tcp_mem (idle sockets queue ~0; pings and small
# messages in flight need about a page now and then).
TCP_BUF_BYTES_PER_CONN="${CORELAY_TCP_BUF_PER_CONN:-4096}"
# fds each gateway process needs besides its connections: listeners, io_uring, eventfds, shm rings, logs.
FD_HEADROOM=16384

die() { printf '%s: %s\n' "${0##*/}" "$*" >&2; exit 2; }

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }

# next_pow2 N: smallest power of two >= N (N >= 1).
next_pow2() {
    local n=$1 p=1
    while (( p < n )); do p=$(( p * 2 )); done
    echo "$p"
}

clamp() { # clamp V LO HI
    local v=$1
    (( v < $2 )) && v=$2
    (( v > $3 )) && v=$3
    echo "$v"
}

sysctl_path() { # net.core.somaxconn -> $SYSCTL_ROOT/net/core/somaxconn
    echo "$SYSCTL_ROOT/${1//.//}"
}

# sysctl_read KEY: prints the value (whitespace collapsed to single spaces) and returns 0,
# or sets READ_ERR to a reason and returns 1 (missing in this container/netns, unreadable).
READ_ERR=""
sysctl_read() {
    local p v
    p=$(sysctl_path "$1")
    READ_ERR=""
    if [[ ! -e "$p" ]]; then
        case "$1" in
            net.netfilter.*) READ_ERR="not present: nf_conntrack not loaded (or not visible in this netns)" ;;
            net.*) READ_ERR="not present in this network namespace (container: the host sets it)" ;;
            *) READ_ERR="not present (kernel without it, or a container hiding it)" ;;
        esac
        return 1
    fi
    if ! v=$(cat "$p" 2>/dev/null); then
        READ_ERR="not readable (permission denied; run as root or read on the host)"
        return 1
    fi
    # shellcheck disable=SC2086 # word splitting collapses tabs/spaces on purpose
    set -- $v
    echo "$*"
}

# sysctl_get KEY: like sysctl_read, but without a subshell so the reason survives: sets the
# caller's `cur` to the value and returns 0, or sets READ_ERR and returns 1.
sysctl_get() {
    local _v
    if _v=$(sysctl_read "$1"); then cur=$_v; return 0; fi
    sysctl_read "$1" >/dev/null || true   # again, in this shell, to keep READ_ERR
    return 1
}

page_size() { getconf PAGESIZE 2>/dev/null || echo 4096; }

# ceil_div A B
ceil_div() { echo $(( ($1 + $2 - 1) / $2 )); }

# compute_recs N P: fills REC[key] with the recommended value for N connections spread over
# P gateway processes, plus a few derived numbers (NOFILE_NEED, PER_PROC, ...).
declare -A REC=()
compute_recs() {
    local n=$1 p=$2 pg pressure
    PER_PROC=$(ceil_div "$n" "$p")
    NOFILE_NEED=$(( PER_PROC + FD_HEADROOM ))
    NOFILE_REC=$(next_pow2 "$NOFILE_NEED")
    (( NOFILE_REC < 65536 )) && NOFILE_REC=65536
    pg=$(page_size)
    PAGE=$pg
    pressure=$(( n * TCP_BUF_BYTES_PER_CONN / pg ))
    (( pressure < 65536 )) && pressure=65536
    TCP_MEM_PRESSURE=$pressure

    REC[fs.file-max]=$(( n * 11 / 10 + 65536 ))
    REC[fs.nr_open]=$NOFILE_REC
    REC[net.core.somaxconn]=$(clamp $(( $(next_pow2 $(( n / 16 + 1 ))) - 1 )) 4096 65535)
    REC[net.ipv4.tcp_max_syn_backlog]=${REC[net.core.somaxconn]}
    REC[net.core.netdev_max_backlog]=$(clamp "$(next_pow2 $(( n / 64 + 1 )))" 1000 65536)
    REC[net.ipv4.tcp_mem]="$(( pressure * 3 / 4 )) $pressure $(( pressure * 3 / 2 ))"
    REC[net.ipv4.tcp_rmem]="4096 131072 6291456"
    REC[net.ipv4.tcp_wmem]="4096 16384 4194304"
    REC[net.core.rmem_default]=212992
    REC[net.core.wmem_default]=212992
    REC[net.netfilter.nf_conntrack_max]=$(( n * 5 / 4 + 65536 ))
    REC[net.ipv4.tcp_max_tw_buckets]=$(( n > 262144 ? n : 262144 ))
    REC[net.ipv4.tcp_syncookies]=1
    REC[net.ipv4.tcp_tw_reuse]=1
    REC[net.ipv4.tcp_fin_timeout]=30
    REC[net.ipv4.tcp_keepalive_time]=300
    REC[vm.max_map_count]=262144
    REC[net.ipv4.ip_local_port_range]="1024 65535"
}

# Settings apply.sh raises (never lowers): value(s) below REC are raised to REC.
# tcp_mem is raised element-wise. Everything else is check-only (see docs/tuning.md why).
APPLY_KEYS=(
    fs.file-max
    fs.nr_open
    net.core.somaxconn
    net.ipv4.tcp_max_syn_backlog
    net.core.netdev_max_backlog
    net.ipv4.tcp_mem
    net.netfilter.nf_conntrack_max
    net.ipv4.tcp_max_tw_buckets
    net.ipv4.tcp_syncookies
    vm.max_map_count
)

# raise_value CURRENT RECOMMENDED: element-wise max (values are space-separated integer lists).
raise_value() {
    local -a have want out=()
    read -r -a have <<<"$1"
    read -r -a want <<<"$2"
    local i
    for i in "${!want[@]}"; do
        local c=${have[$i]:-0}
        if is_uint "$c" && (( c >= want[i] )); then out+=("$c"); else out+=("${want[$i]}"); fi
    done
    echo "${out[*]}"
}

# below KEY CURRENT: true when some element of CURRENT is below REC[KEY].
below() {
    [[ "$(raise_value "$2" "${REC[$1]}")" != "$2" ]]
}

human_bytes() { # 1234567890 -> 1.1 GiB
    awk -v b="$1" 'BEGIN { split("B KiB MiB GiB TiB", u, " "); i = 1; while (b >= 1024 && i < 5) { b /= 1024; i++ } printf (i == 1 ? "%d %s" : "%.1f %s"), b, u[i] }'
}

# nic_queue_irqs IFACE: prints "IRQ NAME" for each queue interrupt of a NIC, from /proc/interrupts.
# virtio-net: the virtioN-input.K/-output.K vectors; PCI NICs: the device's msi_irqs minus
# config/admin vectors; otherwise lines naming the interface (eth0-TxRx-3, mlx5_comp2@pci...).
nic_queue_irqs() {
    local ifc=$1 dev base irqs=""
    dev=$(readlink -f "/sys/class/net/$ifc/device" 2>/dev/null) || return 0
    base=${dev##*/}
    if [[ "$base" =~ ^virtio[0-9]+$ ]]; then
        awk -v p="$base" '$NF ~ "^" p "-(input|output)\\." { sub(":", "", $1); print $1, $NF }' /proc/interrupts 2>/dev/null || true
        return 0
    fi
    if [[ -d "$dev/msi_irqs" ]]; then
        irqs=$(find "$dev/msi_irqs" -mindepth 1 -maxdepth 1 -printf '%f ' 2>/dev/null)
    fi
    awk -v ifc="$ifc" -v irqs=" $irqs" '
        { n = $1; sub(":", "", n) }
        n !~ /^[0-9]+$/ { next }
        $NF ~ /(config|async|ctrl|misc|event|fw|lsc)/ { next }
        (irqs != " " && index(irqs, " " n " ")) || index($NF, ifc) { print n, $NF }
    ' /proc/interrupts 2>/dev/null || true
}

# proc_running NAME: is a process with this comm running? (no procps needed: minimal containers)
proc_running() {
    local c name
    for c in /proc/[0-9]*/comm; do
        name=""
        { read -r name < "$c"; } 2>/dev/null || true
        [[ "$name" == "$1" ]] && return 0
    done
    return 1
}
