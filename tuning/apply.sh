#!/usr/bin/env bash
# Apply corelay's sysctl recommendations for N connections: raise-only and idempotent.
#
#   tuning/apply.sh [--connections N] [--processes P] [--dry-run] [--persist]
#                   [--only KEY[,KEY|PREFIX.]...] [--revert-file FILE]
#   tuning/apply.sh --revert FILE [--dry-run]
#
# - Only values below the recommendation are changed; a higher value is never lowered
#   (tcp_mem is raised element-wise). A second run changes nothing.
# - Before changing anything the previous values are written to a revert file (sysctl.conf
#   format, `key = value`); `--revert FILE` writes them back (and undoes --persist files).
# - --dry-run prints exactly what would happen (`would set KEY: OLD -> NEW`) and changes nothing.
# - --persist also writes $CORELAY_ETC_DIR/sysctl.d/90-corelay.conf and
#   $CORELAY_ETC_DIR/security/limits.d/90-corelay.conf (CORELAY_ETC_DIR defaults to /etc).
# - CORELAY_SYSCTL_ROOT=/dir writes a fake tree instead of /proc/sys (tests, review).
# Exit: 0 success, 1 some write failed, 2 usage error.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tuning/lib.sh
. "$HERE/lib.sh"

ETC_DIR="${CORELAY_ETC_DIR:-/etc}"
SYSCTL_D_FILE="$ETC_DIR/sysctl.d/90-corelay.conf"
LIMITS_D_FILE="$ETC_DIR/security/limits.d/90-corelay.conf"

usage() {
    cat <<'EOF'
usage: apply.sh [--connections N] [--processes P] [--dry-run] [--persist]
                [--only KEY[,KEY|PREFIX.]...] [--revert-file FILE]
       apply.sh --revert FILE [--dry-run]
  --connections N     connections this host must hold (default 1000000)
  --processes P       gateway processes per host (sizes fs.nr_open / nofile; default 1)
  --dry-run           print the plan ("would set KEY: OLD -> NEW"), change nothing
  --persist           also write sysctl.d and limits.d files (90-corelay.conf)
  --only LIST         only these keys; an entry ending in '.' is a prefix (e.g. net.core.)
  --revert-file FILE  where to save the previous values (default: /var/lib/corelay or $TMPDIR)
  --revert FILE       restore the values saved in FILE
Env: CORELAY_SYSCTL_ROOT (default /proc/sys), CORELAY_ETC_DIR (default /etc).
EOF
}

