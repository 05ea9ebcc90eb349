#!/usr/bin/env bash
# Spread a NIC's queue IRQs over cores and set RPS/XPS masks.
#
#   tuning/irq-affinity.sh [--dry-run] [--cpus LIST] IFACE
#
# - Queue IRQ k goes to CPU k mod ncpu (from the CPU list, default: all online CPUs), via
#   /proc/irq/N/smp_affinity_list.
# - RPS: when the NIC has fewer rx queues than CPUs, each rx queue's rps_cpus is set to all the
#   CPUs (and RFS flow tables are sized), so protocol work for 1M sockets is not stuck on the
#   few cores that take the IRQs. With a queue per CPU, RPS stays as it is (hardware spreads).
# - XPS: tx queue i is used by the CPUs c with c mod ntx == i, so each shard transmits on "its" queue.
# - Loopback and virtual devices (lo, veth, bridge, tun, ...) have no queue IRQs: safe no-op.
# - --dry-run prints the plan and changes nothing. Stop irqbalance first (or ban the CPUs),
#   otherwise it moves the IRQs back.
# Exit: 0 done / nothing to do, 1 some write failed, 2 usage error.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tuning/lib.sh
. "$HERE/lib.sh"

usage() {
    echo "usage: irq-affinity.sh [--dry-run] [--cpus LIST] IFACE   (LIST like 0-7,16-23)"
}

DRY=0
CPULIST=""
IFACE=""
while (( $# )); do
    case "$1" in
        --dry-run|-n) DRY=1; shift ;;
        --cpus) CPULIST=${2:-}; shift 2 || die "--cpus needs a list" ;;
        --cpus=*) CPULIST=${1#*=}; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) usage >&2; exit 2 ;;
        *) [[ -z "$IFACE" ]] || { usage >&2; exit 2; }; IFACE=$1; shift ;;
    esac
done
[[ -n "$IFACE" ]] || { usage >&2; exit 2; }
[[ "$IFACE" =~ ^[A-Za-z0-9_.:@-]+$ ]] || die "bad interface name: $IFACE"
[[ -e "/sys/class/net/$IFACE" ]] || die "no such interface: $IFACE"

# expand_cpus "0-3,8" -> "0 1 2 3 8"
expand_cpus() {
    local part a b
    local -a parts list=()
    IFS=, read -r -a parts <<<"$1"
    for part in "${parts[@]}"; do
        if [[ "$part" =~ ^([0-9]+)-([0-9]+)$ ]]; then
            a=${BASH_REMATCH[1]}; b=${BASH_REMATCH[2]}
            for (( ; a <= b; a++ )); do list+=("$a"); done
        elif [[ "$part" =~ ^[0-9]+$ ]]; then
            list+=("$part")
        else
            die "bad CPU list: $1"
        fi
    done
    echo "${list[*]}"
}

# cpus_to_mask "0 1 35" -> hex mask in the kernel's comma-separated 32-bit groups
cpus_to_mask() {
    local -a words=()
    local c max=0 i mask=""
    for c in $1; do (( c > max )) && max=$c; done
    for (( i = 0; i <= max / 32; i++ )); do words[i]=0; done
    for c in $1; do words[c / 32]=$(( words[c / 32] | (1 << (c % 32)) )); done
    for (( i = max / 32; i >= 0; i-- )); do
        if [[ -z "$mask" ]]; then mask=$(printf "%x" "${words[i]}"); else mask+=$(printf ",%08x" "${words[i]}"); fi
    done
    echo "$mask"
}

if [[ ! -e "/sys/class/net/$IFACE/device" ]]; then
    echo "$IFACE is a loopback/virtual device (no /sys/class/net/$IFACE/device): no queue IRQs, nothing to do"
    exit 0
fi

