#!/usr/bin/env bash
# Side-by-side proxy benchmark, one invocation: upstream direct, nginx, HAProxy and Warden
# (no policy / access log on / policy chain pooled / per-request / + secret injection /
# tracing unsampled and sampled into a span sink).
# Prints a markdown table of ratios (absolute numbers on a shared VM are noise), per-request
# overheads, start-up time, RSS and binary size. Loopback (127.0.0.1) only; the harness
# takes about 6 minutes, the default profile-guided build about 30 before it.
#
#   scripts/bench.sh                     build (dist profile, profile-guided) + run, defaults: 3 rounds, -c32 -d4s
#   scripts/bench.sh --no-pgo ...        the plain dist build instead (no training run; about a third of the build time)
#   scripts/bench.sh --no-build ...      skip the builds (runs $WARDEN_BIN if set, else the newest of the
#                                        profile-guided binary and target/dist)
# --no-build and --no-pgo come before the harness's own options.
#   scripts/bench.sh --rounds 5 --duration 5s --conns 64 --only nginx,w-pool --keep --no-pin
#
# Method and caveats: bench/bench.py (docstring) and BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

build=1
pgo=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --no-build) build=0; shift ;;
        --no-pgo) pgo=0; shift ;;
        *) break ;;
    esac
done

for tool in nginx haproxy wrk taskset python3 strip; do
    command -v "$tool" >/dev/null || { echo "missing $tool (scripts/setup.sh installs it)" >&2; exit 1; }
done

if [[ $build == 1 ]]; then
    scripts/build-plugins.sh --no-test >&2
    # The shipped build: fat LTO, one codegen unit, stripped (Cargo.toml, [profile.dist]),
    # compiled with the counts of a training run (scripts/pgo.sh).
    if [[ $pgo == 1 ]]; then
        WARDEN_BIN=$(scripts/pgo.sh)
    else
        cargo build --profile dist -p warden --bin warden >&2
        WARDEN_BIN=target/dist/warden
    fi
    export WARDEN_BIN
    # The fixed-rate load generator (its own latencies do not need the long build).
    cargo build --release -p warden-tests --bin rate-load >&2
elif [[ $pgo == 0 ]]; then
    export WARDEN_BIN=${WARDEN_BIN:-target/dist/warden}
fi

pid=
cleanup() {
    # The driver kills its children itself (and they die with it: PR_SET_PDEATHSIG).
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Bounded: the harness itself takes ~6 minutes with the defaults.
timeout --signal=TERM --kill-after=10s 720s python3 bench/bench.py "$@" &
pid=$!
wait "$pid"
