"""Builds the configured backend (transformers, vLLM or llama.cpp) for a model the manager wants to serve."""

from __future__ import annotations

from distillery.config import Settings
from distillery_gateway.engine.backend import Backend
from distillery_gateway.engine.manager import BackendFactory, ServedModel
from distillery_gateway.metrics import GatewayMetrics


def backend_factory(settings: Settings, metrics: GatewayMetrics | None = None) -> BackendFactory:
    if settings.student_backend == "vllm" and not (settings.vllm_url or settings.vllm_url_template):
        raise ValueError(
            "DISTILLERY_STUDENT_BACKEND=vllm needs DISTILLERY_VLLM_URL (the vLLM server's /v1 URL) or "
            "DISTILLERY_VLLM_URL_TEMPLATE (a vLLM server per registry version)"
        )
    if settings.student_backend == "vllm" and settings.vllm_url_template:
        from distillery_gateway.engine.vllm_backend import version_url

        version_url(settings.vllm_url_template, "student", 1)  # a malformed template fails at start

    def build(model: ServedModel) -> Backend:
        if settings.student_backend == "vllm":
            from distillery_gateway.engine.vllm_backend import VLLMBackend, version_url

            # Blue/green: a registry version has its own server, waited for until it lists the model.
            template = settings.vllm_url_template
            per_version = bool(template) and model.version is not None
            if template and model.version is not None:
                url = version_url(template, model.name, model.version)
            elif settings.vllm_url:
                url = settings.vllm_url
            else:
                raise ValueError(
                    f"{model.id} is no registry version, so DISTILLERY_VLLM_URL_TEMPLATE does not apply to "
                    "it: set DISTILLERY_VLLM_URL (a vLLM server for it), or DISTILLERY_DEFAULT_MODEL=none"
                )
            backend = VLLMBackend(
                url,
                model.path,
                settings.vllm_model,
                candidates=(model.path, model.id, model.name),
                max_in_flight=settings.batch_queue_size,
                api_key=settings.vllm_api_key,
                lora_name=model.id,
                lora_root=settings.vllm_lora_root,
                home=settings.home,
                ready_timeout_s=settings.vllm_ready_timeout_s if per_version else None,
            )
            backend.connect()
            return backend
        if settings.student_backend == "llamacpp":
            from distillery_gateway.engine.llamacpp_backend import LlamaCppBackend, LlamaCppOptions

            options = LlamaCppOptions(
                gguf_dir=settings.gguf_exports,
                outtype=settings.llamacpp_outtype,
                slots=settings.llamacpp_slots,
                ctx_per_slot=settings.llamacpp_ctx,
                threads=settings.student_threads,
                queue_size=settings.batch_queue_size,
                queue_timeout_s=settings.queue_timeout_s,
            )
            if settings.llamacpp_runtime == "server":
                from distillery_gateway.engine.llamaserver_backend import LlamaServerBackend

                return LlamaServerBackend(model.path, options, settings.llamacpp_server_bin)
            return LlamaCppBackend(model.path, options)
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
