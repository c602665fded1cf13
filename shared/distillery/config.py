"""One settings object, read from the environment (and an optional `.env`)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# No weights ever come from a hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[2]


def _default_shared_dir() -> Path:
    return REPO_ROOT.parent / "shared"


class Settings(BaseSettings):
    """Every knob of every service. Unset URLs mean: use the embedded PostgreSQL/Redis."""

    model_config = SettingsConfigDict(
        env_file=".env", env_prefix="DISTILLERY_", extra="ignore", validate_by_name=True
    )

    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "DISTILLERY_DATABASE_URL"),
        description="SQLAlchemy URL of PostgreSQL; unset = embedded server under DISTILLERY_HOME.",
    )
    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REDIS_URL", "DISTILLERY_REDIS_URL"),
        description="Redis URL (Celery broker, pub/sub, rate limits); unset = embedded server.",
    )
    home: Path = Field(default=Path.home() / ".distillery", description="Data directory.")
    artifact_dir: Path | None = Field(
        default=None, description="Checkpoints, runs, plots; default HOME/artifacts."
    )
    model_dir: Path | None = Field(default=None, description="HF-format models; default HOME/models.")
    shared_dir: Path = Field(
        default_factory=_default_shared_dir,
        description="Folder holding datasets/ and rationales/ (the ../shared beside the repo).",
    )
    api_key_pepper: str = Field(
        default="",
        description="Secret mixed into every API-key hash (set it in production; never logged).",
    )
    api_key_prefix: str = Field(default="dst_", description="Prefix of issued API keys.")
    rate_limit_per_minute: int = Field(default=600, ge=1, description="Per-key request budget.")
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8000
    gateway_url: str = Field(default="http://127.0.0.1:8000", description="Where the CLI finds the gateway.")
    api_key: str | None = Field(default=None, description="Key the CLI sends to the gateway.")
    log_level: str = "INFO"
    # Student serving (gateway).
    student_backend: Literal["transformers", "vllm", "llamacpp"] = Field(
        default="transformers",
        description="In-process transformers (CPU), a vLLM OpenAI server (GPU) "
        "or llama.cpp on the GGUF (CPU).",
    )
    gguf_dir: Path | None = Field(
        default=None, description="GGUF exports of served students; default HOME/gguf."
    )
    llamacpp_outtype: Literal["f16", "q8_0", "q4_k_m", "f32"] = Field(
        default="f16", description="Weight type of the GGUF the llamacpp backend serves."
    )
    llamacpp_slots: int = Field(default=4, ge=1, description="Sequences llama.cpp decodes together.")
    llamacpp_ctx: int = Field(default=2048, ge=64, description="Context tokens of each llama.cpp slot.")
    llamacpp_runtime: Literal["server", "inprocess"] = Field(
        default="server",
        description="llama.cpp's own llama-server as a supervised child process (the faster: "
        "bench/serving.py), or llama.cpp in the gateway process through llama-cpp-python (also gives "
        "prompt logprobs: echo scoring and /v1/predict's option-scoring fallback).",
    )
    llamacpp_server_bin: str | None = Field(
        default=None,
        description="llama-server binary for llamacpp_runtime=server; unset = the venv's, then PATH.",
    )
    vllm_url: str | None = Field(default=None, description="vLLM server URL (…/v1), student_backend=vllm.")
    vllm_model: str | None = Field(
        default=None, description="Model name on the vLLM server; unset = the promoted model's."
    )
    vllm_api_key: str | None = Field(default=None, description="The vLLM server's --api-key, if it has one.")
    vllm_lora_root: str | None = Field(
        default=None,
        description="Where the vLLM server sees this gateway's DISTILLERY_HOME (a shared volume), for the "
        "LoRA adapters it loads at runtime; unset = the same paths.",
    )
    vllm_url_template: str | None = Field(
        default=None,
        description="A vLLM server per registry version (blue/green full-weight students): a URL with "
        "`{version}` and optionally `{name}` (DNS-safe), e.g. `http://vllm-student-v{version}:8000/v1`; "
        "unset = vllm_url for every model.",
    )
    vllm_ready_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="How long a promote waits for the version's vLLM server (vllm_url_template) to list "
        "the model; then the current model keeps serving.",
    )
    default_model: str = Field(
        default="smollm2-135m", description='Served while none is promoted: modelhub name, HF dir or "none".'
    )
    served_model_name: str | None = Field(
        default=None, description="Serve this registry name's production version; unset = newest."
    )
    student_threads: int | None = Field(
        default=None, ge=1, description="Torch threads of the in-process student; unset = half the cores."
    )
    batch_max_size: int = Field(default=16, ge=1, description="Most sequences in one batched generate.")
    batch_wait_ms: float = Field(default=5.0, ge=0, description="How long a batch waits for companions.")
    batch_queue_size: int = Field(default=256, ge=1, description="Queued requests before 503 + Retry-After.")
    queue_timeout_s: float = Field(
        default=60.0, gt=0, description="Longest a request waits for the student before 503 + Retry-After."
    )
    max_request_bytes: int = Field(default=1_048_576, ge=1024, description="Larger request bodies get 413.")
    max_tokens_default: int = Field(default=512, ge=1, description="Completion cap when max_tokens is unset.")
    predict_max_items: int = Field(default=64, ge=1, description="Most items in one /v1/predict/batch.")
    registry_poll_s: float = Field(default=10.0, gt=0, description="Registry polling (pub/sub fallback).")
    metrics_public: bool = Field(default=False, description="Serve /metrics without a key (else: admin).")
    auth_cache_s: float = Field(
        default=2.0, ge=0, description="How long a gateway trusts a checked key (a revocation's delay)."
    )
    rate_limit_burst: int | None = Field(default=None, ge=1, description="Bucket size; unset = the rate.")
    token_rate_limit_per_minute: int = Field(
        default=500_000, ge=1, description="Per-key budget of prompt + max completion tokens per minute."
    )
    max_sequences_per_key: int = Field(
        default=64,
        ge=1,
        description="Sequences (prompts x n) one key may have queued or running per replica.",
    )
    # Least privilege and bounded serving (the gateway; see docs/OPERATIONS.md).
    teacher_hosts: str = Field(
        default="localhost,127.0.0.1,::1,teacher-cpu,vllm-teacher-1,vllm-teacher-2",
        description="Hosts a teacher's base_url may name, comma-separated (`.example.org` = that domain).",
    )
    precomputed_roots: str = Field(
        default="",
        description="Folders a precomputed teacher may read, comma-separated; "
        "unset = SHARED_DIR, HOME and the bundled samples.",
    )
    max_logprob_tokens: int = Field(
        default=256,
        ge=1,
        description="Most generated tokens with logprobs per request (prompts x n x max_tokens).",
    )
    max_streams_per_key: int = Field(default=8, ge=1, description="Open event streams (SSE) per API key.")
    auth_failures_per_minute: int = Field(default=30, ge=1, description="Failed authentications per client.")
    redis_timeout_s: float = Field(default=0.5, gt=0, description="Connect/socket timeout of gateway Redis.")
    secure_cookies: bool | None = Field(
        default=None, description="Secure cookie flag; unset = when the request or X-Forwarded-Proto is https"
    )

    @property
    def artifacts(self) -> Path:
        return self.artifact_dir or self.home / "artifacts"

    @property
    def models(self) -> Path:
        return self.model_dir or self.home / "models"

    @property
    def gguf_exports(self) -> Path:
        return self.gguf_dir or self.home / "gguf"

    @property
    def datasets_dir(self) -> Path:
        return self.shared_dir / "datasets"

    @property
    def rationales_dir(self) -> Path:
        return self.shared_dir / "rationales"


@lru_cache
def get_settings() -> Settings:
    return Settings()
