#!/usr/bin/env bash
# An OpenAI-compatible PPD server on 127.0.0.1, in the foreground: FastChat's controller, a PPD model worker
# (prompt.serve.worker) and FastChat's OpenAI API server (prompt.serve.api_server). Ctrl-C (SIGINT) or
# SIGTERM stops all of them.
#
#   bash script/serve.sh [--port 8000] [--dtype float32|bfloat16|float16] [--model-path CKPT] [--with-plain]
#        [--no-ppd] [--concurrency 8] [--max-queue 16] [--threads N] [--controller-port P] [--worker-port P]
#
# --with-plain adds a second, plain (no prompt tokens) worker under the model name + "-plain", on the same
# controller; --no-ppd makes the one worker plain. Logs go to $LOGDIR (default: a new temporary folder).
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=8000 DTYPE=float32 MODEL_PATH="" CONTROLLER_PORT="" WORKER_PORT="" PLAIN_PORT="" WITH_PLAIN=0
WORKER_ARGS=()
die() { echo "error: $*" >&2; exit 2; }
need() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --port) need "$@"; PORT="$2"; shift 2 ;;
    --dtype) need "$@"; DTYPE="$2"; shift 2 ;;
    --model-path) need "$@"; MODEL_PATH="$2"; shift 2 ;;
    --controller-port) need "$@"; CONTROLLER_PORT="$2"; shift 2 ;;
    --worker-port) need "$@"; WORKER_PORT="$2"; shift 2 ;;
    --with-plain) WITH_PLAIN=1; shift ;;
    --no-ppd) WORKER_ARGS+=(--no-ppd); shift ;;
    --concurrency|--max-queue|--threads) need "$@"; WORKER_ARGS+=("$1" "$2"); shift 2 ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
case "$DTYPE" in float32|bfloat16|float16) ;; *) die "--dtype must be float32, bfloat16 or float16" ;; esac
for p in "$PORT" ${CONTROLLER_PORT:+"$CONTROLLER_PORT"} ${WORKER_PORT:+"$WORKER_PORT"}; do
  [[ "$p" =~ ^[0-9]+$ ]] && (( p > 0 && p < 65536 )) || die "a port must be a number in 1..65535, got $p"
done
[[ -z "$MODEL_PATH" || -d "$MODEL_PATH" ]] || die "--model-path $MODEL_PATH is not a folder"

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export LOGDIR="${LOGDIR:-$(mktemp -d -t ppd-serve-XXXXXX)}"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
CONTROLLER_PORT="${CONTROLLER_PORT:-$(free_port)}"
WORKER_PORT="${WORKER_PORT:-$(free_port)}"
PLAIN_PORT="$(free_port)"
CONTROLLER="http://127.0.0.1:$CONTROLLER_PORT"

PIDS=()
stop_all() {
  trap - INT TERM EXIT
  [[ ${#PIDS[@]} -gt 0 ]] || return 0
  kill -TERM "${PIDS[@]}" 2>/dev/null || true
  for _ in $(seq 50); do
    kill -0 "${PIDS[@]}" 2>/dev/null || break
    sleep 0.2
  done
  kill -KILL "${PIDS[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  echo "stopped" >&2
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap 'stop_all' EXIT

# wait_http URL [PYTHON-CONDITION on the parsed JSON `r`]: poll until it answers (and the condition holds)
wait_http() {
  for _ in $(seq 600); do
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null || die "a server process exited during start-up (logs: $LOGDIR)"; done
    if python3 - "$1" "${2:-True}" <<'EOF' 2>/dev/null; then return 0; fi
import json, sys, urllib.request
req = urllib.request.Request(sys.argv[1], method="POST" if "list_models" in sys.argv[1] else "GET")
r = json.load(urllib.request.urlopen(req, timeout=2))
sys.exit(0 if eval(sys.argv[2]) else 1)
EOF
    sleep 0.5
  done
  die "timed out waiting for $1 (logs: $LOGDIR)"
}

python3 -m fastchat.serve.controller --host 127.0.0.1 --port "$CONTROLLER_PORT" >"$LOGDIR/controller.out" 2>&1 &
PIDS+=($!)
wait_http "$CONTROLLER/list_models"
MODEL_ARGS=(--dtype "$DTYPE" ${MODEL_PATH:+--model-path "$MODEL_PATH"} --controller-address "$CONTROLLER")
python3 -m prompt.serve.worker --host 127.0.0.1 --port "$WORKER_PORT" "${MODEL_ARGS[@]}" ${WORKER_ARGS[@]+"${WORKER_ARGS[@]}"} \
  >"$LOGDIR/worker.out" 2>&1 &
PIDS+=($!)
EXPECTED=1
if [[ $WITH_PLAIN == 1 ]]; then
  python3 -m prompt.serve.worker --host 127.0.0.1 --port "$PLAIN_PORT" "${MODEL_ARGS[@]}" \
    ${WORKER_ARGS[@]+"${WORKER_ARGS[@]}"} --no-ppd >"$LOGDIR/worker-plain.out" 2>&1 &
  PIDS+=($!)
  EXPECTED=2
fi
python3 -m prompt.serve.api_server --host 127.0.0.1 --port "$PORT" --controller-address "$CONTROLLER" \
  >"$LOGDIR/api_server.out" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$PORT/v1/models" "len(r['data']) >= $EXPECTED"
MODELS=$(python3 -c "import json,urllib.request; print(', '.join(m['id'] for m in json.load(urllib.request.urlopen('http://127.0.0.1:$PORT/v1/models'))['data']))")
echo "ready: http://127.0.0.1:$PORT/v1 (models: $MODELS; logs: $LOGDIR). Ctrl-C stops." >&2

# until one of them exits (then stop the others and fail) or a signal arrives (the traps stop them)
set +e
wait -n "${PIDS[@]}"
status=$?
echo "error: a server process exited (status $status); logs: $LOGDIR" >&2
exit 1
