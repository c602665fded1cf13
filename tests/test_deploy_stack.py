"""docker-compose.yml, the Dockerfiles and k8s/base run the same processes as `distillery up`."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from distillery_launcher.stack import CPU_STUDENT_BACKEND, ServiceDef, stack

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


def test_compose_and_kubernetes_serve_the_student_on_the_backend_up_defaults_to() -> None:
    env = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert env["DISTILLERY_STUDENT_BACKEND"] == CPU_STUDENT_BACKEND
    literals = yaml.safe_load((ROOT / "k8s/base/kustomization.yaml").read_text())["configMapGenerator"][0]
    assert f"DISTILLERY_STUDENT_BACKEND={CPU_STUDENT_BACKEND}" in literals["literals"]
    # The gateway image carries the llama-server that backend's default runtime starts.
    assert "build-llama-server.sh" in (ROOT / "docker/gateway.Dockerfile").read_text()


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
            elif key in ("REDIS_URL", "REDISCLI_AUTH"):  # Redis wants a password, which .env must set
                assert "${REDIS_PASSWORD:?" in value, (name, key)
            elif key == "DISTILLERY_API_KEY_PEPPER":  # no default: the gateway refuses a weak pepper
                assert value.startswith("${DISTILLERY_API_KEY_PEPPER:?"), name
            elif key == "VLLM_API_KEY":  # vLLM's --api-key, the teachers' Bearer token
                assert value == "${DISTILLERY_TEACHER_API_KEY:-}", name
            else:
                assert key not in SECRETS and "PASSWORD" not in key, (name, key)
    assert "--requirepass" in services["redis"]["command"]
    assert any("${REDIS_PASSWORD:?" in part for part in services["redis"]["command"])
    for name in ("worker", "trainer", "gateway", "migrate"):
        assert "DISTILLERY_API_KEY_PEPPER" in services[name]["environment"], name
    env = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert env["POSTGRES_PASSWORD"] == "change-me"
    for key in ("DISTILLERY_HOME", "DISTILLERY_ARTIFACT_DIR", "DISTILLERY_MODEL_DIR", "HF_HUB_OFFLINE"):
        assert key in env, key
    # Secrets have no usable default: .env.example names them, and compose refuses to start without them.
    for key in ("DISTILLERY_API_KEY_PEPPER", "REDIS_PASSWORD", "REDIS_URL"):
        assert key not in env, key
    text = (ROOT / ".env.example").read_text()
    for key in ("DISTILLERY_API_KEY_PEPPER=", "REDIS_PASSWORD=", "DISTILLERY_TEACHER_API_KEY="):
        assert f"# {key}" in text, key
    assert env["HF_HUB_OFFLINE"] == "1"


def test_kubernetes_is_least_privilege_and_redis_wants_a_password() -> None:
    base = ROOT / "k8s/base"
    policies = list(yaml.safe_load_all((base / "network-policies.yaml").read_text()))
    assert any(p["spec"]["podSelector"] == {} and p["spec"]["policyTypes"] == ["Ingress"] for p in policies)
    assert "network-policies.yaml" in (base / "kustomization.yaml").read_text()
    for name in ("gateway", "worker", "trainer", "teacher-cpu", "migrate"):
        for doc in yaml.safe_load_all((base / f"{name}.yaml").read_text()):
            if doc["kind"] not in ("Deployment", "Job"):
                continue
            pod = doc["spec"]["template"]["spec"]
            assert pod["automountServiceAccountToken"] is False, name
            container = pod["containers"][0]
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
            tmp = {m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/tmp"}
            assert any(v["name"] in tmp and "emptyDir" in v for v in pod["volumes"]), name
    # REDIS_URL (with its password) is a secret, not a ConfigMap literal.
    assert "REDIS_URL" not in (base / "kustomization.yaml").read_text().split("configMapGenerator")[1]
    dev_secrets = (ROOT / "k8s/overlays/dev/secrets.env.example").read_text()
    assert "REDIS_URL=redis://:" in dev_secrets and "REDIS_PASSWORD=" in dev_secrets
    redis_set = next(yaml.safe_load_all((ROOT / "k8s/overlays/dev/redis.yaml").read_text()))
    redis_container = redis_set["spec"]["template"]["spec"]["containers"][0]
    assert "--requirepass" in redis_container["args"]
    assert {e["name"] for e in redis_container["env"]} >= {"REDIS_PASSWORD", "REDISCLI_AUTH"}
    for doc in yaml.safe_load_all((ROOT / "k8s/overlays/gpu/vllm-teachers.yaml").read_text()):
        if doc["kind"] == "Deployment":
            env = {e["name"]: e for e in doc["spec"]["template"]["spec"]["containers"][0]["env"]}
            assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "DISTILLERY_TEACHER_API_KEY"
