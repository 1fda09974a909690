#!/usr/bin/env bash
# Every suite, every peer, both dtypes, on the default model and this machine; regenerates the tables in
# BENCHMARKS.md. 34 minutes on a 2-core CPU with the defaults (4 questions per suite, 256 new tokens).
#   bash script/benchmark.sh [--num-questions N] [--dtypes bfloat16] [--suites mt_bench,gsm8k] ...
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR="${PPD_SHARED_DATA:-../shared/data}"
python3 -m prompt.evaluation.benchmark --data-dir "$DATA_DIR" --output-dir benchmarks \
    --update BENCHMARKS.md --overwrite "$@"
