#!/usr/bin/env bash
# Run the demo stack in one process tree: stand-in sophia-api (with its MCP server) +
# ml-gateway upstreams and Warden in front of them, on the example policies
# (policies/sophia.toml, policies/demo/ai.toml) and age-encrypted demo secrets.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

rustup target add wasm32-unknown-unknown wasm32-wasip2 >/dev/null 2>&1 || true
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

MCP: sophia-api's MCP server on /mcp behind mcp-guard (local callers: the read-only tools)
  curl -s http://127.0.0.1:8080/mcp -H 'content-type: application/json' \
       -d '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"curl","version":"1"}}}'
  curl -s http://127.0.0.1:8080/mcp -H 'content-type: application/json' \
       -d '{"jsonrpc":"2.0","id":2,"method":"tools/list"}'            # 2 of 3 tools: delete_project filtered out
  curl -s http://127.0.0.1:8080/mcp -H 'content-type: application/json' \
       -d '{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"get_project","arguments":{"id":1}}}'
  curl -s -w ' %{http_code}\n' http://127.0.0.1:8080/mcp -H 'content-type: application/json' \
       -d '{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"delete_project","arguments":{"id":1}}}'
                                                                     # 403: JSON-RPC error for id 4

Inference: OpenAI-style bodies, ml-gateway over mTLS with its key injected; models sophia-small
and sophia-large only; 20 requests a minute per client key
  curl -s http://127.0.0.1:8080/v1/infer -H 'x-api-key: demo-client-key-0b5e' -H 'content-type: application/json' \
       -d '{"model":"sophia-small","messages":[{"role":"user","content":"hello warden"}],"max_tokens":16}'
  curl -sN http://127.0.0.1:8080/v1/infer -H 'x-api-key: demo-client-key-0b5e' -H 'content-type: application/json' \
       -d '{"model":"sophia-large","messages":[{"role":"user","content":"hello warden"}],"stream":true}'   # SSE tokens
  curl -s -w ' %{http_code}\n' http://127.0.0.1:8080/v1/infer -H 'x-api-key: demo-client-key-0b5e' \
       -H 'content-type: application/json' -d '{"model":"sophia-experimental","messages":[{"role":"user","content":"hi"}]}'
                                                                     # 403 from model-guard
  curl -s -w ' %{http_code}\n' http://127.0.0.1:8080/v1/infer -H 'content-type: application/json' \
       -d '{"model":"sophia-small","messages":[{"role":"user","content":"hi"}]}'   # 401 from api-key: no client key
  for i in $(seq 21); do curl -s -o /dev/null -w "$i: %{http_code} %header{retry-after}\n" \
       http://127.0.0.1:8080/v1/infer -H 'x-api-key: demo-batch-key-a41f' -H 'content-type: application/json' \
       -d '{"model":"sophia-small","messages":[{"role":"user","content":"hi"}],"max_tokens":8}'; done | tail -n 2
                                                                     # 20: 200, then 21: 429 with retry-after 3

  curl -s -H 'Authorization: Bearer demo-admin-token-c0ffee' http://127.0.0.1:9901/metrics | grep warden_requests
  curl -s -X POST -H 'Authorization: Bearer demo-admin-token-c0ffee' http://127.0.0.1:9901/reload
Ctrl-C stops everything.

MSG
"$target_dir/release/warden" run --config policies/demo/warden.toml
