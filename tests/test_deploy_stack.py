"""docker-compose.yml, the Dockerfiles and k8s/base run the same processes as `distillery up`."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from distillery_launcher.stack import ServiceDef, stack

ROOT = Path(__file__).resolve().parents[1]
INFRA = {"postgres", "redis"}
SECRETS = ("DATABASE_URL", "DISTILLERY_API_KEY_PEPPER", "POSTGRES_PASSWORD")


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def containers() -> dict[str, ServiceDef]:
    """The stack as compose and Kubernetes run it: listening on all interfaces."""
    return {s.name: s for s in stack(host="0.0.0.0")}


def dockerfile_instruction(path: Path, name: str) -> list[str]:
    """The JSON-form argument of the last NAME instruction (the runtime stage's)."""
    lines = [line for line in path.read_text().splitlines() if line.startswith(f"{name} ")]
    return json.loads(lines[-1][len(name) + 1 :])


def test_default_compose_services_are_the_stack_with_the_same_commands() -> None:
    services = compose()["services"]
    default = {name for name, svc in services.items() if not svc.get("profiles")} - INFRA
    assert default == set(containers())
    for name, svc in containers().items():
        assert services[name]["command"] == list(svc.argv), name


def test_compose_dependencies_and_health_match_the_stack() -> None:
    services = compose()["services"]
    for name, svc in containers().items():
        deps = services[name].get("depends_on", {})
        assert set(deps) - INFRA == set(svc.depends_on), name
        for dep in svc.depends_on:
            oneshot = containers()[dep].oneshot
            want = "service_completed_successfully" if oneshot else "service_healthy"
            assert deps[dep]["condition"] == want, (name, dep)
        if svc.ready_url:
            assert svc.ready_url in " ".join(services[name]["healthcheck"]["test"]), name
    assert services["migrate"]["restart"] == "no"


def test_gpu_profile_adds_vllm_teachers_and_a_cuda_trainer_with_gpu_reservations() -> None:
    services = compose()["services"]
    gpu = {name for name, svc in services.items() if "gpu" in svc.get("profiles", [])}
    assert gpu == {"vllm-teacher-1", "vllm-teacher-2", "trainer-gpu"}
    assert services["trainer-gpu"]["command"] == services["trainer"]["command"]
    assert services["trainer-gpu"]["build"]["dockerfile"] == "docker/trainer-cuda.Dockerfile"
    for name in gpu:
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"], name
    for n in (1, 2):
        svc = services[f"vllm-teacher-{n}"]
        assert svc["image"].startswith("vllm/vllm-openai:v")
        assert svc["command"][svc["command"].index("--served-model-name") + 1] == f"teacher-{n}"
        assert "/health" in " ".join(svc["healthcheck"]["test"])


def test_images_run_distillery_with_the_stack_command_by_default() -> None:
    services = compose()["services"]
    for name, svc in containers().items():
        dockerfile = ROOT / services[name]["build"]["dockerfile"]
        assert dockerfile_instruction(dockerfile, "ENTRYPOINT") == ["distillery"], dockerfile
        if name != "migrate":  # migrate reuses the gateway image with another command
            assert dockerfile_instruction(dockerfile, "CMD") == list(svc.argv), dockerfile
    cuda = ROOT / "docker/trainer-cuda.Dockerfile"
    assert dockerfile_instruction(cuda, "CMD") == list(containers()["trainer"].argv)


def test_kubernetes_base_runs_the_stack_commands() -> None:
    commands = {}
    for path in (ROOT / "k8s/base").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") in ("Deployment", "Job"):
                pod = doc["spec"]["template"]["spec"]
                commands[doc["metadata"]["name"]] = pod["containers"][0]["args"]
    assert commands == {name: list(svc.argv) for name, svc in containers().items()}


def test_compose_file_holds_no_secret_and_env_example_sets_every_setting() -> None:
    services = compose()["services"]
    for name, svc in services.items():
        for key, value in (svc.get("environment") or {}).items():
            if key == "DATABASE_URL":  # credentials only by interpolation from .env
                assert "${POSTGRES_PASSWORD:-change-me}" in value, name
            else:
                assert key not in SECRETS and "PASSWORD" not in key, (name, key)
    env = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert env["POSTGRES_PASSWORD"] == "change-me"
    for key in (
        "REDIS_URL",
        "DISTILLERY_HOME",
        "DISTILLERY_ARTIFACT_DIR",
        "DISTILLERY_MODEL_DIR",
        "DISTILLERY_API_KEY_PEPPER",
        "HF_HUB_OFFLINE",
    ):
        assert key in env, key
    assert env["DISTILLERY_API_KEY_PEPPER"] == "change-me"
    assert env["HF_HUB_OFFLINE"] == "1"
