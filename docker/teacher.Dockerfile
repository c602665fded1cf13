# Teacher (CPU): llama.cpp's OpenAI-compatible server for the small GGUF teachers that PyPI packages ship
# (SmolLM2-135M-Instruct, Gemma 3 270M).
#   docker build -f docker/teacher.Dockerfile -t distillery-teacher .

# ---- build: llama-cpp-python compiles llama.cpp, so this stage has a compiler ---------------------
FROM python:3.11.13-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
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
RUN CMAKE_ARGS="$(bash scripts/llama-cmake-args.sh)" pip install "./[teacher]"

# ---- runtime: no compiler, only llama.cpp's OpenMP runtime -----------------------------------------
FROM python:3.11.13-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    DISTILLERY_HOME=/var/lib/distillery
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1=12.2.0-14+deb12u1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/distillery --create-home distillery
COPY --from=build /opt/venv /opt/venv
COPY docker/healthcheck.py /opt/healthcheck.py
USER 10001:10001
WORKDIR /var/lib/distillery
EXPOSE 8100
# Loading both models takes a while on small CPUs: a long start period.
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "/opt/healthcheck.py", "http", "http://127.0.0.1:8100/v1/models"]
ENTRYPOINT ["distillery"]
CMD ["teachers", "serve", "--models", "smollm2-135m,gemma3-270m", "--host", "0.0.0.0", "--port", "8100"]
