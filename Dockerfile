# syntax=docker/dockerfile:1
# The tgipool image: `tgipool run` (the operator, the default), `tgipool gateway` (the model gateway, with
# its compiled data plane `tgipool-gateway-core`) and
# `tgipool emulate` (the TGI emulator). Multi-stage: the build stage installs the package into a venv,
# the runtime stage is the same slim base with only that venv, running as a non-root user that
# works with a read-only root filesystem (the chart mounts an emptyDir at /tmp).
#
# Not built or run on the project's machines (no Docker engine there): the Helm e2e test runs the
# operator from the source tree with the chart's ServiceAccount identity instead.
#
#   docker build -t ghcr.io/tgipool/tgipool:0.1.0 .
#
# Pinned base: replace the tag by its digest (python:3.11.14-slim-bookworm@sha256:...) in your registry
# mirror; the digest cannot be looked up from here.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG GO_IMAGE=golang:1.26-bookworm

# The gateway's compiled data plane (`tgipool gateway --core auto` finds it on PATH). Static: no libc needed.
FROM ${GO_IMAGE} AS core
WORKDIR /src
COPY gatewaycore/ ./
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/tgipool-gateway-core .

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 UV_NO_CACHE=1 UV_COMPILE_BYTECODE=1
RUN python -m pip install uv==0.13.8 && python -m uv venv /opt/tgipool
WORKDIR /src
# Only what the wheel needs: the dependency pins in pyproject.toml, the package, the readme it names.
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN python -m uv pip install --python /opt/tgipool/bin/python . \
 && /opt/tgipool/bin/tgipool --help >/dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="tgipool" \
      org.opencontainers.image.description="Operator, gateway and TGI emulator for pools of HuggingFace TGI servers" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/tgipool /opt/tgipool
COPY --from=core /out/tgipool-gateway-core /opt/tgipool/bin/tgipool-gateway-core
ENV PATH=/opt/tgipool/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    HF_HOME=/tmp/hf
# A numeric non-root user (the restricted profile's runAsNonRoot can check it without /etc/passwd).
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["tgipool"]
CMD ["run", "--liveness=http://0.0.0.0:8080/healthz", "--json-logs"]
