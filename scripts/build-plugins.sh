#!/usr/bin/env bash
# Build every policy-plugin workspace for wasm32-wasip2 (release) and run the plugins'
# native unit tests (the warden-sdk test harness).
#
#   scripts/build-plugins.sh            build + native tests
#   scripts/build-plugins.sh --no-test  build only
#
# Idempotent and fast when nothing changed (cargo's incremental checks only).
# Outputs: plugins/target/wasm32-wasip2/release/<crate>.wasm (already components) and
#          tests/plugins/target/wasm32-wasip2/release/<crate>.wasm (test-only plugins).
set -euo pipefail
cd "$(dirname "$0")/.."

run_tests=1
[[ "${1:-}" == "--no-test" ]] && run_tests=0

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi

for ws in plugins tests/plugins; do
    echo "==> building $ws for wasm32-wasip2"
    cargo build --release --target wasm32-wasip2 --manifest-path "$ws/Cargo.toml"
done

if [[ $run_tests == 1 ]]; then
    echo "==> native unit tests of plugins/ (warden-sdk harness)"
    cargo test --release --manifest-path plugins/Cargo.toml
fi

ls -1 plugins/target/wasm32-wasip2/release/*.wasm tests/plugins/target/wasm32-wasip2/release/*.wasm
