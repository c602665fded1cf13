"""The vLLM backend: the same API when the student runs behind an OpenAI-compatible vLLM server.

No vLLM runs here (it needs a GPU). The upstream is a second real gateway with the in-process backend,
which speaks the same OpenAI completions protocol the proxy uses (token-id prompts, `echo`, `logprobs`,
streaming), so the proxy's answers can be compared with the engine's own. For LoRA students loaded at
runtime the upstream is a small HTTP server that behaves as vLLM's runtime-LoRA API.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gateway_support import LiveGateway, completion, copy_model, gateway_settings, make_key, wait_until
from jobs_support import ServerThread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from distillery.config import Settings
from distillery.distill.export import STUDENT_INFO

MODEL = "tiny-causal"
HI = [{"role": "user", "content": "Hi"}]


def both(direct: httpx.Client, proxy: httpx.Client, path: str, body: dict) -> tuple[dict, dict]:
    a, b = direct.post(path, json=body), proxy.post(path, json=body)
    assert a.status_code == 200 and b.status_code == 200, (a.text, b.text)
    return a.json(), b.json()


@pytest.fixture
def pair(settings: Settings) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    upstream_key = make_key(settings.database_url, ("infer",), "vllm-upstream")
    with LiveGateway(gateway_settings(settings)) as upstream:
        proxied = gateway_settings(
            settings, student_backend="vllm", vllm_url=f"{upstream.url}/v1", vllm_api_key=upstream_key
        )
        with LiveGateway(proxied) as proxy:
            headers = {"Authorization": f"Bearer {make_key(settings.database_url, ('infer',))}"}
            with (
                httpx.Client(base_url=upstream.url, headers=headers, timeout=120) as direct,
                httpx.Client(base_url=proxy.url, headers=headers, timeout=120) as via_proxy,
            ):
                assert proxy.app.state.manager.backend_kind == "vllm"
                yield direct, via_proxy


def test_proxy_answers_like_the_engine(pair: tuple[httpx.Client, httpx.Client]) -> None:
    direct, proxy = pair
    completion = {"model": MODEL, "prompt": ["Hello", "World"], "max_tokens": 6, "temperature": 0, "n": 2}
    a, b = (
        direct.post("/v1/completions", json=completion).json(),
        proxy.post("/v1/completions", json=completion),
    )
    assert b.status_code == 200, b.text
    assert [c["text"] for c in b.json()["choices"]] == [c["text"] for c in a["choices"]]
    assert b.json()["usage"] == a["usage"]

    chat = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 6,
        "temperature": 0,
    }
    a, b = (
        direct.post("/v1/chat/completions", json=chat).json(),
        proxy.post("/v1/chat/completions", json=chat).json(),
    )
    assert b["choices"][0]["message"]["content"] == a["choices"][0]["message"]["content"]

    question = {"question": "Which is a colour?", "options": ["red", "dog", "seven"]}
    a, b = both(direct, proxy, "/v1/predict", question)
    assert (b["answer_index"], b["method"]) == (a["answer_index"], a["method"])


def test_proxy_streams_and_checks_the_context_itself(pair: tuple[httpx.Client, httpx.Client]) -> None:
    direct, proxy = pair
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 6,
        "temperature": 0,
    }
    whole = direct.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    with proxy.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        events = [line[5:].strip() for line in response.iter_lines() if line.startswith("data:")]
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert text == whole

    too_long = proxy.post("/v1/completions", json={"model": MODEL, "prompt": [1] * 2040, "max_tokens": 20})
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "context_length_exceeded"


# --- LoRA students hot-swapped into a running vLLM ------------------------------------------------------

BASE = "HuggingFaceTB/SmolLM2-135M"
NAME = "arc-student"


class FakeVLLM:
    """vLLM's runtime-LoRA API (`--enable-lora`, VLLM_ALLOW_RUNTIME_LORA_UPDATING=True) over real HTTP:
    /v1/models lists the base model and each loaded adapter (with its `parent`), adapters load and
    unload at runtime, and a completion names the model it was asked for (so a test sees the routing)."""

    def __init__(self) -> None:
        self.adapters: dict[str, str] = {}  # lora_name -> lora_path
        self.loading_elsewhere: set[str] = set()  # loaded by someone else since our GET /v1/models
        self.calls: list[tuple[str, dict]] = []
        self.completions: list[str] = []
        self.app = Starlette(
            routes=[
                Route("/v1/models", self.models),
                Route("/v1/load_lora_adapter", self.load, methods=["POST"]),
                Route("/v1/unload_lora_adapter", self.unload, methods=["POST"]),
                Route("/v1/completions", self.complete, methods=["POST"]),
            ]
        )

    @staticmethod
    def error(message: str, status: int = 400) -> JSONResponse:
        body = {"error": {"message": message, "type": "BadRequestError", "code": status}}
        return JSONResponse(body, status_code=status)

    async def models(self, request: Request) -> JSONResponse:
        data = [{"id": BASE, "object": "model", "root": BASE, "parent": None}]
        data += [{"id": n, "object": "model", "root": p, "parent": BASE} for n, p in self.adapters.items()]
        return JSONResponse({"object": "list", "data": data})

    async def load(self, request: Request) -> Response:
        body = await request.json()
        self.calls.append(("load", body))
        if body["lora_name"] in self.loading_elsewhere:
            self.adapters[body["lora_name"]] = body["lora_path"]
        if body["lora_name"] in self.adapters:
            return self.error(f"The lora adapter '{body['lora_name']}' has already been loaded.")
        self.adapters[body["lora_name"]] = body["lora_path"]
        return PlainTextResponse(f"Success: LoRA adapter '{body['lora_name']}' added successfully.")

    async def unload(self, request: Request) -> Response:
        body = await request.json()
        self.calls.append(("unload", body))
        if self.adapters.pop(body["lora_name"], None) is None:
            return self.error(f"The lora adapter '{body['lora_name']}' cannot be found.")
        return PlainTextResponse(f"Success: LoRA adapter '{body['lora_name']}' removed successfully.")

    async def complete(self, request: Request) -> JSONResponse:
        body = await request.json()
        model = body["model"]
        if model != BASE and model not in self.adapters:
            return self.error(f"The model `{model}` does not exist.", 404)
        self.completions.append(model)
        choices = [
            {"index": i, "text": f" from {model}", "finish_reason": "stop", "logprobs": None}
            for i in range(body.get("n", 1))
        ]
        usage = {"prompt_tokens": len(body["prompt"]), "completion_tokens": 3 * len(choices)}
        return JSONResponse(
            {"id": "cmpl-1", "object": "text_completion", "model": model, "choices": choices, "usage": usage}
        )


def lora_student(home: Path, run: str) -> Path:
    """A trained LoRA student as the trainer exports it (under the gateway's home): merged weights plus
    `lora_adapter/`, named in distillery_student.json."""
    model = copy_model(home / "artifacts" / "runs" / run / "model")
    (model / "lora_adapter").mkdir()
    adapter_config = {"base_model_name_or_path": BASE, "peft_type": "LORA", "r": 4}
    (model / "lora_adapter" / "adapter_config.json").write_text(json.dumps(adapter_config))
    info = {"base_model": BASE, "lora_adapter": {"path": "lora_adapter", "base_model": BASE}}
    (model / STUDENT_INFO).write_text(json.dumps(info))
    return model


def test_lora_students_are_loaded_into_vllm_routed_to_and_unloaded(settings: Settings) -> None:
    fake = FakeVLLM()
    home = settings.home
    v1_dir, v2_dir = lora_student(home, "r1"), lora_student(home, "r2")
    plain_dir = copy_model(home / "artifacts" / "runs" / "r3" / "model")  # merged only: no adapter
    admin = {"Authorization": f"Bearer {make_key(settings.database_url, ('admin',), 'admin')}"}
    infer = {"Authorization": f"Bearer {make_key(settings.database_url, ('infer',))}"}
    with ServerThread(fake.app) as upstream:
        s = gateway_settings(
            settings,
            student_backend="vllm",
            vllm_url=f"{upstream.url}/v1",
            vllm_lora_root="/models",
            default_model="none",
            registry_poll_s=30.0,
        )
        with (
            LiveGateway(s) as gw,
            httpx.Client(base_url=gw.url, headers=admin, timeout=120) as api,
            httpx.Client(base_url=gw.url, headers=infer, timeout=120) as http,
        ):

            def register(path: Path) -> dict:
                response = api.post("/v1/registry/models", json={"name": NAME, "path": str(path)})
                assert response.status_code == 201, response.text
                return response.json()

            def promote(model: dict) -> bool:
                response = api.post(
                    f"/v1/registry/models/{model['id']}/promote", params={"wait": "true"}, timeout=120
                )
                assert response.status_code == 200, response.text
                return bool(response.json()["serving"])

            def answer() -> str:
                return completion(http, NAME, prompt="Hi", max_tokens=3)["choices"][0]["text"]

            v1, v2, plain = register(v1_dir), register(v2_dir), register(plain_dir)
            assert promote(v1)
            # Loaded under its version id, from the path the vLLM pod sees (home mounted at /models).
            assert fake.calls == [
                (
                    "load",
                    {
                        "lora_name": "arc-student:v1",
                        "lora_path": "/models/artifacts/runs/r1/model/lora_adapter",
                    },
                )
            ]
            assert answer() == " from arc-student:v1"
            assert fake.completions[-1] == "arc-student:v1"

            # The next version: loaded, routed to, and the old adapter unloaded once it has no request.
            assert promote(v2)
            assert fake.calls[1] == (
                "load",
                {"lora_name": "arc-student:v2", "lora_path": "/models/artifacts/runs/r2/model/lora_adapter"},
            )
            assert answer() == " from arc-student:v2"
            wait_until(lambda: ("unload", {"lora_name": "arc-student:v1"}) in fake.calls, 30, "v1 unloaded")
            assert set(fake.adapters) == {"arc-student:v2"}

            # A full-weight student the server does not serve: refused, v2 keeps serving.
            assert not promote(plain)
            error = gw.app.state.manager.last_error or ""
            assert "serve the model on the vLLM server" in error and "LoRA" in error, error
            assert answer() == " from arc-student:v2"
            assert set(fake.adapters) == {"arc-student:v2"}

            # Rollback = promote v1 again: its adapter is loaded again, v2's unloaded.
            assert promote(v1)
            assert answer() == " from arc-student:v1"
            wait_until(lambda: set(fake.adapters) == {"arc-student:v1"}, 30, "v2 unloaded")
            assert [c for c, _ in fake.calls] == ["load", "load", "unload", "load", "unload"]


def test_an_adapter_loaded_already_is_shared_and_unloaded_once_by_its_last_backend(tmp_path: Path) -> None:
    import asyncio

    from distillery_gateway.engine.types import UpstreamError
    from distillery_gateway.engine.vllm_backend import VLLMBackend

    fake = FakeVLLM()
    student = lora_student(tmp_path, "r1")
    fake.loading_elsewhere.add("m:v1")  # another replica loads it between our listing and our load: a 400

    with ServerThread(fake.app) as upstream:

        def backend(path: Path = student, root: str | None = None) -> VLLMBackend:
            return VLLMBackend(
                f"{upstream.url}/v1", path, candidates=(str(path), "m:v1", "m"), lora_root=root, home=tmp_path
            )

        first = backend()
        first.connect()
        assert first.upstream_model == "m:v1" and first.holds_adapter
        assert fake.calls == [("load", {"lora_name": "m:v1", "lora_path": str(student / "lora_adapter")})]
        second = backend()  # a re-promotion of the serving version: listed already, no second load
        second.connect()
        assert second.upstream_model == "m:v1" and len(fake.calls) == 1

        asyncio.run(first.aclose())
        assert "m:v1" in fake.adapters  # the second backend still routes to it
        fake.adapters.clear()  # the server lost it (restarted): the unload's 400 is only logged
        asyncio.run(second.aclose())
        assert fake.calls[-1] == ("unload", {"lora_name": "m:v1"})

        with pytest.raises(UpstreamError, match="not under DISTILLERY_HOME"):
            backend(lora_student(tmp_path.parent / f"{tmp_path.name}-elsewhere", "r2"), "/models").connect()


# --- full-weight students, blue/green: a vLLM server per registry version -------------------------------


class FakeVLLMFleet:
    """One vLLM server per registry version behind path prefixes: `/v{N}/v1/...` is version N's server,
    which lists only `models[N]` once `ready` holds N (before that it answers 503, as a pod still
    loading behind its Service would fail), and whose completions say which server answered."""

    def __init__(self) -> None:
        self.models: dict[int, str] = {}
        self.ready: set[int] = set()
        self.calls: list[tuple[int, str]] = []
        self.app = Starlette(
            routes=[
                Route("/v{version:int}/v1/models", self.list_models),
                Route("/v{version:int}/v1/completions", self.complete, methods=["POST"]),
            ]
        )

    def polls(self, version: int) -> int:
        return self.calls.count((version, "models"))

    async def list_models(self, request: Request) -> JSONResponse:
        version = request.path_params["version"]
        self.calls.append((version, "models"))
        if version not in self.ready:
            return FakeVLLM.error("the server is still loading", 503)
        return JSONResponse({"object": "list", "data": [{"id": self.models[version], "object": "model"}]})

    async def complete(self, request: Request) -> JSONResponse:
        version, body = request.path_params["version"], await request.json()
        self.calls.append((version, "completions"))
        if version not in self.ready or body["model"] != self.models[version]:
            return FakeVLLM.error(f"The model `{body['model']}` does not exist.", 404)
        choices = [{"index": 0, "text": f" from v{version}", "finish_reason": "stop", "logprobs": None}]
        usage = {"prompt_tokens": len(body["prompt"]), "completion_tokens": 3}
        return JSONResponse({"id": "c", "object": "text_completion", "choices": choices, "usage": usage})


def test_full_weight_students_switch_to_their_own_vllm_server_once_it_lists_them(settings: Settings) -> None:
    import threading

    from test_hotswap import Clients

    from distillery_gateway.engine.vllm_backend import version_url

    assert version_url("http://vllm-{name}-v{version}:8000/v1", "ARC_student.x", 7) == (
        "http://vllm-arc-student-x-v7:8000/v1"
    )
    fleet = FakeVLLMFleet()
    home = settings.home
    dirs = [copy_model(home / "artifacts" / "runs" / f"r{i}" / "model") for i in (1, 2, 3)]
    admin = {"Authorization": f"Bearer {make_key(settings.database_url, ('admin',), 'admin')}"}
    infer_key = make_key(settings.database_url, ("infer",))
    with ServerThread(fleet.app) as upstream:
        s = gateway_settings(
            settings,
            student_backend="vllm",
            vllm_url=None,
            vllm_url_template=f"{upstream.url}/v{{version}}/v1",
            vllm_ready_timeout_s=6.0,
            default_model="none",
            registry_poll_s=30.0,
            # The fake servers answer at once: four looping clients send far more than the default
            # per-key budget of 600 requests a minute, and a 429 here would be the limiter, not the swap.
            rate_limit_per_minute=100_000,
        )
        with (
            LiveGateway(s) as gw,
            httpx.Client(base_url=gw.url, headers=admin, timeout=120) as api,
            httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {infer_key}"}) as http,
        ):

            def register(path: Path) -> dict:
                response = api.post("/v1/registry/models", json={"name": NAME, "path": str(path)})
                assert response.status_code == 201, response.text
                return response.json()

            def promote(model: dict, result: list[bool] | None = None) -> bool:
                response = api.post(
                    f"/v1/registry/models/{model['id']}/promote", params={"wait": "true"}, timeout=120
                )
                assert response.status_code == 200, response.text
                serving = bool(response.json()["serving"])
                if result is not None:
                    result.append(serving)
                return serving

            def answer() -> str:
                return completion(http, NAME, prompt="Hi", max_tokens=3)["choices"][0]["text"]

            v1, v2, v3 = (register(d) for d in dirs)
            assert [v["version"] for v in (v1, v2, v3)] == [1, 2, 3]
            fleet.models = {1: "arc-student:v1", 2: str(dirs[1]), 3: "arc-student:v3"}  # by id, or path
            fleet.ready.add(1)
            assert promote(v1)
            assert answer() == " from v1"

            with Clients(gw.url, infer_key, n=4) as clients:
                clients.wait_served_by("arc-student:v1", 60)
                # v2 is promoted while its server still loads: the gateway waits, v1 keeps serving.
                promoted: list[bool] = []
                waiting = threading.Thread(target=promote, args=(v2, promoted))
                waiting.start()
                wait_until(lambda: fleet.polls(2) >= 2, 30, "the gateway polling v2's server")
                served_while_waiting = fleet.calls.count((1, "completions"))
                wait_until(
                    lambda: fleet.calls.count((1, "completions")) > served_while_waiting + 4, 30, "v1 answers"
                )
                assert answer() == " from v1" and waiting.is_alive()
                fleet.ready.add(2)  # v2's server lists its model (by its path): the gateway switches
                waiting.join(timeout=60)
                assert promoted == [True]
                clients.wait_served_by("arc-student:v2", 60)
            assert answer() == " from v2"
            for results in clients.results:
                assert results and all(status == 200 for status, _ in results), results
                models = [model for _, model in results]
                switched = models.index("arc-student:v2") if "arc-student:v2" in models else len(models)
                assert set(models[:switched]) <= {"arc-student:v1"}, models
                assert set(models[switched:]) == {"arc-student:v2"}, models

            # v3's server never lists it: the promote reports not serving, v2 keeps serving.
            assert not promote(v3)
            error = gw.app.state.manager.last_error or ""
            assert f"{upstream.url}/v3/v1" in error and "arc-student:v3" in error, error
            assert "GET /models answered 503" in error and "within 6s" in error, error
            assert fleet.polls(3) >= 2
            assert answer() == " from v2"
