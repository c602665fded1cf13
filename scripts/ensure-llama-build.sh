#!/usr/bin/env bash
# Rebuilds llama-cpp-python in $VENV when the installed one was compiled for AVX-512/AMX although the
# flags of scripts/llama-cmake-args.sh ask for a portable build: pip reuses a wheel it built earlier (a
# native build, say) whatever CMAKE_ARGS says now. `make install` runs it after pip.
#   VENV=.venv bash scripts/ensure-llama-build.sh
set -euo pipefail

VENV=${VENV:-.venv}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ARGS=$(bash "$HERE/llama-cmake-args.sh")
case " $ARGS " in
    *" -DGGML_NATIVE=OFF "*) ;;
    *) exit 0 ;; # a build for this host was asked for: whatever pip installed may stay
esac
if "$VENV/bin/python" - <<'PY'
import sys

import llama_cpp

info = llama_cpp.llama_print_system_info().decode()
sys.exit(1 if any(f"{flag} = 1" in info for flag in ("AVX512", "AMX_INT8")) else 0)
PY
then
    exit 0
fi
VERSION=$("$VENV/bin/python" -c 'import llama_cpp; print(llama_cpp.__version__)')
echo "ensure-llama-build: llama-cpp-python $VERSION is an AVX-512/AMX build (pip's wheel cache); rebuilding it with: $ARGS" >&2
CMAKE_ARGS="$ARGS" "$VENV/bin/pip" install --no-cache-dir --force-reinstall --no-deps "llama-cpp-python==$VERSION"
