"""scripts/validate-deploy.sh passes the real deployment files and fails each deliberately broken one."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "validate-deploy.sh"
DEPLOY_FILES = ("docker-compose.yml", ".env.example", ".yamllint", "docker", "k8s")


@pytest.fixture
def deploy_copy(tmp_path: Path) -> Path:
    for name in DEPLOY_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, tmp_path / name)
        else:
            shutil.copy2(src, tmp_path / name)
    return tmp_path


def validate(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), str(root)], capture_output=True, text=True, timeout=600)


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_the_real_deployment_files_are_valid(deploy_copy: Path) -> None:
    result = validate(deploy_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout + result.stderr
    for check in (
        "yamllint",
        "docker compose config --profile gpu",
        "hadolint docker/teacher.Dockerfile",
        "kubernetes-validate k8s/overlays/gpu",
        "kubernetes-validate k8s/extras/training/pytorchjob",
    ):
        assert check in result.stdout, check


def test_each_broken_file_fails_its_own_check(deploy_copy: Path) -> None:
    # One break per check, each in a file only that check reads, so every FAIL line below has one cause.
    # A key the Compose spec does not have:
    edit(
        deploy_copy / "docker-compose.yml",
        '    command: ["trainer"]\n    scale:',
        '    command: ["trainer"]\n    replicas_count: 2\n    scale:',
    )
    # An untagged base image and an unpinned apt install (hadolint DL3006, DL3008, DL3009, DL3015):
    edit(
        deploy_copy / "docker/worker.Dockerfile",
        "FROM python:3.11.13-slim-bookworm AS build",
        "FROM python AS build\nRUN apt-get update && apt-get install -y curl",
    )
    # A field a Kubernetes container does not have (strict schema):
    edit(deploy_copy / "k8s/extras/training/job/job.yaml", "          env:\n", "          environment:\n")
    # A container inside the PyTorchJob (a custom resource) with a misspelt field:
    edit(deploy_copy / "k8s/extras/training/pytorchjob/pytorchjob.yaml", "volumeMounts:", "volumeMount:")
    # A misspelt kind, which no schema knows:
    edit(deploy_copy / "k8s/overlays/gpu/vllm-teachers.yaml", "kind: Deployment", "kind: Deploymnet")
    # A container without resource requests (policy):
    edit(
        deploy_copy / "k8s/overlays/dev/redis.yaml",
        "            requests:\n              cpu: 100m\n              memory: 256Mi\n",
        "",
    )
    # Trailing spaces: valid YAML, so only yamllint sees it:
    edit(deploy_copy / "k8s/overlays/cpu/kustomization.yaml", "resources:\n", "resources:   \n")

    result = validate(deploy_copy)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "FAIL  docker compose config\n" in out and "replicas_count" in out
    assert "FAIL  hadolint docker/worker.Dockerfile" in out and "DL3006" in out and "DL3008" in out
    assert (
        "FAIL  kubernetes-validate k8s/extras/training/job" in out and "'environment' was unexpected" in out
    )
    assert "FAIL  kubernetes-validate k8s/extras/training/pytorchjob" in out and "volumeMount" in out
    assert "FAIL  kubernetes-validate k8s/overlays/gpu" in out and "Deploymnet" in out
    assert "FAIL  kubernetes-validate k8s/overlays/dev" in out and "resources.requests must set cpu" in out
    assert "FAIL  yamllint" in out and "trailing-spaces" in out
    # ...and the files left alone still pass:
    assert "ok    hadolint docker/gateway.Dockerfile" in out
    assert "ok    kustomize + kubernetes-validate k8s/overlays/cpu" in out


def test_a_broken_kustomization_fails(deploy_copy: Path) -> None:
    edit(
        deploy_copy / "k8s/base/kustomization.yaml",
        "  - gateway.yaml\n",
        "  - gateway.yaml\n  - missing.yaml\n",
    )
    result = validate(deploy_copy)
    assert result.returncode == 1
    assert "FAIL  kubectl kustomize k8s/overlays/cpu" in result.stderr


def test_a_pod_without_least_privilege_or_a_network_policy_fails(deploy_copy: Path) -> None:
    edit(deploy_copy / "k8s/base/kustomization.yaml", "  - network-policies.yaml\n", "")
    gateway = deploy_copy / "k8s/base/gateway.yaml"
    edit(gateway, "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false")
    edit(deploy_copy / "k8s/extras/training/job/job.yaml", "      automountServiceAccountToken: false\n", "")
    result = validate(deploy_copy)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "FAIL  kubernetes-validate k8s/overlays/cpu" in out and "no default-deny NetworkPolicy" in out
    assert "Deployment/gateway container gateway: securityContext.readOnlyRootFilesystem must be true" in out
    assert "FAIL  kubernetes-validate k8s/extras/training/job" in out
    assert "Job/train-run: automountServiceAccountToken must be false" in out
