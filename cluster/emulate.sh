#!/usr/bin/env bash
# An emulated multi-node GPU cluster on this machine (needs root): a GPU-less Ray head, two worker nodes
# that declare one GPU each and see a private $TMPDIR, /dev/shm, Ray session dir and $HOME, and a SeaweedFS
# S3 server, all on loopback. See ttft/emulate.py.
#   eval "$(bash cluster/emulate.sh up)"     # prints the export lines (RAY_ADDRESS, RAY_AUTH_*, AWS_*)
#   make eval-cluster CONFIG=jobs/configs/cluster_smoke.yaml
#   bash cluster/emulate.sh kill-node 1      # lose a worker node
#   bash cluster/emulate.sh down             # stops exactly what `up` started
set -euo pipefail
cd "$(dirname "$0")/.."
make -s install >&2
exec .venv/bin/python -m ttft.emulate "$@"
