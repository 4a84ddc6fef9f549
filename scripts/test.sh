#!/usr/bin/env bash
# The whole test suite: set-up, plugins, gateway, then every test (unit, plugin
# harness, end to end against real OpenBao, age, curl and TLS).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
scripts/build-plugins.sh
# Bins and tests in one build: built apart, the bins would miss the features the tests'
# dev-dependencies turn on, and the test build would compile the gateway a second time.
cargo build --release --workspace --bins --tests
# The registry-free OCI image (target/warden-oci.tar), which a packaging test unpacks and
# runs under chroot. A quick profile keeps CI short; the shipped image uses dist.
scripts/image.sh --profile image-check
# End-to-end tests start many gateways and upstreams; two at a time keeps timing checks
# honest on a 2-core machine.
cargo test --release --workspace --no-fail-fast -- --test-threads="${WARDEN_TEST_THREADS:-2}"
