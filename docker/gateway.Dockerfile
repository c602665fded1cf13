# Gateway: REST API, student inference on CPU, /metrics. Build from the repository root:
#   docker build -f docker/gateway.Dockerfile -t distillery-gateway .
# The same image runs the one-shot `migrate` (distillery db upgrade) and the CLI.

# ---- build: a virtualenv with the project and its dependencies -------------------------------------
FROM python:3.11.13-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
# A compiler for dependencies published as source only (llama-cpp-python) and for llama.cpp's
# llama-server (the llamacpp backend's default runtime); the runtime stage has none.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential=12.9 cmake=3.25.1-1 \
    && rm -rf /var/lib/apt/lists/*
# CPU wheel of torch: the default PyPI wheel drags in gigabytes of CUDA libraries a gateway never uses.
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
# llama-server from the llama.cpp sources the installed llama-cpp-python vendors, into /opt/venv/bin,
# with the same flags.
COPY scripts/build-llama-server.sh ./scripts/
RUN VENV=/opt/venv HOME=/tmp bash scripts/build-llama-server.sh

# ---- runtime -----------------------------------------------------------------------------------------
FROM python:3.11.13-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    DISTILLERY_HOME=/var/lib/distillery \
    DISTILLERY_SHARED_DIR=/data/shared
# libgomp: llama.cpp's OpenMP threads (llama-server and llama-cpp-python).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1=12.2.0-14+deb12u1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/distillery --create-home distillery
COPY --from=build /opt/venv /opt/venv
COPY docker/healthcheck.py /opt/healthcheck.py
USER 10001:10001
WORKDIR /var/lib/distillery
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/opt/healthcheck.py", "http", "http://127.0.0.1:8000/healthz"]
ENTRYPOINT ["distillery"]
CMD ["gateway", "--host", "0.0.0.0", "--port", "8000"]
