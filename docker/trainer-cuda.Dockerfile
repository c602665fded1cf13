# Trainer, CUDA build: the same service on NVIDIA GPUs (the host needs the NVIDIA driver and Container
# Toolkit; single node or multi-node with torchrun, see k8s/extras/pytorchjob).
#   docker build -f docker/trainer-cuda.Dockerfile -t distillery-trainer-cuda .
# The default PyPI torch wheel brings its own CUDA runtime, cuDNN and NCCL as pinned pip packages, so
# a slim Python base is enough (an nvidia/cuda base would only add a second copy of those libraries);
# only the driver comes from the host.

# ---- build ---------------------------------------------------------------------------------------------
FROM python:3.11.13-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
# A compiler for dependencies published as source only (llama-cpp-python); the runtime stage has none.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential=12.9 \
    && rm -rf /var/lib/apt/lists/*
ARG TORCH_INDEX_URL=https://pypi.org/simple
RUN python -m venv /opt/venv \
    && pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
# llama-cpp-python compiles llama.cpp: a portable build (scripts/llama-cmake-args.sh), not one tuned
# to the build host's CPU.
COPY scripts/llama-cmake-args.sh ./scripts/
RUN CMAKE_ARGS="$(bash scripts/llama-cmake-args.sh)" pip install .

# ---- runtime -------------------------------------------------------------------------------------------
FROM python:3.11.13-slim-bookworm
# Without NVIDIA_DRIVER_CAPABILITIES=compute the container toolkit mounts no libcuda into the container.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    DISTILLERY_HOME=/var/lib/distillery \
    DISTILLERY_SHARED_DIR=/data/shared \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/distillery --create-home distillery
COPY --from=build /opt/venv /opt/venv
COPY docker/healthcheck.py /opt/healthcheck.py
USER 10001:10001
WORKDIR /var/lib/distillery
# The solo pool trains in the main loop and answers no Celery ping during a run: check the broker.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "/opt/healthcheck.py", "broker"]
ENTRYPOINT ["distillery"]
CMD ["trainer"]
