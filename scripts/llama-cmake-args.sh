#!/usr/bin/env bash
# The CMake flags llama.cpp is compiled with, in one place: llama-cpp-python (its pip build reads them as
# CMAKE_ARGS: the Makefile and the Dockerfiles) and llama-server (scripts/build-llama-server.sh).
#
# A portable build, not -march=native: on x86-64 the AVX2/FMA/F16C kernels, no AVX-512 and no AMX. A
# native build on a VM with an AMX + AVX-512 CPU (Xeon Sapphire Rapids) crashed with SIGSEGV on the first
# decode of the quantized teacher GGUFs (Q4_1, Q4_K) in ggml's extra CPU buffer types for those
# instructions (with `use_extra_bufts` off it ran); and a native build in a Docker image runs only on the
# build host's CPU family. Elsewhere (aarch64) llama.cpp's portable defaults. Set
# DISTILLERY_LLAMA_CMAKE_ARGS to build otherwise, e.g. "-DGGML_NATIVE=ON" on a host known to run it.
set -euo pipefail
if [ -n "${DISTILLERY_LLAMA_CMAKE_ARGS:-}" ]; then
    echo "$DISTILLERY_LLAMA_CMAKE_ARGS"
elif [ "$(uname -m)" = x86_64 ]; then
    echo "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
else
    echo "-DGGML_NATIVE=OFF"
fi
