# One image with both programs: `registry-edge` (the default entrypoint) and `registry-core`.
#
#   docker build -t registry-edge .                 # builds from source (rust + debian images)
#   docker-compose up -d                            # the edge in front of registry-core
#
# The base images are build arguments. The `prebuilt` target copies binaries built on the host
# (from target/release) onto RUNTIME_IMAGE instead of compiling, for machines that cannot pull a
# Rust image; the tests use it with a runtime image they make with `docker import`.
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUNTIME_IMAGE} AS runtime
WORKDIR /srv
EXPOSE 5000
ENTRYPOINT ["registry-edge"]

FROM runtime AS prebuilt
COPY target/release/registry-edge target/release/registry-core /usr/local/bin/

FROM ${RUST_IMAGE} AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins

FROM runtime AS from-source
COPY --from=build /src/target/release/registry-edge /src/target/release/registry-core /usr/local/bin/
# The CA bundle, for an S3 store over https (the slim image has none).
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
