#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a bounded time (default 60 s each).
#
#   tools/fuzz.sh [SECONDS]
#
# - Installs cargo-fuzz (`cargo install cargo-fuzz --locked`) only when it is missing.
# - Toolchain: nightly when one is installed; otherwise (e.g. CI, which has only stable) the
#   stable toolchain with RUSTC_BOOTSTRAP=1, since cargo-fuzz passes -Z flags
#   (-Zsanitizer=address, sancov passes). FUZZ_TOOLCHAIN=stable forces the stable fallback,
#   FUZZ_TOOLCHAIN=nightly forces nightly.
# - Builds optimised (`--release`, cargo-fuzz's -O) with AddressSanitizer; if the ASan build
#   fails on this toolchain, falls back to `--sanitizer none` (FUZZ_SANITIZER overrides).
# - Corpora grow in fuzz/corpus/<target>/ (git-ignored), seeded from fuzz/seeds/<target>/;
#   crashes land in fuzz/artifacts/<target>/ and make the script exit non-zero.
# - Ends with a summary: libFuzzer's executed-run count per target.
set -euo pipefail

SECS="${1:-60}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT/fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

have_rustup=0
command -v rustup >/dev/null 2>&1 && have_rustup=1
want="${FUZZ_TOOLCHAIN:-}"
if [[ -z "$want" ]]; then
    if ((have_rustup)) && rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
        want=nightly
    else
        want=stable
    fi
fi
case "$want" in
nightly)
    CARGO=(cargo +nightly)
    ;;
stable)
    echo "fuzz.sh: using the stable toolchain with RUSTC_BOOTSTRAP=1" >&2
    export RUSTC_BOOTSTRAP=1
    if ((have_rustup)); then CARGO=(cargo +stable); else CARGO=(cargo); fi
    ;;
*)
    echo "fuzz.sh: FUZZ_TOOLCHAIN must be stable or nightly, not '$want'" >&2
    exit 2
    ;;
esac

SAN="${FUZZ_SANITIZER:-}"
if [[ -z "$SAN" ]]; then
    if "${CARGO[@]}" fuzz build --release --sanitizer address; then
        SAN=address
    else
        echo "fuzz.sh: ASan build failed on this toolchain; using --sanitizer none" >&2
        SAN=none
    fi
fi
FUZZ_FLAGS=(--release --sanitizer "$SAN")
"${CARGO[@]}" fuzz build "${FUZZ_FLAGS[@]}"

mapfile -t TARGETS < <("${CARGO[@]}" fuzz list)
LOGDIR="$(mktemp -d)"
trap 'rm -rf "$LOGDIR"' EXIT
status=0
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t"
    echo "=== fuzz target $t for ${SECS}s (sanitizer: $SAN) ===" >&2
    if ! "${CARGO[@]}" fuzz run "${FUZZ_FLAGS[@]}" "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$SECS" -max_len=4096 -timeout=10 -print_final_stats=1 \
        2>&1 | tee "$LOGDIR/$t.log" >&2; then
        echo "fuzz.sh: target $t FAILED (see fuzz/artifacts/$t/)" >&2
        status=1
    fi
done

echo "fuzz.sh: summary (${SECS}s per target, toolchain $want, sanitizer $SAN)"
for t in "${TARGETS[@]}"; do
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$LOGDIR/$t.log" | tail -1)"
    printf '  %-12s %s runs\n' "$t" "${runs:-?}"
done
exit "$status"
