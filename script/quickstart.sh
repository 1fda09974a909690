#!/usr/bin/env bash
# One command on a fresh machine: install, then answer a few questions with PPD on the default model and
# compare tokens/s with transformers `generate` greedy and our plain greedy loop, measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash script/setup.sh
python3 -m prompt.demo "$@"
