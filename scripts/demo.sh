#!/usr/bin/env bash
# Run the demo stack in one process tree: stand-in sophia-api + ml-gateway upstreams and
# Warden in front of them, on the example policies and age-encrypted demo secrets.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
scripts/build-plugins.sh --no-test
cargo build --release -p warden -p warden-tests --bins
target_dir=${CARGO_TARGET_DIR:-$root/target}

rm -f policies/demo/certs/ready
"$target_dir/release/demo-upstreams" "$root" &
upstreams=$!
trap 'kill $upstreams 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 1 100); do [ -f policies/demo/certs/ready ] && break; sleep 0.1; done
[ -f policies/demo/certs/ready ] || { echo "demo upstreams did not start" >&2; exit 1; }

cat <<'MSG'

Warden demo: gateway on http://127.0.0.1:8080, admin on http://127.0.0.1:9901
Try:
  curl -s http://127.0.0.1:8080/api/v1/projects                      # sophia-api, service token injected
  curl -s -X POST http://127.0.0.1:8080/api/v1/projects              # 403 from network-isolation (GET only)
  curl -s http://127.0.0.1:8080/api/admin/users                      # 403: only spiffe://sophia/ops
  curl -sN -X POST http://127.0.0.1:8080/v1/infer \
       -H 'x-api-key: demo-client-key-0b5e' -d 'hello warden'         # SSE tokens from ml-gateway (mTLS, key injected)
  curl -s -X POST http://127.0.0.1:8080/v1/infer -d 'hi'              # 401 from api-key: no client key
  curl -s http://127.0.0.1:9901/metrics | grep warden_requests        # Prometheus metrics
  curl -s -X POST -H 'Authorization: Bearer demo-admin-token-c0ffee' http://127.0.0.1:9901/reload
Ctrl-C stops everything.

MSG
"$target_dir/release/warden" run --config policies/demo/warden.toml
