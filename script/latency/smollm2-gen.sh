#!/usr/bin/env bash
# Upstream's script/latency/vicuna-7b-gen.sh (and vicuna-13b-gen.sh) on the default model: the baseline and PPD
# answering MT-Bench at its category temperatures, MT-Bench greedy, HumanEval and GSM8K, several runs each, with
# the PPD checkpoint as --model-path of both scripts (the baseline decodes its base model), then each set's
# throughput and accept length averaged over its runs (get_throughput_results.py --n).
#
#   bash script/latency/smollm2-gen.sh [DATA_DIR]        # DATA_DIR defaults to ../shared/data
#
# Environment, each with a small default (about 15 s per run on a 2-core CPU):
#   WORK (outputs: the answers go to WORK/<bench>/experiments/, as upstream's data/<bench>/experiments/),
#   MODEL (prompt/weights/smollm2-135m-instruct, the default model's shipped prompt tokens),
#   TREE_LENGTH (16; upstream 105 for Vicuna-7B and 60 for 13B, the best of its tree search), PROMPT_LOOKUP (0:
#   the tree alone, as upstream decodes; "tuned": the checkpoint's tuned lookup and suffix chains added),
#   BASELINE_RUNS (3) and RUNS (5), as upstream; BENCHES ("mt_bench mt_bench_greedy humaneval gsm8k"),
#   QUESTIONS (2: the first questions of each set; upstream answers all), MAX_NEW_TOKEN (8; upstream 1024, and 512
#   for HumanEval), DTYPE (float32), PYTHON (python3).
# A rerun answers only the questions an answer file lacks.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${1:-${DATA:-../shared/data}}
WORK=${WORK:-outputs}
MODEL=${MODEL:-prompt/weights/smollm2-135m-instruct}
PYTHON=${PYTHON:-python3}
TREE_LENGTH=${TREE_LENGTH:-16}
BASELINE_RUNS=${BASELINE_RUNS:-3}
RUNS=${RUNS:-5}
LOOKUP_FLAGS=(--prompt-lookup-num-tokens "${PROMPT_LOOKUP:-0}")
[ "${PROMPT_LOOKUP:-0}" = tuned ] && LOOKUP_FLAGS=()
COMMON=(--question-end "${QUESTIONS:-2}" --max-new-token "${MAX_NEW_TOKEN:-8}" --dtype "${DTYPE:-float32}")

# one set: NAME (the file suffix), BENCH, then the flags both scripts get
answer_set() {
  local suffix=$1 bench=$2
  shift 2
  local dir="$WORK/$bench/experiments" i baselines=() faster=()
  for i in $(seq 1 "$BASELINE_RUNS"); do
    baselines+=("$dir/smollm2-baseline$i$suffix.jsonl")
    "$PYTHON" gen_model_answer_baseline.py --model-path "$MODEL" --model-id "smollm2-baseline$i" \
        --answer-file "$dir/smollm2-baseline$i$suffix.jsonl" --bench-name "$bench" "$@" "${COMMON[@]}"
  done
  for i in $(seq 1 "$RUNS"); do
    faster+=("$dir/smollm2-faster$i$suffix.jsonl")
    "$PYTHON" gen_model_answer_prompt_decoding.py --model-path "$MODEL" --model-id "smollm2-faster$i" \
        --answer-file "$dir/smollm2-faster$i$suffix.jsonl" --tree-length "$TREE_LENGTH" --bench-name "$bench" \
        ${LOOKUP_FLAGS[@]+"${LOOKUP_FLAGS[@]}"} "$@" "${COMMON[@]}"
  done
  if [ "$BASELINE_RUNS" -gt 0 ]; then
    "$PYTHON" get_throughput_results.py "${baselines[@]}" --n "$BASELINE_RUNS"
  fi
  if [ "$RUNS" -gt 0 ]; then
    "$PYTHON" get_throughput_results.py "${faster[@]}" --n "$RUNS"
  fi
}

for set in ${BENCHES:-mt_bench mt_bench_greedy humaneval gsm8k}; do
  case $set in
    mt_bench) answer_set "" mt_bench --question-file "$DATA/mt_bench/question.jsonl" ;;  # category temperatures
    mt_bench_greedy) answer_set -greedy mt_bench --question-file "$DATA/mt_bench/question.jsonl" --temperature 0.0 ;;
    humaneval) answer_set "" humaneval ;;
    gsm8k) answer_set "" gsm8k --question-file "$DATA/gsm8k/test.jsonl" ;;
    *) echo "error: unknown set $set in BENCHES (mt_bench, mt_bench_greedy, humaneval, gsm8k)" >&2; exit 2 ;;
  esac
done
