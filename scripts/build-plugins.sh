#!/usr/bin/env bash
# Build every policy-plugin workspace (release) and run the plugins' native unit tests
# (the warden-sdk test harness). plugins/ builds for wasm32-unknown-unknown: no WASI
# imports at all, and the gateway turns the module into a component itself.
# tests/plugins/ builds for wasm32-wasip2: some of them exist to import WASI.
#
#   scripts/build-plugins.sh            build + native tests
#   scripts/build-plugins.sh --no-test  build only
#
# Idempotent and fast when nothing changed (cargo's incremental checks only).
# Outputs: plugins/target/wasm32-unknown-unknown/release/<crate>.wasm (already components) and
#          tests/plugins/target/wasm32-wasip2/release/<crate>.wasm (test-only plugins).
set -euo pipefail
cd "$(dirname "$0")/.."

run_tests=1
[[ "${1:-}" == "--no-test" ]] && run_tests=0

for t in wasm32-unknown-unknown wasm32-wasip2; do
    if ! rustup target list --installed 2>/dev/null | grep -qx "$t"; then
        rustup target add "$t"
    fi
done

echo "==> building plugins for wasm32-unknown-unknown"
cargo build --release --target wasm32-unknown-unknown --manifest-path plugins/Cargo.toml
echo "==> building tests/plugins for wasm32-wasip2"
cargo build --release --target wasm32-wasip2 --manifest-path tests/plugins/Cargo.toml

if [[ $run_tests == 1 ]]; then
    echo "==> native unit tests of plugins/ (warden-sdk harness)"
    cargo test --release --manifest-path plugins/Cargo.toml
fi

ls -1 plugins/target/wasm32-unknown-unknown/release/*.wasm tests/plugins/target/wasm32-wasip2/release/*.wasm
