# rolegate's container image: built from this repository in a Rust image, shipped in a minimal
# one with only the binary, run as an unprivileged user. The root filesystem can be mounted
# read-only: rolegate writes only to its data directory (--data-dir, a volume) and, for Unix
# sockets, to the directory of the socket (a volume too).
#
#   docker build -t rolegate:0.1.0 .
#   docker run --rm -p 50051:50051 -p 8080:8080 --read-only -v rolegate-data:/var/lib/rolegate \
#     rolegate:0.1.0
#
# deploy/kubernetes/ runs this image; tests/deploy.rs checks the properties below and that every
# flag given here exists.

# Build stage: the release binary (protos compile with protox; no protoc needed).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY src src
COPY benches benches
COPY examples examples
RUN cargo build --release --locked --bin rolegate \
    && install -D -m 0755 target/release/rolegate /out/usr/local/bin/rolegate \
    && install -d -m 0750 /out/var/lib/rolegate

# Runtime stage: glibc, CA certificates and a nonroot user (65532), no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/usr/local/bin/rolegate /usr/local/bin/rolegate
COPY --from=build --chown=65532:65532 /out/var/lib/rolegate /var/lib/rolegate
USER 65532:65532
WORKDIR /var/lib/rolegate
# No transparent huge pages, whatever the node's setting (docs/operations.md).
ENV MIMALLOC_ALLOW_THP=0
EXPOSE 50051 8080
ENTRYPOINT ["/usr/local/bin/rolegate"]
# A hub on the embedded store in /var/lib/rolegate, on every interface. A sidecar's manifest
# gives its own arguments (deploy/kubernetes/).
CMD ["serve", "--data-dir=/var/lib/rolegate", "--grpc-listen=0.0.0.0:50051", "--http-listen=0.0.0.0:8080"]
