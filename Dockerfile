# syntax=docker/dockerfile:1.7
#
# Warden container image.
#
#   docker build -t warden:0.1.0 .
#   docker run --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges \
#       -v "$PWD/deploy/compose:/etc/warden:ro" -v "$PWD/secrets:/run/secrets:ro" \
#       -p 8080:8080 warden:0.1.0
#
# The builder stage is a thin wrapper over the build commands the README and CI use:
#
#   scripts/build-plugins.sh --no-test     (CI runs the plugin tests; the image only needs the .wasm)
#   cargo build --release -p warden
#   warden plugin precompile …             (fills the [policy] cache_dir, so start-up never recompiles)
#
# so what CI tests is what the image runs. The builder is Alpine, where the host target is
# x86_64-unknown-linux-musl and `cargo build --release` links statically: the runtime stage
# is distroless/static (no libc, no shell, no package manager; ~2 MB) plus what Warden needs.
#
# Runtime layout (the configs in deploy/ rely on it):
#   /usr/local/bin/warden              the gateway (stripped)
#   /usr/share/warden/plugins/*.wasm   the example policy plugins
#   /var/cache/warden/                 their precompiled artifacts ([policy] cache_dir)
#   /etc/warden/warden.toml            default config: the compose reference stack
#   /etc/warden/sophia.toml            its routes and policy chains
#   /run/secrets/                      secrets, mounted at run time (never baked in, never env)
#
# Nothing is written to the root filesystem at run time: it works with --read-only
# (a plugin that is not in the precompiled cache is compiled in memory at start).

ARG RUST_VERSION=1.95.0

# ---------------------------------------------------------------------------------------
FROM docker.io/library/rust:${RUST_VERSION}-alpine AS builder
# bash: scripts/*.sh; gcc + musl-dev: C parts of ring, zstd and jemalloc (make builds the
# latter); binutils: strip.
RUN apk add --no-cache bash gcc musl-dev binutils make
WORKDIR /src
COPY . .
# The toolchain pinned by rust-toolchain.toml, with the plugin target.
RUN rustup toolchain install && rustup target add wasm32-unknown-unknown wasm32-wasip2
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    scripts/build-plugins.sh --no-test
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release -p warden
# Stage the runtime layout at its final paths, so the precompile step below writes the
# cache where the runtime config looks for it.
RUN mkdir -p /usr/share/warden/plugins /etc/warden /var/cache/warden \
 && strip -o /usr/local/bin/warden target/release/warden \
 && cp plugins/target/wasm32-unknown-unknown/release/*.wasm /usr/share/warden/plugins/ \
 && cp deploy/compose/warden.toml deploy/compose/sophia.toml /etc/warden/ \
 && chmod 0644 /usr/share/warden/plugins/*.wasm /etc/warden/*
# Same directory as [policy] cache_dir in /etc/warden/warden.toml (and the ConfigMap).
RUN warden plugin precompile --cache-dir /var/cache/warden /usr/share/warden/plugins/*.wasm

# ---------------------------------------------------------------------------------------
FROM gcr.io/distroless/static-debian12:nonroot AS runtime
LABEL org.opencontainers.image.title="warden" \
      org.opencontainers.image.description="Wasm-extensible policy and secrets gateway" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /usr/local/bin/warden /usr/local/bin/warden
COPY --from=builder /usr/share/warden/plugins/ /usr/share/warden/plugins/
COPY --from=builder /etc/warden/ /etc/warden/
COPY --from=builder --chown=65532:65532 /var/cache/warden/ /var/cache/warden/
# distroless "nonroot": uid/gid 65532, no shell.
USER 65532:65532
# 8080: proxy listener; 9901: admin (health, readiness, metrics; POSTs need the admin token).
EXPOSE 8080 9901
# No curl in the image: the binary probes itself. /readyz (config loaded, plugins compiled,
# secrets resolved) is what `depends_on: condition: service_healthy` should wait for.
HEALTHCHECK --interval=10s --timeout=4s --start-period=15s --retries=3 \
    CMD ["/usr/local/bin/warden", "health", "--url", "http://127.0.0.1:9901/readyz", "--timeout", "3s"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/warden"]
CMD ["run", "--config", "/etc/warden/warden.toml"]
