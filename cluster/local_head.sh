#!/usr/bin/env bash
# A local single-machine Ray cluster (one GPU box or a Kaggle-like offline machine):
#   bash cluster/local_head.sh start   # ray start --head on loopback, dashboard on 127.0.0.1:8265
#   RAY_ADDRESS=http://127.0.0.1:8265 make eval-cluster CONFIG=jobs/configs/smoke.yaml
#   bash cluster/local_head.sh stop
set -euo pipefail
cd "$(dirname "$0")/.."
RAY=${RAY:-.venv/bin/ray}
# The head listens on loopback only; Ray 2.60's default token auth would make every local `ray job submit`
# need RAY_AUTH_MODE=token, so it is off here unless the caller sets RAY_AUTH_MODE.
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
case "${1:-start}" in
  start)
    gpus=$(command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L | wc -l || echo 0)
    "$RAY" start --head --node-ip-address=127.0.0.1 --port="${RAY_PORT:-6379}" \
      --dashboard-host=127.0.0.1 --dashboard-port="${RAY_DASHBOARD_PORT:-8265}" --num-gpus="$gpus" \
      ${RAY_NUM_CPUS:+--num-cpus="$RAY_NUM_CPUS"} --disable-usage-stats
    echo "Ray head up: export RAY_ADDRESS=http://127.0.0.1:${RAY_DASHBOARD_PORT:-8265}"
    ;;
  stop) "$RAY" stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
