# Trainer: Celery consumer of the `train` queue (one run at a time), CPU build.
#   docker build -f docker/trainer.Dockerfile -t distillery-trainer .
# CUDA build: docker/trainer-cuda.Dockerfile.

# ---- build: a virtualenv with the project and its dependencies -------------------------------------
FROM python:3.11.13-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
# A compiler for dependencies published as source only (llama-cpp-python); the runtime stage has none.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential=12.9 \
    && rm -rf /var/lib/apt/lists/*
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
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

# ---- runtime -----------------------------------------------------------------------------------------
FROM python:3.11.13-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    DISTILLERY_HOME=/var/lib/distillery \
    DISTILLERY_SHARED_DIR=/data/shared
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
