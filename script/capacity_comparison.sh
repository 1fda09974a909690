#!/usr/bin/env bash
# The capacity comparison of the prompt tokens (BENCHMARKS.md, "Capacity options at equal training time"):
# every option trained MINUTES (8) on the same self-distilled data (2 threads, nothing else running), its held-out
# accuracies, then the real decode loop of each against transformers `generate` greedy on 10 MT-Bench first turns
# (bf16). About 75 minutes of training and evaluation plus 15 of decoding on a 2-core CPU, and 10 minutes of
# reply generation for the 4-token datasets; re-running skips what is done.
#
#   bash script/capacity_comparison.sh [DATA_DIR]        # DATA_DIR defaults to ../shared/data
#
# The data are those of script/train_default.sh (ShareGPT prompts 0-299 and GSM8K-train 0-83, held out ShareGPT
# 900-939), built once for 3 and once for 4 special tokens.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-${DATA:-../shared/data}}
WORK=${WORK:-outputs/capacity}
MINUTES=${MINUTES:-8}
PYTHON=${PYTHON:-python3}
MODEL=HuggingFaceTB/SmolLM2-135M-Instruct
mkdir -p "$WORK"
for N in 3 4; do
  if [ ! -f "$WORK/train_${N}_self_distillation_1024.pt" ]; then
    "$PYTHON" generate_dataset.py --dataset_type self_distillation --model_name_or_path "$MODEL" \
        --data_path "$DATA/sharegpt/ShareGPT_V3_filtered_1000.json:0:300" "$DATA/gsm8k/train.jsonl:0:84" \
        --save_path "$WORK/train" --num_special_tokens "$N" --model_max_length 1024 --max_new_tokens 128 \
        --batch_size 32 --dtype bfloat16
  fi
  if [ ! -f "$WORK/heldout_${N}_self_distillation_1024.pt" ]; then
    "$PYTHON" generate_dataset.py --dataset_type self_distillation --model_name_or_path "$MODEL" \
        --data_path "$DATA/sharegpt/ShareGPT_V3_filtered_1000.json:900:940" --save_path "$WORK/heldout" \
        --num_special_tokens "$N" --model_max_length 1024 --max_new_tokens 128 --batch_size 32 --dtype bfloat16
  fi
done
"$PYTHON" script/capacity_comparison.py train --work "$WORK" --minutes "$MINUTES" --threads 2
"$PYTHON" script/capacity_comparison.py decode --work "$WORK" --threads 2 --with-shipped \
    --question-file "$DATA/mt_bench/question.jsonl" --question-end 10 --max-new-token 256
