# onnx-cle HTTP service image.
#   docker build -t onnx-cle .
#   docker run --rm -p 8080:8080 -v onnx-cle-data:/data onnx-cle
# Settings are the `onnx-cle serve` flags' environment variables (ONNX_CLE_*); see
# `onnx-cle serve --help`. tests/server_deploy.rs checks this file against the code.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
RUN cargo build --release --locked --bin onnx-cle

FROM debian:bookworm-slim
# CA certificates: TLS to an S3 endpoint (--blob-store s3://…) verifies against the system roots.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin cle \
    && mkdir -p /data && chown 10001:10001 /data
COPY --from=build /src/target/release/onnx-cle /usr/local/bin/onnx-cle
USER 10001:10001
ENV ONNX_CLE_ADDR=0.0.0.0:8080 \
    ONNX_CLE_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 CMD ["onnx-cle", "healthcheck"]
ENTRYPOINT ["onnx-cle"]
CMD ["serve"]
