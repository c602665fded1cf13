#!/usr/bin/env bash
# Puts llama.cpp's own `llama-server` into the venv ($VENV/bin/llama-server), built from the llama.cpp
# sources that the installed llama-cpp-python release vendors (its sdist, from PyPI), so the server and
# the in-process engine are the same llama.cpp. PyPI has no llama-server binary; this is the C++ server
# with parallel slots and continuous batching (`-np`), which llama-cpp-python's Python server is not.
#
# The build (about 10 min on 2 cores) is cached per llama.cpp version and build flags under
# ${XDG_CACHE_HOME:-~/.cache}/distillery/llama-server/, so a second venv on the same machine only copies it.
#   VENV=.venv bash scripts/build-llama-server.sh
set -euo pipefail

VENV=${VENV:-.venv}
PY="$VENV/bin/python"
[ -x "$PY" ] || { echo "build-llama-server: no venv at $VENV (run make install first)" >&2; exit 1; }
VERSION=$("$PY" -c 'import llama_cpp; print(llama_cpp.__version__)')
# The same llama.cpp flags as llama-cpp-python's build (a portable build); the cache is keyed by them.
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
read -r -a FLAGS <<<"$(bash "$HERE/llama-cmake-args.sh")"
KEY=$(echo "${FLAGS[*]}" | md5sum | cut -c1-10)
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/distillery/llama-server/$VERSION-$(uname -m)-$KEY"
TARGET="$VENV/bin/llama-server"

if [ ! -x "$CACHE/llama-server" ]; then
    command -v cmake >/dev/null || { echo "build-llama-server: cmake is needed" >&2; exit 1; }
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
    echo "build-llama-server: building llama-server from llama-cpp-python $VERSION's llama.cpp (cached in $CACHE)"
    "$PY" -m pip download --quiet --no-deps --no-binary :all: -d "$WORK" "llama-cpp-python==$VERSION"
    tar -xzf "$WORK"/llama_cpp_python-*.tar.gz -C "$WORK"
    SRC=$(echo "$WORK"/llama_cpp_python-*/vendor/llama.cpp)
    cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_OPENSSL=OFF "${FLAGS[@]}" >"$WORK/configure.log" \
        || { cat "$WORK/configure.log" >&2; exit 1; }
    cmake --build "$WORK/build" --target llama-server -j"$(nproc)" >"$WORK/build.log" 2>&1 \
        || { tail -50 "$WORK/build.log" >&2; exit 1; }
    mkdir -p "$CACHE"
    install -m 755 "$WORK/build/bin/llama-server" "$CACHE/llama-server.tmp"
    mv "$CACHE/llama-server.tmp" "$CACHE/llama-server"
fi
install -m 755 "$CACHE/llama-server" "$TARGET"
"$TARGET" --version 2>&1 | head -2
echo "build-llama-server: $TARGET"
