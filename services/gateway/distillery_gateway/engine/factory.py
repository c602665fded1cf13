"""Builds the configured backend (transformers, vLLM or llama.cpp) for a model the manager wants to serve."""

from __future__ import annotations

from distillery.config import Settings
from distillery_gateway.engine.backend import Backend
from distillery_gateway.engine.manager import BackendFactory, ServedModel
from distillery_gateway.metrics import GatewayMetrics


def backend_factory(settings: Settings, metrics: GatewayMetrics | None = None) -> BackendFactory:
    if settings.student_backend == "vllm" and not settings.vllm_url:
        raise ValueError(
            "DISTILLERY_STUDENT_BACKEND=vllm needs DISTILLERY_VLLM_URL (the vLLM server's /v1 URL)"
        )

    def build(model: ServedModel) -> Backend:
        if settings.student_backend == "vllm":
            from distillery_gateway.engine.vllm_backend import VLLMBackend

            assert settings.vllm_url is not None
            backend = VLLMBackend(
                settings.vllm_url,
                model.path,
                settings.vllm_model,
                candidates=(model.path, model.id, model.name),
                max_in_flight=settings.batch_queue_size,
                api_key=settings.vllm_api_key,
            )
            backend.connect()
            return backend
        if settings.student_backend == "llamacpp":
            from distillery_gateway.engine.llamacpp_backend import LlamaCppBackend

            return LlamaCppBackend(
                model.path,
                gguf_dir=settings.gguf_exports,
                outtype=settings.llamacpp_outtype,
                slots=settings.llamacpp_slots,
                ctx_per_slot=settings.llamacpp_ctx,
                threads=settings.student_threads,
                queue_size=settings.batch_queue_size,
                queue_timeout_s=settings.queue_timeout_s,
            )
        from distillery_gateway.engine.transformers_backend import TransformersBackend

        return TransformersBackend(
            model.path,
            batch_max_size=settings.batch_max_size,
            batch_wait_ms=settings.batch_wait_ms,
            queue_size=settings.batch_queue_size,
            on_batch=metrics.batch_size.observe if metrics else None,
            threads=settings.student_threads,
            queue_timeout_s=settings.queue_timeout_s,
        )

    return build
