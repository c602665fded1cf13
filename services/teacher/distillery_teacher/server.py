"""The local CPU teacher: one llama.cpp OpenAI-compatible server for one or several GGUF models.

Every model is served under its short name (`smollm2-135m`, `gemma3-270m`) from one process on one
port: /v1/chat/completions uses the chat template stored in the GGUF, /v1/completions serves base models.
llama.cpp's stock proxy keeps one model in memory and reloads on every switch; teachers here alternate
request by request, so all configured models stay loaded (two small models fit easily).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import llama_cpp
import llama_cpp.server.app as llama_app
from fastapi import FastAPI, HTTPException
from llama_cpp.server.model import LlamaProxy
from llama_cpp.server.settings import ConfigFileSettings, ModelSettings, ServerSettings

from distillery.config import Settings, get_settings
from distillery.modelhub import KNOWN_MODELS, canonical_name, gguf_file

log = logging.getLogger(__name__)

DEFAULT_MODELS = ("smollm2-135m", "gemma3-270m")
GGUF_MODELS = tuple(name for name, known in KNOWN_MODELS.items() if known.kind == "gguf")
DEFAULT_CONTEXT = 4096


class ResidentLlamaProxy(LlamaProxy):  # llama_cpp ships no type information
    """A LlamaProxy that loads every model once and keeps them all, instead of swapping one in and out."""

    def __init__(self, models: list[ModelSettings], loaded: dict[str, llama_cpp.Llama] | None = None) -> None:
        assert models, "no models configured"
        self._model_settings_dict = {}
        for model in models:
            model.model_alias = model.model_alias or model.model
            self._model_settings_dict[model.model_alias] = model
        self._default_model_settings = models[0]
        self._default_model_alias = models[0].model_alias
        self._loaded: dict[str, llama_cpp.Llama] = dict(loaded or {})
        for alias, model_settings in self._model_settings_dict.items():
            if alias not in self._loaded:
                self._loaded[alias] = self.load_llama_from_model_settings(model_settings)
        self._current_model = self._loaded[self._default_model_alias]
        self._current_model_alias = self._default_model_alias

    def __call__(self, model: str | None = None) -> llama_cpp.Llama:
        # The stock proxy answers an unknown name with the default model; a misconfigured teacher would
        # then get rationales from the wrong model without noticing.
        if model is not None and model not in self._loaded:
            raise HTTPException(
                404, f"model {model!r} is not served here (served: {', '.join(self._loaded)})"
            )
        alias = model or self._default_model_alias
        self._current_model, self._current_model_alias = self._loaded[alias], alias
        return self._current_model

    def free(self) -> None:
        for llama in self._loaded.values():
            llama.close()
        self._loaded.clear()


def default_threads() -> int:
    """Half the cores, at least one."""
    # llama.cpp's threads spin at barriers: with every core busy, a preempted thread stalls the others
    # (on a loaded 2-core machine, 2 threads generated 5-15x slower than 1).
    return max(1, (os.cpu_count() or 2) // 2)


def parse_models(models: str | Sequence[str]) -> list[str]:
    """Canonical names of a comma-separated list; ValueError naming the accepted names otherwise."""
    names = [m.strip() for m in models.split(",")] if isinstance(models, str) else [m.strip() for m in models]
    names = [m for m in names if m]
    if not names:
        raise ValueError(f"--models is empty (accepted: {', '.join(GGUF_MODELS)})")
    canonical = []
    for name in names:
        known = canonical_name(name)
        if known not in GGUF_MODELS:
            raise ValueError(f"--models: unknown model {name!r} (accepted: {', '.join(GGUF_MODELS)})")
        if known not in canonical:
            canonical.append(known)
    return canonical


def build_config(
    models: str | Sequence[str] = DEFAULT_MODELS,
    host: str = "127.0.0.1",
    port: int = 8100,
    n_ctx: int = DEFAULT_CONTEXT,
    threads: int | None = None,
    api_key: str | None = None,
    settings: Settings | None = None,
) -> ConfigFileSettings:
    """The llama.cpp server configuration (its config-file format) serving `models` under their names."""
    settings = settings or get_settings()
    threads = threads or default_threads()
    entries = [
        ModelSettings(
            model=str(gguf_file(name, settings)),
            model_alias=name,
            n_ctx=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            # chat_format left unset: llama.cpp then applies the chat template stored in the GGUF.
            verbose=False,
        )
        for name in parse_models(models)
    ]
    return ConfigFileSettings(host=host, port=port, api_key=api_key, interrupt_requests=False, models=entries)


def build_app(config: ConfigFileSettings) -> FastAPI:
    """The llama.cpp FastAPI app for `config`, with every model kept loaded."""
    server_settings = ServerSettings.model_validate(config.model_dump(exclude={"models"}))
    # create_app reads CONFIG_FILE from the environment first; ours must win.
    os.environ.pop("CONFIG_FILE", None)
    app = llama_app.create_app(server_settings=server_settings, model_settings=list(config.models))
    stock = llama_app._llama_proxy
    loaded = {}
    if stock is not None and stock._current_model is not None and stock._current_model_alias:
        loaded[stock._current_model_alias] = stock._current_model  # reuse the model create_app loaded
    llama_app._llama_proxy = ResidentLlamaProxy(list(config.models), loaded)
    return app


def serve(config: ConfigFileSettings) -> None:
    """Run the server in the foreground until interrupted."""
    import uvicorn

    # llama.cpp is native code: a crash in it (SIGSEGV, SIGABRT) leaves every thread's Python stack in the
    # log, so the request being served shows; `up` restarts the server.
    faulthandler.enable(all_threads=True)
    app = build_app(config)
    names = ", ".join(m.model_alias or m.model for m in config.models)
    log.info("teacher server on http://%s:%d/v1 serving %s", config.host, config.port, names)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m distillery_teacher`: the same server as `distillery teachers serve`."""
    parser = argparse.ArgumentParser(prog="distillery_teacher", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", default=",".join(DEFAULT_MODELS), help=f"comma-separated: {', '.join(GGUF_MODELS)}"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument(
        "--n-ctx", type=int, default=DEFAULT_CONTEXT, help="context window per model (tokens)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads per model (default: half the cores)"
    )
    parser.add_argument("--write-config", type=Path, default=None, help="write the config file and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("DISTILLERY_LOG_LEVEL", "INFO").upper())
    try:
        config = build_config(args.models, args.host, args.port, args.n_ctx, args.threads)
    except ValueError as exc:
        parser.error(str(exc))
    if args.write_config:
        args.write_config.write_text(json.dumps(config.model_dump(mode="json"), indent=2) + "\n")
        return
    serve(config)
