#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a bounded time (default 60 s each).
#
#   tools/fuzz.sh [SECONDS]
#
# Installs cargo-fuzz if missing. Uses a nightly toolchain when one is installed; otherwise the
# stable toolchain with RUSTC_BOOTSTRAP=1 (cargo-fuzz needs -Z flags such as -Zsanitizer).
# Corpora grow in fuzz/corpus/<target>/ (git-ignored), seeded from fuzz/seeds/<target>/;
# crashes land in fuzz/artifacts/<target>/ and make the script exit non-zero.
set -euo pipefail

SECS="${1:-60}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT/fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

CARGO=(cargo)
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    CARGO=(cargo +nightly)
else
    echo "fuzz.sh: no nightly toolchain; using stable with RUSTC_BOOTSTRAP=1" >&2
    export RUSTC_BOOTSTRAP=1
fi
# FUZZ_TOOLCHAIN=stable forces the fallback (for checking it).
if [[ "${FUZZ_TOOLCHAIN:-}" == "stable" ]]; then
    CARGO=(cargo +stable)
    export RUSTC_BOOTSTRAP=1
fi

mapfile -t TARGETS < <("${CARGO[@]}" fuzz list)
status=0
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t"
    echo "=== fuzz target $t for ${SECS}s ===" >&2
    if ! "${CARGO[@]}" fuzz run "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$SECS" -max_len=4096 -timeout=10 -print_final_stats=1; then
        echo "fuzz.sh: target $t FAILED (see fuzz/artifacts/$t/)" >&2
        status=1
    fi
done
exit "$status"
