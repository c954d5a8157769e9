#!/usr/bin/env bash
# Start the head of a Ray cluster for CodePercept-RL on this machine; then recipes/ray/start_worker.sh on the others.
#
#   recipes/ray/start_head.sh                              # CPUs and GPUs as Ray detects them
#   recipes/ray/start_head.sh --num-gpus=8 --num-cpus=64   # anything after goes to `ray start`
#
# The node runs inside the project's virtualenv, so jobs find `codepercept-rl` on PATH and Ray's workers use the
# same Python. The dashboard (the job server `codepercept-rl submit` talks to) listens on all interfaces: keep
# DASHBOARD_PORT behind your firewall, or set DASHBOARD_HOST=127.0.0.1 and submit from this machine / a tunnel.
#
# Environment: RAY_PORT (GCS, default 6379), DASHBOARD_HOST (0.0.0.0), DASHBOARD_PORT (8265),
# VENV_ACTIVATE (default .venv/bin/activate under the repository; empty: use the environment as it is).
# Stop: `ray stop` on every node (it ends the running jobs).
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV_ACTIVATE=${VENV_ACTIVATE-$REPO_DIR/.venv/bin/activate}
if [[ -n $VENV_ACTIVATE ]]; then
	# shellcheck source=/dev/null
	source "$VENV_ACTIVATE"
fi
command -v codepercept-rl >/dev/null || { echo "start_head.sh: codepercept-rl is not on PATH (VENV_ACTIVATE?)" >&2; exit 2; }

port=${RAY_PORT:-6379}
dashboard_host=${DASHBOARD_HOST:-0.0.0.0}
dashboard_port=${DASHBOARD_PORT:-8265}
ray start --head --port="$port" --dashboard-host="$dashboard_host" --dashboard-port="$dashboard_port" \
	--disable-usage-stats "$@"

ip=$(python -c 'import ray.util; print(ray.util.get_node_ip_address())')
if [[ $dashboard_host == 0.0.0.0 || $dashboard_host == :: ]]; then
	dashboard_host=$ip
fi
cat <<MSG

Ray head up. On each worker node:   recipes/ray/start_worker.sh $ip:$port [--num-gpus=N]
Submit jobs from any machine:       codepercept-rl submit --address http://$dashboard_host:$dashboard_port -- train RECIPE ...
Cluster state:                      ray status --address $ip:$port
MSG
