#!/usr/bin/env bash
# Blue/green for full-weight students on vLLM (docs/SERVING.md, "vLLM: full-weight students, blue/green"):
#   1. render k8s/extras/vllm-student/server for VERSION (a temporary copy) and apply it: a Deployment and
#      Service vllm-student-vVERSION serving MODEL_DIR on one GPU;
#   2. wait for its rollout (the pod's /health answers once the weights are loaded);
#   3. wait until the gateway's /v1/models lists the version (promote it in the registry before or
#      meanwhile: the gateway waits up to DISTILLERY_VLLM_READY_TIMEOUT_S for the new server to list it,
#      then swaps; it keeps serving the old version until then);
#   4. after DRAIN_S (the old server finishes the requests it has), delete the Deployments and Services of
#      every other version (label app.kubernetes.io/name=vllm-student).
# The gateway needs DISTILLERY_STUDENT_BACKEND=vllm and
# DISTILLERY_VLLM_URL_TEMPLATE=http://vllm-student-v{version}:8000/v1 in distillery-config.
#
# Usage: VERSION=N MODEL_DIR=/var/lib/distillery/... GATEWAY_URL=http://... DISTILLERY_API_KEY=... \
#          bash scripts/vllm-bluegreen.sh
#   VERSION      the registry version (GET /v1/registry/models)
#   MODEL_DIR    its path as the registry names it (under /var/lib/distillery, the distillery-data volume)
#   GATEWAY_URL  the gateway, e.g. http://localhost:8000 after `kubectl -n distillery port-forward svc/gateway 8000`
#   DISTILLERY_API_KEY  a key with models:read (or infer) scope
#   MODEL_NAME   optional: the registry name (else any name's vVERSION counts)
#   NAMESPACE (distillery), ROLLOUT_TIMEOUT (20m), SWITCH_TIMEOUT_S (1800), DRAIN_S (60), KEEP_OLD=1 (skip 4.)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
: "${VERSION:?set VERSION (the registry version to serve)}"
: "${MODEL_DIR:?set MODEL_DIR (the model dir of that version, as the registry names it)}"
: "${GATEWAY_URL:?set GATEWAY_URL (the gateway, e.g. http://localhost:8000)}"
: "${DISTILLERY_API_KEY:?set DISTILLERY_API_KEY (a gateway key with models:read or infer)}"
namespace="${NAMESPACE:-distillery}"
case "$VERSION" in '' | *[!0-9]*) echo "vllm-bluegreen: VERSION must be a number, not '$VERSION'" >&2; exit 2 ;; esac
case "$MODEL_DIR" in
  /var/lib/distillery/*) ;;
  *) echo "vllm-bluegreen: MODEL_DIR must be under /var/lib/distillery (the distillery-data volume)" >&2; exit 2 ;;
esac
case "$MODEL_DIR" in *[\|\&\\\"\ ]*) echo "vllm-bluegreen: MODEL_DIR has characters this script does not quote" >&2; exit 2 ;; esac
for tool in kubectl curl; do
  command -v "$tool" >/dev/null 2>&1 || { echo "vllm-bluegreen: '$tool' not found" >&2; exit 2; }
done
name="vllm-student-v$VERSION"
say() { echo "vllm-bluegreen: $*"; }

# 1. Render and apply this version's server --------------------------------------------------------------
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cp -R "$repo/k8s/extras/vllm-student/server/." "$tmp/"
sed -i.bak \
  -e "s|vllm-student-v0|$name|g" \
  -e "s|distillery/student-version: \"0\"|distillery/student-version: \"$VERSION\"|g" \
  -e "s|/var/lib/distillery/replace-with-the-model-dir|$MODEL_DIR|g" \
  "$tmp/vllm-student.yaml"
rm -f "$tmp/vllm-student.yaml.bak"
say "applying $name (serving $MODEL_DIR)"
kubectl -n "$namespace" apply -k "$tmp"

# 2. Its rollout ------------------------------------------------------------------------------------------
kubectl -n "$namespace" rollout status "deployment/$name" --timeout="${ROLLOUT_TIMEOUT:-20m}"
say "$name is ready"

# 3. The gateway serves the version ----------------------------------------------------------------------
wanted="\"id\": *\"${MODEL_NAME:-[^\"]*}:v$VERSION\""
deadline=$((SECONDS + ${SWITCH_TIMEOUT_S:-1800}))
in_a_row=0
say "waiting for $GATEWAY_URL/v1/models to list ${MODEL_NAME:-the model}:v$VERSION (promote it in the registry)"
while [ "$in_a_row" -lt 5 ]; do  # five answers in a row: several gateway replicas behind one Service
  if curl -fsS -H "Authorization: Bearer $DISTILLERY_API_KEY" "$GATEWAY_URL/v1/models" 2>/dev/null \
    | grep -Eq "$wanted"; then
    in_a_row=$((in_a_row + 1))
  else
    in_a_row=0
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "the gateway does not serve v$VERSION yet: $name stays, no other version was deleted" >&2
      exit 1
    fi
    sleep 5
  fi
done
say "the gateway serves v$VERSION"

# 4. Retire the other versions ---------------------------------------------------------------------------
if [ "${KEEP_OLD:-0}" = 1 ]; then
  say "KEEP_OLD=1: the other versions' servers stay"
  exit 0
fi
selector="app.kubernetes.io/name=vllm-student,distillery/student-version!=$VERSION"
old="$(kubectl -n "$namespace" get deployments,services -l "$selector" -o name)"
if [ -z "$old" ]; then
  say "no other version to retire"
  exit 0
fi
sleep "${DRAIN_S:-60}"  # the old backend is closed once its last request ended; let those finish
kubectl -n "$namespace" delete deployments,services -l "$selector"
say "retired: $(echo "$old" | tr '\n' ' ')"
