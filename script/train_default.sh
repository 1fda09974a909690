#!/usr/bin/env bash
# Train the prompt tokens shipped for the default model (SmolLM2-135M-Instruct): 3 special tokens x 1 virtual
# token, decoder attention, prefix tuning with 10 prefix keys/values per special token (the winner of
# script/capacity_comparison.sh, whose prefix_tuning run is stage 1 here), self-distillation with many cuts per
# forward, special tokens at the anchor's next positions (--prefix_positions next, the shipped tokens' convention).
#   stage 1: MINUTES (8) from random tokens on 384 replies (ShareGPT prompts 0-299, GSM8K-train questions 0-83);
#   stage 2: WARM_MINUTES (15) more, started from stage 1's tokens (--stage1_model_path), lr 3e-3, on 800 replies
#            (ShareGPT prompts 0-599, GSM8K-train questions 0-199);
#   stage 3: WARM_MINUTES more from stage 2's tokens, lr 2e-3, same 800 replies (another shuffle).
# On a 2-core CPU: about 10 + 20 minutes of reply generation, 8 + 15 + 15 minutes of training, a minute of
# evaluation per stage. Re-running it skips the datasets that exist and resumes each stage from its latest
# checkpoint (the time budget counts over resumes). Then builds trees.json from the last stage's held-out
# accuracies; decoding.json (the tuned decoding) comes from python -m prompt.evaluation.tune (BENCHMARKS.md).
#
#   bash script/train_default.sh [DATA_DIR]        # DATA_DIR defaults to ../shared/data
#
# Environment: WORK (default outputs/train-default), MINUTES (8), WARM_MINUTES (15), THREADS (torch threads,
# default 2; lower it if something else runs on the machine), PYTHON (python3).
# Held out: ShareGPT prompts 900-939, a slice the training sets do not touch. MT-Bench, GSM8K test and
# AlpacaEval are never used (generate_dataset.py refuses them by content).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-${DATA:-../shared/data}}
WORK=${WORK:-outputs/train-default}
MINUTES=${MINUTES:-8}
WARM_MINUTES=${WARM_MINUTES:-15}
PYTHON=${PYTHON:-python3}
SHAREGPT=${SHAREGPT:-$DATA/sharegpt/ShareGPT_V3_filtered_1000.json}
GSM8K=${GSM8K:-$DATA/gsm8k/train.jsonl}
MODEL=HuggingFaceTB/SmolLM2-135M-Instruct
DEST=prompt/weights/smollm2-135m-instruct
THREAD_FLAGS=(--threads "${THREADS:-2}")
mkdir -p "$WORK"

# replies NAME DATA_PATH...: the base model's own greedy replies to those prompts, as $WORK/NAME_3_self_distillation_1024.pt
# (skipped when that file exists)
replies() {
  local name=$1
  shift
  [ -f "$WORK/${name}_3_self_distillation_1024.pt" ] && return 0
  "$PYTHON" generate_dataset.py --dataset_type self_distillation --model_name_or_path "$MODEL" \
      --data_path "$@" --save_path "$WORK/$name" \
      --num_special_tokens 3 --model_max_length 1024 --max_new_tokens 128 --batch_size 32 --dtype bfloat16 \
      ${THREAD_FLAGS[@]+"${THREAD_FLAGS[@]}"}
}
TRAIN_SET=$WORK/train_3_self_distillation_1024.pt
LARGE_SET=$WORK/large_3_self_distillation_1024.pt
HELDOUT_SET=$WORK/heldout_3_self_distillation_1024.pt
replies train "$SHAREGPT:0:300" "$GSM8K:0:84"
replies large "$SHAREGPT:0:600" "$GSM8K:0:200"
replies heldout "$SHAREGPT:900:940"

# train STAGE_DIR DATASET MINUTES LEARNING_RATE SEED [extra flags]: one stage, evaluated on the held-out replies
train() {
  local out=$1 data=$2 minutes=$3 lr=$4 seed=$5
  shift 5
  "$PYTHON" prompt/train/train.py --model_name_or_path "$MODEL" \
      --dataset_path "$data" \
      --output_dir "$out" \
      --num_train_epochs 3 \
      --max_train_minutes "$minutes" \
      --save_steps 50 \
      --model_max_length 1024 \
      --num_special_tokens 3 \
      --virtual_tokens_per_special_token 1 \
      --use_prefix_tuning \
      --prefix_virtual_tokens 10 \
      --per_device_train_batch_size 1 \
      --per_device_eval_batch_size 1 \
      --gradient_accumulation_steps 1 \
      --evaluation_strategy "no" \
      --learning_rate "$lr" \
      --weight_decay 0.0 \
      --warmup_ratio 0.0 \
      --lr_scheduler_type "cosine" \
      --logging_steps 10 \
      --vt_attention_type "decoder" \
      --trainer_type "distillation_trainer" \
      --dtype bfloat16 \
      --many_cuts true \
      --cuts_per_sequence 0 \
      --seed "$seed" \
      "$@" \
      ${THREAD_FLAGS[@]+"${THREAD_FLAGS[@]}"}
  "$PYTHON" -m prompt.evaluation.accuracy --model-path "$out" --data_path "$HELDOUT_SET" \
      --output "$out/accuracies.json" --plot "$out/accuracies.png" --dtype float32
}

train "$WORK/prompt-tokens" "$TRAIN_SET" "$MINUTES" 1e-2 42 --prefix_positions next
train "$WORK/stage2" "$LARGE_SET" "$WARM_MINUTES" 3e-3 43 --stage1_model_path "$WORK/prompt-tokens"
train "$WORK/stage3" "$LARGE_SET" "$WARM_MINUTES" 2e-3 44 --stage1_model_path "$WORK/stage2"
FINAL=$WORK/stage3

# Ship: the folder prompt.model.loading.SHIPPED_PROMPT_TOKENS reads (the decode loop then uses these tokens).
mkdir -p "$DEST"
for name in adapter_config.json adapter_model.safetensors accuracies.json accuracies.png trainer_state.json \
    prefix_tuning.pt; do
  cp "$FINAL/$name" "$DEST/$name.partial" && mv -f "$DEST/$name.partial" "$DEST/$name"  # atomic
done
rm -rf "$DEST/prefix"  # upstream's prefix adapter: these tokens sit at the anchor's next positions (prefix_tuning.pt)
"$PYTHON" -m prompt.inference.sparse_tree_builder --accuracies-file "$DEST/accuracies.json" \
    --output-file "$DEST/trees.json" --min-input-length 2 --max-input-length 44 --overwrite
echo "shipped prompt tokens in $DEST"
