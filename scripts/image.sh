#!/usr/bin/env bash
# Build Warden's container image without any registry: a static musl binary, the example
# plugins precompiled, CA certificates and a non-root user, put together from scratch with
# buildah and written as an OCI archive to target/warden-oci.tar (load it with
# `podman load -i target/warden-oci.tar`, or `skopeo copy oci-archive:… docker-daemon:…`).
#
#   scripts/image.sh                         the shipped build (profile dist: fat LTO, stripped,
#                                            profile-guided by scripts/pgo.sh's training run)
#   scripts/image.sh --no-pgo                profile dist without the training run (a third of the build time)
#   scripts/image.sh --profile image-check   the same layout, built in half the time (the tests)
#
# The layout is the Dockerfile's (for those with a registry), and deploy/ relies on it:
#   /usr/local/bin/warden              the gateway, statically linked (musl): no libc needed
#   /usr/share/warden/plugins/*.wasm   the example policy plugins
#   /var/cache/warden/                 their precompiled artifacts ([policy] cache_dir)
#   /etc/warden/warden.toml            default config: the compose reference stack
#   /etc/warden/sophia.toml            its routes and policy chains
#   /etc/ssl/certs/ca-certificates.crt the CA bundle (upstream TLS with system roots)
#   /etc/passwd, /etc/group            the user `warden`, uid/gid 65532
#   /run/secrets/                      secrets, mounted at run time (never baked in, never env)
#   /tmp                               world-writable, sticky (or a tmpfs at run time)
# Nothing is written to the root filesystem at run time: it runs with --read-only.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=dist
out=target/warden-oci.tar
pgo=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --profile) profile="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --no-pgo) pgo=0; shift ;;
        *) echo "usage: scripts/image.sh [--profile dist|image-check|release] [--no-pgo] [--out FILE]" >&2; exit 2 ;;
    esac
done

target=x86_64-unknown-linux-musl
# Works inside a container too (no overlay mounts needed).
export STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}"
for tool in buildah musl-gcc; do
    command -v "$tool" >/dev/null || { echo "missing $tool (scripts/setup.sh installs it)" >&2; exit 1; }
done
# The C parts of ring build with musl's gcc wrapper.
export CC_x86_64_unknown_linux_musl=musl-gcc
[[ -f plugins/target/wasm32-unknown-unknown/release/network_isolation.wasm ]] \
    || scripts/build-plugins.sh --no-test >&2
if [[ $profile == dist && $pgo == 1 ]]; then
    # The training run exercises this very target's binary (static musl, its allocator).
    bin=$(scripts/pgo.sh --target "$target")
else
    cargo build --profile "$profile" --target "$target" -p warden --bin warden >&2
    bin="target/$target/$profile/warden"
fi

root=$(mktemp -d)
ctr=
cleanup() {
    [[ -n "$ctr" ]] && buildah rm "$ctr" >/dev/null 2>&1 || true
    rm -rf "$root"
}
trap cleanup EXIT

install -d -m 0755 "$root/usr/local/bin" "$root/usr/share/warden/plugins" "$root/etc/warden" \
    "$root/etc/ssl/certs" "$root/run/secrets"
install -d -m 1777 "$root/tmp"
install -d -m 0755 -o 65532 -g 65532 "$root/var/cache/warden"
strip -o "$root/usr/local/bin/warden" "$bin"
chmod 0755 "$root/usr/local/bin/warden"
install -m 0644 plugins/target/wasm32-unknown-unknown/release/*.wasm "$root/usr/share/warden/plugins/"
install -m 0644 deploy/compose/warden.toml deploy/compose/sophia.toml "$root/etc/warden/"
install -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nwarden:x:65532:65532:warden:/nonexistent:/sbin/nologin\n' \
    > "$root/etc/passwd"
printf 'root:x:0:\nwarden:x:65532:\n' > "$root/etc/group"
chmod 0644 "$root/etc/passwd" "$root/etc/group"
# The same directory as [policy] cache_dir in /etc/warden/warden.toml: start-up never
# compiles a plugin. The binary precompiles with the engine settings it runs with.
"$bin" plugin precompile --cache-dir "$root/var/cache/warden" "$root"/usr/share/warden/plugins/*.wasm >&2
chown -R 65532:65532 "$root/var/cache/warden"

version=$("$bin" --version | awk '{print $2}')
ctr=$(buildah from scratch)
# Copied into the container's mount so ownership and modes come along as staged (the cache
# belongs to the runtime user).
mnt=$(buildah mount "$ctr")
cp -a "$root/." "$mnt/"
buildah umount "$ctr" >/dev/null
buildah config \
    --user 65532:65532 \
    --entrypoint '["/usr/local/bin/warden"]' \
    --cmd '["run", "--config", "/etc/warden/warden.toml"]' \
    --port 8080 --port 9901 \
    --stop-signal SIGTERM \
    --workingdir / \
    --label org.opencontainers.image.title=warden \
    --label "org.opencontainers.image.version=$version" \
    --label "org.opencontainers.image.description=Wasm-extensible policy and secrets gateway" \
    --label org.opencontainers.image.licenses=Apache-2.0 \
    "$ctr"
image="localhost/warden:$version"
buildah commit --quiet --rm "$ctr" "$image" >/dev/null
ctr=
mkdir -p "$(dirname "$out")"
rm -f "$out"
buildah push --quiet "$image" "oci-archive:$out:warden:$version" >/dev/null
buildah rmi "$image" >/dev/null 2>&1 || true
echo "$out: $(du -h "$out" | cut -f1) (binary $(du -h "$root/usr/local/bin/warden" | cut -f1))"