online=$(cat /sys/devices/system/cpu/online 2>/dev/null || echo 0)
read -r -a CPUS <<<"$(expand_cpus "${CPULIST:-$online}")"
ncpu=${#CPUS[@]}

if proc_running irqbalance; then
    echo "warning: irqbalance is running and will move these IRQs again; stop it or set IRQBALANCE_BANNED_CPUS" >&2
fi
if (( ! DRY )) && (( EUID != 0 )); then
    die "changing IRQ affinity and RPS/XPS needs root (use --dry-run for the plan)"
fi

# norm_mask "00000000,00000003" -> "3" (the kernel pads masks; compare them unpadded)
norm_mask() { sed 's/,//g; s/^0*\([0-9a-f]\)/\1/' <<<"$1"; }

rc=0
# change PATH NEW LABEL: prints and (unless dry-run) writes, skipping values already right.
change() {
    local path=$1 new=$2 label=$3 old
    old=$(cat "$path" 2>/dev/null) || old="n/a"
    if [[ "$old" == "$new" || "$(norm_mask "$old")" == "$(norm_mask "$new")" ]]; then
        echo "keep $path: $old ($label)"
    elif (( DRY )); then
        echo "would set $path: $old -> $new ($label)"
    elif { printf '%s\n' "$new" > "$path"; } 2>/dev/null; then
        echo "set $path: $old -> $new ($label)"
    else
        echo "error $path: cannot write (managed IRQ, read-only sysfs, or not permitted) ($label)" >&2
        rc=1
    fi
}

# --- queue IRQs -------------------------------------------------------------------------------
mapfile -t IRQS < <(nic_queue_irqs "$IFACE")
if (( ${#IRQS[@]} == 0 )); then
    echo "$IFACE: no per-queue IRQs found in /proc/interrupts (single legacy IRQ or not visible here)"
else
    # Pair rx and tx of the same queue number on the same CPU: order is by queue index.
    k=0 last_q=""
    for line in "${IRQS[@]}"; do
        read -r irq name <<<"$line"
        q=$(sed -n 's/.*[^0-9]\([0-9][0-9]*\)$/\1/p' <<<"$name")
        if [[ -n "$q" && "$q" == "$last_q" ]]; then (( k-- )) || true; fi
        cpu=${CPUS[$(( k % ncpu ))]}
        change "/proc/irq/$irq/smp_affinity_list" "$cpu" "$IFACE queue IRQ $name"
        last_q=$q
        k=$(( k + 1 ))
    done
fi

# --- RPS / RFS / XPS --------------------------------------------------------------------------
mapfile -t RXQ < <(find "/sys/class/net/$IFACE/queues" -maxdepth 1 -name 'rx-*' -printf '%f\n' | sort -t- -k2 -n)
mapfile -t TXQ < <(find "/sys/class/net/$IFACE/queues" -maxdepth 1 -name 'tx-*' -printf '%f\n' | sort -t- -k2 -n)
all_mask=$(cpus_to_mask "${CPUS[*]}")
if (( ${#RXQ[@]} < ncpu )); then
    flows=32768
    change /proc/sys/net/core/rps_sock_flow_entries "$flows" "RFS global flow table"
    for q in "${RXQ[@]}"; do
        change "/sys/class/net/$IFACE/queues/$q/rps_cpus" "$all_mask" "RPS: ${#RXQ[@]} rx queue(s) < $ncpu CPUs"
        change "/sys/class/net/$IFACE/queues/$q/rps_flow_cnt" $(( flows / ${#RXQ[@]} )) "RFS per-queue flows"
    done
else
    echo "keep RPS on $IFACE: ${#RXQ[@]} rx queues >= $ncpu CPUs, hardware already spreads"
fi
ntx=${#TXQ[@]}
for i in "${!TXQ[@]}"; do
    sel=()
    for (( c = 0; c < ncpu; c++ )); do
        (( c % ntx == i )) && sel+=("${CPUS[$c]}")
    done
    (( ${#sel[@]} )) || continue
    if [[ -e "/sys/class/net/$IFACE/queues/${TXQ[$i]}/xps_cpus" ]]; then
        change "/sys/class/net/$IFACE/queues/${TXQ[$i]}/xps_cpus" "$(cpus_to_mask "${sel[*]}")" "XPS: CPUs ${sel[*]}"
    else
        echo "skip XPS on $IFACE ${TXQ[$i]}: no xps_cpus (driver without XPS)"
    fi
done
(( DRY )) && echo "dry run: nothing changed"
exit "$rc"
