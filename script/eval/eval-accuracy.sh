#!/usr/bin/env bash
# Upstream's script/eval/eval-2-1-ensemble.sh on the default model: the top-1..10 accuracy of each special token,
# saved with its plot as SAVE_DIR/<model name>_accuracy.*, then the sparse trees built from those accuracies (the
# step upstream's sparse_tree_builder.py takes next). Upstream measures on AlpacaEval prompts (prompt/evaluation/
# eval.py); here on held-out ShareGPT prompts (900 onwards, beyond the training slices) answered by the base model
# itself: an evaluation set is never used to choose trees.
#
#   bash script/eval/eval-accuracy.sh [DATA_DIR]        # DATA_DIR defaults to ../shared/data
#
# Environment, each with a small default (under a minute on a 2-core CPU):
#   MODEL_PATH (prompt/weights/smollm2-135m-instruct: the default model's shipped prompt tokens; e.g. the output of
#   script/train/train-ensemble-attention-kd.sh), MODEL_NAME (smollm2-135m-ppd), SAVE_DIR (outputs/log/eval, as
#   upstream's ./log/eval/), SIZE (4 held-out prompts), STEPS (20 reply tokens each, upstream's --steps),
#   NUM_SPECIAL_TOKENS (3: the checkpoint's), MAX_TREE_LENGTH (24: trees of length 2..24), PYTHON (python3).
# A file that exists is kept: remove it to measure again.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${1:-${DATA:-../shared/data}}
MODEL_PATH=${MODEL_PATH:-prompt/weights/smollm2-135m-instruct}
MODEL_NAME=${MODEL_NAME:-smollm2-135m-ppd}
SAVE_DIR=${SAVE_DIR:-outputs/log/eval}
PYTHON=${PYTHON:-python3}
N=${NUM_SPECIAL_TOKENS:-3}
SIZE=${SIZE:-4}
mkdir -p "$SAVE_DIR"
HELDOUT=$SAVE_DIR/heldout_${N}_self_distillation_1024.pt
if [ ! -f "$HELDOUT" ]; then
  "$PYTHON" generate_dataset.py --dataset_type self_distillation \
      --data_path "$DATA/sharegpt/ShareGPT_V3_filtered_1000.json:900:$((900 + SIZE))" --save_path "$SAVE_DIR/heldout" \
      --num_special_tokens "$N" --model_max_length 1024 --max_new_tokens "${STEPS:-20}" --dtype float32
fi
if [ ! -f "$SAVE_DIR/${MODEL_NAME}_accuracy.json" ]; then
  "$PYTHON" -m prompt.evaluation.accuracy --model_path "$MODEL_PATH" --data_path "$HELDOUT" \
      --output "$SAVE_DIR/${MODEL_NAME}_accuracy.json" --plot "$SAVE_DIR/${MODEL_NAME}_accuracy.png" --dtype float32
fi
if [ ! -f "$SAVE_DIR/${MODEL_NAME}_trees.json" ]; then
  "$PYTHON" -m prompt.inference.sparse_tree_builder --accuracies-file "$SAVE_DIR/${MODEL_NAME}_accuracy.json" \
      --output-file "$SAVE_DIR/${MODEL_NAME}_trees.json" --min-input-length 2 --max-input-length "${MAX_TREE_LENGTH:-24}"
fi
echo "accuracies: $SAVE_DIR/${MODEL_NAME}_accuracy.json; trees: $SAVE_DIR/${MODEL_NAME}_trees.json"
