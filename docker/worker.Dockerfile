# Worker: Celery consumer of the `rationales` queue (calls the teachers, stores rationales).
#   docker build -f docker/worker.Dockerfile -t distillery-worker .

# ---- build: a virtualenv with the project and its dependencies -------------------------------------
FROM python:3.11.13-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
# A compiler for dependencies published as source only (llama-cpp-python); the runtime stage has none.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential=12.9 \
    && rm -rf /var/lib/apt/lists/*
# CPU wheel of torch (sentence embeddings for kNN demonstrations); workers need no GPU.
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
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "/opt/healthcheck.py", "celery"]
ENTRYPOINT ["distillery"]
CMD ["worker", "--concurrency", "4"]