N=1000000
P=1
DRY=0
PERSIST=0
ONLY=""
REVERT_FROM=""
REVERT_FILE=""
while (( $# )); do
    case "$1" in
        --connections) N=${2:-}; shift 2 || die "--connections needs a value" ;;
        --connections=*) N=${1#*=}; shift ;;
        --processes) P=${2:-}; shift 2 || die "--processes needs a value" ;;
        --processes=*) P=${1#*=}; shift ;;
        --dry-run|-n) DRY=1; shift ;;
        --persist) PERSIST=1; shift ;;
        --only) ONLY=${2:-}; shift 2 || die "--only needs a value" ;;
        --only=*) ONLY=${1#*=}; shift ;;
        --revert) REVERT_FROM=${2:-}; shift 2 || die "--revert needs a file" ;;
        --revert=*) REVERT_FROM=${1#*=}; shift ;;
        --revert-file) REVERT_FILE=${2:-}; shift 2 || die "--revert-file needs a file" ;;
        --revert-file=*) REVERT_FILE=${1#*=}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done
if ! is_uint "$N" || (( N == 0 )); then die "--connections must be a positive integer"; fi
if ! is_uint "$P" || (( P == 0 )); then die "--processes must be a positive integer"; fi

need_root() {
    if [[ "$SYSCTL_ROOT" == /proc/sys && $EUID -ne 0 ]]; then
        die "writing /proc/sys needs root (use --dry-run to see the plan, or CORELAY_SYSCTL_ROOT for a fake tree)"
    fi
}

# sysctl_write KEY VALUE: returns non-zero (with a message) when the kernel refuses.
sysctl_write() {
    local p err
    p=$(sysctl_path "$1")
    if ! err=$( { printf '%s\n' "$2" > "$p"; } 2>&1 ); then
        printf 'error %s: cannot write %s: %s\n' "$1" "$p" "${err##*: }" >&2
        return 1
    fi
}

# ---------------------------------------------------------------------------------------------
# --revert FILE
# ---------------------------------------------------------------------------------------------
if [[ -n "$REVERT_FROM" ]]; then
    [[ -r "$REVERT_FROM" ]] || die "revert file not readable: $REVERT_FROM"
    (( DRY )) || need_root
    rc=0
    while IFS= read -r line || [[ -n "$line" ]]; do
        case "$line" in
            '#@remove-file '*)
                f=${line#'#@remove-file '}
                if (( DRY )); then echo "would remove $f"; else rm -f -- "$f" && echo "removed $f"; fi
                continue ;;
            '#@restore-file '*)
                read -r f b <<<"${line#'#@restore-file '}"
                if (( DRY )); then echo "would restore $f from $b"; else mv -f -- "$b" "$f" && echo "restored $f from $b"; fi
                continue ;;
            ''|'#'*|';'*) continue ;;
        esac
        [[ "$line" == *=* ]] || { echo "ignored line: $line" >&2; continue; }
        key=${line%%=*}; key=${key//[[:space:]]/}
        old=${line#*=}
        # shellcheck disable=SC2086 # collapse whitespace
        set -- $old; old="$*"
        sysctl_get "$key" || cur="n/a"
        if [[ "$cur" == "$old" ]]; then
            echo "keep $key: $cur (already the saved value)"
        elif (( DRY )); then
            echo "would restore $key: $cur -> $old"
        elif sysctl_write "$key" "$old"; then
            echo "restore $key: $cur -> $old"
        else
            rc=1
        fi
    done < "$REVERT_FROM"
    exit "$rc"
fi

# ---------------------------------------------------------------------------------------------
# plan
# ---------------------------------------------------------------------------------------------
compute_recs "$N" "$P"

selected() { # selected KEY: honours --only
    [[ -z "$ONLY" ]] && return 0
    local e
    IFS=, read -r -a _only <<<"$ONLY"
    for e in "${_only[@]}"; do
        [[ "$e" == "$1" ]] && return 0
        [[ "$e" == *. && "$1" == "$e"* ]] && return 0
    done
    return 1
}

PLAN_KEYS=() PLAN_OLD=() PLAN_NEW=()
declare -A EFFECTIVE=()   # value each key has after apply (for --persist)
for key in "${APPLY_KEYS[@]}"; do
    selected "$key" || continue
    if ! sysctl_get "$key"; then
        echo "skip $key: $READ_ERR"
        continue
    fi
    new=$(raise_value "$cur" "${REC[$key]}")
    EFFECTIVE[$key]=$new
    if [[ "$new" != "$cur" ]]; then
        PLAN_KEYS+=("$key"); PLAN_OLD+=("$cur"); PLAN_NEW+=("$new")
    else
        echo "keep $key: $cur (recommended ${REC[$key]})"
    fi
done
if [[ -z "$ONLY" ]]; then
    echo "note net.ipv4.ip_local_port_range, tcp_tw_reuse: client/load-generator side only, not changed here"
    echo "note net.ipv4.tcp_rmem/tcp_wmem, tcp_fin_timeout, tcp_keepalive_time: never lowered by apply; see tuning/check.sh"
fi

persist_sysctl_content() {
    local key
    printf '# corelay: sysctls for %s connections (%s process(es)), written by tuning/apply.sh --persist\n' "$N" "$P"
    printf '# Raise-only: each value is max(value at install time, recommendation). See docs/tuning.md.\n'
    for key in "${APPLY_KEYS[@]}"; do
        [[ -n "${EFFECTIVE[$key]:-}" ]] || continue
        # '-': sysctl --system skips keys the kernel lacks at boot (nf_conntrack not loaded yet)
        if [[ "$key" == net.netfilter.* ]]; then printf -- '-'; fi
        printf '%s = %s\n' "$key" "${EFFECTIVE[$key]}"
    done
}
persist_limits_content() {
    printf '# corelay: limits for interactive/PAM sessions (systemd services use LimitNOFILE= instead).\n'
    printf '# %s connections over %s process(es): %s fds per process (+%s headroom), rounded up.\n' \
        "$N" "$P" "$PER_PROC" "$FD_HEADROOM"
    printf '*    soft nofile  %s\n*    hard nofile  %s\n' "$NOFILE_REC" "$NOFILE_REC"
    printf 'root soft nofile  %s\nroot hard nofile  %s\n' "$NOFILE_REC" "$NOFILE_REC"
    printf '*    soft memlock unlimited\n*    hard memlock unlimited\n'
}

if (( DRY )); then
    for i in "${!PLAN_KEYS[@]}"; do
        echo "would set ${PLAN_KEYS[$i]}: ${PLAN_OLD[$i]} -> ${PLAN_NEW[$i]}"
    done
    if (( PERSIST )); then
        echo "would write $SYSCTL_D_FILE"
        echo "would write $LIMITS_D_FILE (nofile $NOFILE_REC, memlock unlimited)"
    fi
    echo "dry run: ${#PLAN_KEYS[@]} change(s) planned, nothing changed"
    exit 0
fi

if (( ${#PLAN_KEYS[@]} == 0 && ! PERSIST )); then
    echo "nothing to change: every selected setting is at or above the recommendation for $N connections"
    exit 0
fi
need_root

# ---------------------------------------------------------------------------------------------
# revert file first, then the changes
# ---------------------------------------------------------------------------------------------
if [[ -z "$REVERT_FILE" ]]; then
    ts=$(date +%Y%m%d-%H%M%S)
    if mkdir -p /var/lib/corelay 2>/dev/null && [[ -w /var/lib/corelay ]]; then
        REVERT_FILE="/var/lib/corelay/sysctl-revert-$ts-$$.conf"
    else
        REVERT_FILE="${TMPDIR:-/tmp}/corelay-sysctl-revert-$ts-$$.conf"
    fi
fi
if [[ -e "$REVERT_FILE" ]]; then
    die "revert file $REVERT_FILE exists (it may hold the original values); pass another --revert-file"
fi
{
    printf '# corelay sysctl revert file: values before tuning/apply.sh on %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    printf '# sysctl root: %s\n# restore with: tuning/apply.sh --revert %s\n' "$SYSCTL_ROOT" "$REVERT_FILE"
    for i in "${!PLAN_KEYS[@]}"; do
        printf '%s = %s\n' "${PLAN_KEYS[$i]}" "${PLAN_OLD[$i]}"
    done
    if (( PERSIST )); then
        ts=$(date +%Y%m%d-%H%M%S)
        for f in "$SYSCTL_D_FILE" "$LIMITS_D_FILE"; do
            if [[ -e "$f" ]]; then
                cp -p -- "$f" "$f.corelay-bak-$ts"
                printf '#@restore-file %s %s\n' "$f" "$f.corelay-bak-$ts"
            else
                printf '#@remove-file %s\n' "$f"
            fi
        done
    fi
} > "$REVERT_FILE" || die "cannot write revert file $REVERT_FILE"
echo "revert file: $REVERT_FILE"

rc=0
for i in "${!PLAN_KEYS[@]}"; do
    key=${PLAN_KEYS[$i]}
    if sysctl_write "$key" "${PLAN_NEW[$i]}"; then
        now=$(sysctl_read "$key") || now="?"
        if [[ "$now" == "${PLAN_NEW[$i]}" ]]; then
            echo "set $key: ${PLAN_OLD[$i]} -> ${PLAN_NEW[$i]}"
        else
            echo "set $key: ${PLAN_OLD[$i]} -> ${PLAN_NEW[$i]} (kernel reports $now)"
        fi
    else
        rc=1
    fi
done

if (( PERSIST )); then
    mkdir -p -- "${SYSCTL_D_FILE%/*}" "${LIMITS_D_FILE%/*}"
    persist_sysctl_content > "$SYSCTL_D_FILE" && echo "wrote $SYSCTL_D_FILE"
    persist_limits_content > "$LIMITS_D_FILE" && echo "wrote $LIMITS_D_FILE"
else
    echo "note limits: corelay.service sets LimitNOFILE/LimitMEMLOCK; --persist writes $LIMITS_D_FILE for shells"
fi
exit "$rc"
