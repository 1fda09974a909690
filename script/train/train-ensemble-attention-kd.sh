#!/usr/bin/env bash
# Upstream's script/train/train-ensemble-attention-kd.sh on the default model: prompt tokens trained with knowledge
# distillation (--trainer_type distillation_trainer) and ensemble attention, from a distillation dataset built as
# upstream builds it (ShareGPT conversations cut into a finetune dataset, then the base model's own logits).
#
#   bash script/train/train-ensemble-attention-kd.sh [DATA_DIR]        # DATA_DIR defaults to ../shared/data
#
# Environment, each with a small default (about a minute on a 2-core CPU):
#   WORK (outputs/train-kd: the datasets, and the prompt tokens in WORK/test/ as upstream's --output_dir test/),
#   MODEL (HuggingFaceTB/SmolLM2-135M-Instruct, the embedded default model; upstream lmsys/vicuna-7b-v1.3),
#   CONVERSATIONS ($DATA/sharegpt/dummy_conversation.json: ShareGPT-format conversations with replies),
#   SIZE (4 conversations), MODEL_MAX_LENGTH (128; upstream 2048), NUM_PROCESSES (1; upstream 4 GPUs),
#   LOAD_IN_4BIT (empty; 1: --load_in_4bit as upstream, which needs bitsandbytes on CUDA), PYTHON (python3).
# Upstream's other flags are passed as it passes them. A dataset that exists is not rebuilt.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${1:-${DATA:-../shared/data}}
WORK=${WORK:-outputs/train-kd}
MODEL=${MODEL:-HuggingFaceTB/SmolLM2-135M-Instruct}
PYTHON=${PYTHON:-python3}
CONVERSATIONS=${CONVERSATIONS:-$DATA/sharegpt/dummy_conversation.json}
LENGTH=${MODEL_MAX_LENGTH:-128}
NAME=$WORK/ShareGPT_training_dataset
mkdir -p "$WORK"

# The datasets: conversations cut for 3 special tokens, then the base model's distributions over them
if [ ! -f "${NAME}_3_finetune_$LENGTH.pt" ]; then
  "$PYTHON" generate_dataset.py --dataset_type finetune --model_name_or_path "$MODEL" --num_special_tokens 3 \
      --data_path "$CONVERSATIONS:0:${SIZE:-4}" --model_max_length "$LENGTH" --save_path "$NAME"
fi
if [ ! -f "${NAME}_3_distillation_$LENGTH.pt" ]; then
  "$PYTHON" generate_dataset.py --dataset_type distillation --model_name_or_path "$MODEL" --num_special_tokens 3 \
      --data_path "${NAME}_3_finetune_$LENGTH.pt" --model_max_length "$LENGTH" --save_path "$NAME"
fi

QUANT_FLAGS=()
[ "${LOAD_IN_4BIT:-}" = 1 ] && QUANT_FLAGS=(--load_in_4bit)
"$PYTHON" -m accelerate.commands.launch --num_processes "${NUM_PROCESSES:-1}" prompt/train/train.py \
    --model_name_or_path "$MODEL" \
    --dataset_path "${NAME}_3_distillation_$LENGTH.pt" \
    --output_dir "$WORK/test/" \
    --num_train_epochs 1 \
    --save_steps 500 \
    --model_max_length "$LENGTH" \
    --num_special_tokens 3 \
    --virtual_tokens_per_special_token 1 \
    --per_device_train_batch_size 1 \
    --per_device_eval_batch_size 1 \
    --gradient_accumulation_steps 4 \
    --evaluation_strategy "no" \
    --learning_rate 1e-2 \
    --weight_decay 0.0 \
    --warmup_ratio 0.0 \
    --lr_scheduler_type "cosine" \
    --logging_steps 10 \
    ${QUANT_FLAGS[@]+"${QUANT_FLAGS[@]}"} \
    --vt_attention_type "ensemble" \
    --trainer_type "distillation_trainer"
