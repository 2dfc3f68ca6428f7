#!/usr/bin/env bash
# A local single-machine Ray cluster (one GPU box or a Kaggle-like offline machine):
#   make ray-head        # this script's `start`: a Ray head, dashboard and job API on 127.0.0.1:8265
#   make eval-cluster CONFIG=jobs/configs/smoke.yaml
#   make ray-stop        # stops this head only (not other Ray clusters on the machine)
#
# Security: Ray's GCS, raylet and agents bind every interface whatever --node-ip-address says, so the head
# keeps Ray 2.60's token authentication ON: a client needs RAY_AUTH_MODE=token and the token in
# ~/.ray/auth_token (created here, mode 0600). `make eval-cluster` sets RAY_AUTH_MODE=token; an
# unauthenticated client is refused. To open the head to a LAN on purpose, copy the token to the clients
# and start with RAY_DASHBOARD_HOST=0.0.0.0.
#
# Jobs run with this checkout's venv first on PATH, so an entrypoint's `python` is .venv/bin/python.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=$(pwd)/.venv
RAY=${RAY:-$VENV/bin/ray}
STATE=${TTFT_HEAD_DIR:-$(pwd)/.cache/ray-head}
PORT=${RAY_PORT:-6379}
DASH=${RAY_DASHBOARD_PORT:-8265}
export RAY_AUTH_MODE=token RAY_USAGE_STATS_ENABLED=0
export PATH="$VENV/bin:$PATH"

stop() {
  [ -f "$STATE/pgid" ] || { echo "no local head is running (no $STATE/pgid)"; return 0; }
  local pgid; pgid=$(cat "$STATE/pgid")
  kill -TERM -- "-$pgid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 -- "-$pgid" 2>/dev/null || break; sleep 0.2; done
  kill -KILL -- "-$pgid" 2>/dev/null || true
  rm -f "$STATE/pgid"
  echo "Ray head stopped"
}

case "${1:-start}" in
  start)
    if [ -f "$STATE/pgid" ] && kill -0 -- "-$(cat "$STATE/pgid")" 2>/dev/null; then
      echo "a local head is already running (pgid $(cat "$STATE/pgid")); make ray-stop first" >&2; exit 1
    fi
    mkdir -p "$STATE" ~/.ray
    "$RAY" get-auth-token --generate >/dev/null
    chmod 600 ~/.ray/auth_token
    gpus=$(command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L | wc -l || echo 0)
    setsid "$RAY" start --head --block --node-ip-address=127.0.0.1 --port="$PORT" \
      --dashboard-host="${RAY_DASHBOARD_HOST:-127.0.0.1}" --dashboard-port="$DASH" --num-gpus="$gpus" \
      ${RAY_NUM_CPUS:+--num-cpus="$RAY_NUM_CPUS"} ${RAY_TEMP_DIR:+--temp-dir="$RAY_TEMP_DIR"} \
      ${RAY_HEAD_ARGS:-} --disable-usage-stats >"$STATE/head.log" 2>&1 </dev/null &
    echo $! >"$STATE/pgid"
    for _ in $(seq 1 150); do  # until the job API takes a job (its agent is up, not only the HTTP server)
      if "$RAY" job submit --no-wait --address "http://127.0.0.1:$DASH" -- true >/dev/null 2>&1; then
        echo "Ray head up ($gpus GPUs): export RAY_ADDRESS=http://127.0.0.1:$DASH RAY_AUTH_MODE=token"
        exit 0
      fi
      kill -0 "$(cat "$STATE/pgid")" 2>/dev/null || { tail -20 "$STATE/head.log" >&2; rm -f "$STATE/pgid"; exit 1; }
      sleep 2
    done
    echo "the Ray head did not come up; see $STATE/head.log" >&2; stop; exit 1
    ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
