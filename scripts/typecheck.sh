#!/usr/bin/env bash
# mypy over the core library (strict) and every service (typed signatures); configuration in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${VENV:-.venv}/bin"
exec "$BIN/mypy" -p distillery -p distillery_gateway -p distillery_worker -p distillery_trainer \
  -p distillery_teacher -p distillery_launcher "$@"
