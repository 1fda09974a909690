#!/usr/bin/env bash
# Upstream's script/latency/optimal-sparse-tree.sh on the default model: the tree search on AlpacaEval.
#   1. accept_length.py: the answers of each tree length (one file per tree length and run) and of the baseline;
#   2. tree_latency.py: each tree's forward latency, as upstream's tree_latency.jsonl rows;
#   3. get_throughput_results.py: each tree's figures, then the best tree by accept length per latency.
#
#   bash script/latency/optimal-sparse-tree.sh [DATA_DIR]        # DATA_DIR defaults to ../shared/data
#
# Environment, each with a small default (about a minute on a 2-core CPU):
#   WORK (outputs/alpaca_eval/dynamic_sparse_tree_search/smollm2: the answer files and tree_latency.jsonl),
#   MODEL (prompt/weights/smollm2-135m-instruct, the default model's shipped prompt tokens), CHOICES ("[10, 16]": the tree lengths searched),
#   QUESTIONS (2: AlpacaEval questions 0..QUESTIONS-1; upstream answers all 805), MAX_NEW_TOKEN (8; upstream 20),
#   N (1 run per tree length), MIN_TREE_LENGTH, MAX_TREE_LENGTH, LENGTH_INTERVAL (10, 16, 3: the latency range),
#   REPEATS (3) and PREFIX_LENGTH (64) of the latency measurement, DTYPE (float32), PYTHON (python3).
#   INTERLEAVED=1: step 1 as our interleaved measurement instead (one process, printed and saved as
#   WORK/dynamic_sparse_tree.json; no answer files, so step 3 is skipped).
# A rerun resumes: answer files are completed, never replaced, and an existing tree_latency.jsonl is kept.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${1:-${DATA:-../shared/data}}
WORK=${WORK:-outputs/alpaca_eval/dynamic_sparse_tree_search/smollm2}
PYTHON=${PYTHON:-python3}
CHOICES=${CHOICES:-[10, 16]}
DTYPE=${DTYPE:-float32}
MODEL_FLAGS=(--model-path "${MODEL:-prompt/weights/smollm2-135m-instruct}")
QUESTION_FLAGS=(--bench-name alpaca_eval --question-file "$DATA/alpaca_eval/alpaca_eval.json"
                --question-end "${QUESTIONS:-2}" --max-new-token "${MAX_NEW_TOKEN:-8}" --dtype "$DTYPE")

# Accept length of each tree (upstream passes --min/--max-length and --choices; --choices wins, as there)
MODE_FLAGS=()
[ "${INTERLEAVED:-0}" = 1 ] && MODE_FLAGS=(--interleaved)
"$PYTHON" accept_length.py \
  --dir-path "$WORK" \
  --file-name dynamic_sparse_tree \
  "${MODEL_FLAGS[@]}" \
  --eval-file-name gen_model_answer_prompt_decoding.py \
  --run-baseline \
  --n "${N:-1}" \
  --max-length 79 \
  --min-length 60 \
  --length-interval 9 \
  --choices "$CHOICES" \
  "${QUESTION_FLAGS[@]}" ${MODE_FLAGS[@]+"${MODE_FLAGS[@]}"}

# Latency of each tree (upstream's decoding flags are accepted and do not change a forward's latency)
if [ ! -f "$WORK/tree_latency.jsonl" ]; then
  "$PYTHON" tree_latency.py \
    "${MODEL_FLAGS[@]}" \
    --model-id smollm2_faster \
    --answer-file "$WORK/tree_latency.jsonl" \
    --bench-name alpaca_eval \
    --min-tree-length "${MIN_TREE_LENGTH:-10}" \
    --max-tree-length "${MAX_TREE_LENGTH:-16}" \
    --length-interval "${LENGTH_INTERVAL:-3}" \
    --max-new-token 1024 \
    --repeats "${REPEATS:-3}" --prefix-length "${PREFIX_LENGTH:-64}" --dtype "$DTYPE"
fi

# Each tree's throughput and accept length, then the best tree by accept length per forward latency
if [ "${INTERLEAVED:-0}" != 1 ]; then
  "$PYTHON" get_throughput_results.py "$WORK" --n "${N:-1}"
  "$PYTHON" get_throughput_results.py "$WORK/tree_latency.jsonl" "$WORK"
fi
