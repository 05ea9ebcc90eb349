#!/usr/bin/env bash
# The whole test suite, from a fresh clone on Debian with Rust. Installs what it needs.
#   bash tools/test.sh                 everything CI runs
#   FUZZ=1 bash tools/test.sh          also a bounded fuzz run of every target (FUZZ_SECONDS each,
#                                      default 10; needs cargo-fuzz, which tools/fuzz.sh installs)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
step() { printf '\n==> %s\n' "$*"; }

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
need_apt=()
command -v python3 >/dev/null || need_apt+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
command -v shellcheck >/dev/null || need_apt+=(shellcheck)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
[ -e /usr/include/zmq.h ] || need_apt+=(libzmq3-dev)
command -v chromium >/dev/null || need_apt+=(chromium)        # tests/browser.rs, browser_media.rs, live_browser.rs
command -v npm >/dev/null || need_apt+=(npm)                  # tests/live_browser.rs (mpegts.js, hls.js)
command -v openssl >/dev/null || need_apt+=(openssl)          # tests/tls_interop.rs, tls_e2e.rs, media_transports.rs
command -v ffmpeg >/dev/null || need_apt+=(ffmpeg)            # tests/media_router.rs, media_e2e.rs, media_transports.rs, rtmp_ffmpeg.rs
command -v cc >/dev/null || need_apt+=(gcc)                   # tests/sdk_backends.rs (C example)
command -v go >/dev/null || need_apt+=(golang-go)             # tests/sdk_backends.rs (Go SDK; Debian 12: 1.19)
command -v nats-server >/dev/null || need_apt+=(nats-server)  # bridge/nats/tests (Debian 12: 2.9.10)
{ command -v ip && command -v tc && command -v ss; } >/dev/null || need_apt+=(iproute2)  # bridge/nats/tests/netns.rs (namespaces, veth, bridge), tests/media_slow.rs (tc tbf), ss: tests/media_transports.rs
command -v nft >/dev/null || need_apt+=(nftables)            # connect/tests/netns.rs (blocked ports, blackholes)
command -v tinyproxy >/dev/null || need_apt+=(tinyproxy)     # connect/tests/netns.rs (the CONNECT proxy)
command -v curl >/dev/null || need_apt+=(curl)               # connect/tests/zone.rs (HTTPS client of the controllers)
if [ ${#need_apt[@]} -gt 0 ]; then
  step "installing ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
for c in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
done

step "python test clients (pinned, cached venv: tools/py/env.sh)"
bash tools/py/env.sh >/dev/null

step "browser players (npm ci from tools/browser/package-lock.json, cached: tools/browser/env.sh)"
bash tools/browser/env.sh >/dev/null

# tests/sdk_backends.rs regenerates the C header and diffs it with the committed one.
CBINDGEN_VERSION=0.29.0
if ! cbindgen --version 2>/dev/null | grep -qx "cbindgen $CBINDGEN_VERSION"; then
  step "installing cbindgen $CBINDGEN_VERSION"
  cargo install cbindgen --version "$CBINDGEN_VERSION" --locked
fi

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

step "fuzz targets compile and lint (stable; tools/fuzz.sh builds and runs them)"
# fuzz/ is its own workspace; sharing target/ reuses the dependencies clippy just checked.
# Checking never links, so libfuzzer-sys is pointed at a placeholder library instead of
# compiling libFuzzer's C++ (about 20 s). No -Z flags here, so no RUSTC_BOOTSTRAP either.
CUSTOM_LIBFUZZER_PATH=/nonexistent/libfuzzer.a \
  cargo clippy --manifest-path fuzz/Cargo.toml --bins --target-dir target -- -D warnings

step "layering: proto + ring + sdk build without the runtime (no glommio)"
cargo build --no-default-features --features sdk --lib

step "unit, property, integration and process tests"
cargo test --workspace --no-fail-fast

step "Autobahn|Testsuite 1.* - 11.* against the gateway in echo mode (tools/autobahn)"
# The debug binary `cargo test` just built is fast enough for the suite (about a minute) and
# saves a release (LTO) build.
cargo build --bin corelay
port=$((20000 + RANDOM % 20000))
"${CARGO_TARGET_DIR:-target}/debug/corelay" run --config tools/autobahn/gateway.toml --echo --listen "127.0.0.1:$port" --shards 2 --no-admin >/tmp/corelay-autobahn.log 2>&1 &
gw=$!
trap 'kill $gw 2>/dev/null || true' EXIT
for _ in $(seq 50); do grep -q "listening on" /tmp/corelay-autobahn.log && break; sleep 0.1; done
# The repository's own runner: the pinned suite in a venv cached under ~/.cache/corelay
# (built on first use, about a minute), checked against tools/autobahn/expected.txt.
AUTOBAHN_REPORT="${TMPDIR:-/tmp}/corelay-autobahn-report" bash tools/autobahn/run.sh 127.0.0.1 "$port"
kill -TERM $gw; wait $gw || true
trap - EXIT

if [ -n "${FUZZ:-}" ]; then
  step "fuzz run (bounded: ${FUZZ_SECONDS:-10}s per target)"
  bash tools/fuzz.sh "${FUZZ_SECONDS:-10}"
fi
step "all tests passed"
