# syntax=docker/dockerfile:1
#
# The cert-csi image: one binary for the cluster's modes (node, controller,
# crds); built without the demo and sandbox.
#
#   docker build -t cert-csi:0.1.0 .
#
# Build stage: the toolchain the project is developed with. No protoc or
# other system tools are needed (build.rs compiles the CSI proto in Rust).
FROM rust:1.95-bookworm AS builder
WORKDIR /src
# Only what the build reads: every target Cargo.toml declares must exist
# (benches/ included), tests/ and deploy/ are not needed. crates/ holds the
# workspace member kube-sandbox: Cargo reads every member's manifest even
# when, as here, the member is not built.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
COPY benches ./benches
COPY crates ./crates
# The cache mounts keep the registry and compiled dependencies between
# builds; the binary is copied out because the target dir is not in the layer.
# --no-default-features leaves out the `sandbox` feature: the image runs
# `cert-csi node` and `cert-csi controller`, never the in-memory API server
# or the demo built on it, so a cluster's binary does not carry them. The
# `image` profile adds fat LTO and one codegen unit (see Cargo.toml).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile image --locked --no-default-features --bin cert-csi \
    && install -D -m 0755 target/image/cert-csi /out/cert-csi

# Runtime stage: glibc and libgcc only, no shell, no package manager. Mounts
# are made with syscalls, so no mount(8) is needed.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/cert-csi /usr/local/bin/cert-csi
# Non-root by default, which is right for the controller. The node plugin
# must mount tmpfs and bind mounts, so its DaemonSet sets runAsUser: 0 and
# privileged: true (charts/cert-csi/templates/node-daemonset.yaml).
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/cert-csi"]
