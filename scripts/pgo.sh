#!/usr/bin/env bash
# A profile-guided `dist` build: the same profile (fat LTO, one codegen unit, stripped),
# compiled a second time with the branch and call counts of a training run, so LLVM lays
# out, inlines and splits hot from cold code for the request path. BENCHMARKS.md ("Tenth
# pass") has what it buys.
#
#   scripts/pgo.sh                                   glibc build → target/pgo/use/x86_64-unknown-linux-gnu/dist/warden
#   scripts/pgo.sh --target x86_64-unknown-linux-musl   the image's static build
#
# Steps: an instrumented build (target/pgo/gen), bench/pgo_train.py driving it over
# loopback (no policy, the network-isolation chain, the chain plus a secret; HTTP/1.1,
# bodies, h2c, TLS termination), the counts merged with llvm-profdata (rustup's
# llvm-tools, added here), then the build that uses them (target/pgo/use). Two full
# builds: about 30 minutes on two cores. Prints the path of the binary on stdout (and
# nothing else there: scripts/bench.sh and scripts/image.sh read it).
set -euo pipefail
cd -- "$(dirname "$0")/.." >/dev/null

target=x86_64-unknown-linux-gnu
while [[ $# -gt 0 ]]; do
    case "$1" in
        --target) target="$2"; shift 2 ;;
        *) echo "usage: scripts/pgo.sh [--target x86_64-unknown-linux-gnu|x86_64-unknown-linux-musl]" >&2; exit 2 ;;
    esac
done
for tool in nginx wrk curl h2load openssl python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool (scripts/setup.sh installs it)" >&2; exit 1; }
done
if [[ $target == *musl ]]; then
    command -v musl-gcc >/dev/null || { echo "missing musl-gcc (scripts/setup.sh installs it)" >&2; exit 1; }
    # The C parts of ring build with musl's gcc wrapper (as in scripts/image.sh).
    export CC_x86_64_unknown_linux_musl=musl-gcc
fi

rustup component add llvm-tools >&2
profdata="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-profdata"
[[ -x $profdata ]] || { echo "llvm-profdata not found at $profdata" >&2; exit 1; }

[[ -f plugins/target/wasm32-unknown-unknown/release/network_isolation.wasm ]] \
    || scripts/build-plugins.sh --no-test >&2

root=$PWD/target/pgo
raw=$root/profraw-$target
data=$root/warden-$target.profdata
rm -rf "$raw"
mkdir -p "$raw"

# --target keeps RUSTFLAGS off build scripts and proc macros: only the gateway is
# instrumented, and only it is built from the counts.
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$raw" \
    cargo build --profile dist --target "$target" --target-dir "$root/gen" -p warden --bin warden >&2
LLVM_PROFILE_FILE="$raw/warden-%p-%m.profraw" \
    python3 bench/pgo_train.py "$root/gen/$target/dist/warden" >&2
"$profdata" merge -o "$data" "$raw"/*.profraw >&2
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$data" \
    cargo build --profile dist --target "$target" --target-dir "$root/use" -p warden --bin warden >&2
echo "$root/use/$target/dist/warden"
