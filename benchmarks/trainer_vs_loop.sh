#!/usr/bin/env bash
# Training throughput (cuts per CPU second) and held-out accuracy after the same training: this tree's train.py
# (transformers' Trainer) against another checkout's (e.g. main before issue 31, our own training loop). The two runs
# go side by side at the same time (one torch thread each), one epoch over the same records with the same flags, so
# both supervise the same cuts; each is timed by its CPU time (user + system, model loading included), which other
# work pausing or slowing the machine does not inflate, where a wall-clock budget (--max_train_minutes) would; and
# by each run's own training time (trainer_state.json's elapsed, wall clock over the training steps only).
#
#   bash benchmarks/trainer_vs_loop.sh OTHER_TREE TRAIN.pt HELDOUT.pt [RECORDS] [WORK]
#
# TRAIN.pt / HELDOUT.pt: self-distillation datasets of the default model (generate_dataset.py). Prints one JSON row
# per side and the ratios (this tree / other tree).
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
OTHER=$(cd "$1" && pwd)
TRAIN=$(realpath "$2")
HELDOUT=$(realpath "$3")
RECORDS=${4:-16}
WORK=${5:-$(mktemp -d)}
mkdir -p "$WORK"
PYTHON=${PYTHON:-python3}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
FLAGS=(--dataset_path "$TRAIN" --size "$RECORDS" --num_special_tokens 3 --model_max_length 1024 --num_train_epochs 1
       --learning_rate 1e-2 --lr_scheduler_type cosine --logging_steps 4 --save_steps 100000 --dtype float32
       --many_cuts true --seed 42 --threads 1)
run() {  # run TREE NAME: train with that tree's train.py (CPU seconds into NAME.cpu), then its held-out accuracy
  local tree=$1 out=$WORK/$2
  cd "$tree"
  TIMEFORMAT='%U %S'
  { time PYTHONPATH="$tree" "$PYTHON" prompt/train/train.py "${FLAGS[@]}" --output_dir "$out" > "$out.log" 2>&1 ; } \
      2> "$out.cpu"
  PYTHONPATH="$tree" "$PYTHON" -m prompt.evaluation.accuracy --model-path "$out" --data_path "$HELDOUT" \
      --output "$out.accuracy.json" --dtype float32 --threads 1 >> "$out.log" 2>&1
}
run "$HERE" trainer &
first=$!
run "$OTHER" loop &
second=$!
wait $first
wait $second
"$PYTHON" - "$WORK" <<'EOF'
import json, os, sys
work = sys.argv[1]
rows = {}
for name in ("trainer", "loop"):
    state = json.load(open(os.path.join(work, name, "trainer_state.json")))
    accuracy = json.load(open(os.path.join(work, name + ".accuracy.json")))["top_k_accuracy"]
    cpu = sum(float(x) for x in open(os.path.join(work, name + ".cpu")).read().split())
    rows[name] = {"steps": state["step"], "cuts": state["cuts"], "cpu_seconds": round(cpu, 1),
                  "cuts_per_cpu_second": round(state["cuts"] / cpu, 3), "training_minutes": round(state["elapsed"] / 60, 3),
                  "cuts_per_training_second": round(state["cuts"] / state["elapsed"], 3),
                  "top1": [round(row[0], 4) for row in accuracy], "top5": [round(row[4], 4) for row in accuracy]}
    print(json.dumps({name: rows[name]}))
t, l = rows["trainer"], rows["loop"]
print(json.dumps({"cuts_per_cpu_second_ratio": round(t["cuts_per_cpu_second"] / l["cuts_per_cpu_second"], 3),
                  "cuts_per_training_second_ratio": round(t["cuts_per_training_second"] / l["cuts_per_training_second"], 3),
                  "top1_ratio": [round(a / b, 3) if b else None for a, b in zip(t["top1"], l["top1"])],
                  "top5_ratio": [round(a / b, 3) if b else None for a, b in zip(t["top5"], l["top5"])]}))
EOF
