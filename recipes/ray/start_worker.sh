#!/usr/bin/env bash
# Join this machine to a CodePercept-RL Ray cluster as a worker node (start the head with start_head.sh first).
#
#   recipes/ray/start_worker.sh HEAD_IP:6379                    # CPUs and GPUs as Ray detects them
#   recipes/ray/start_worker.sh HEAD_IP:6379 --num-gpus=8        # anything after goes to `ray start`
#
# Like the head, the node runs inside the project's virtualenv (VENV_ACTIVATE, default .venv/bin/activate under
# the repository; empty: the environment as it is), at the same path as on the head: Ray starts its workers
# with the Python that started the node. Stop: `ray stop` on this node.
set -euo pipefail

if [[ $# -lt 1 || $1 == -* ]]; then
	echo "usage: recipes/ray/start_worker.sh HEAD_IP:PORT [ray start args...]" >&2
	exit 2
fi
head_address=$1
shift
REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV_ACTIVATE=${VENV_ACTIVATE-$REPO_DIR/.venv/bin/activate}
if [[ -n $VENV_ACTIVATE ]]; then
	# shellcheck source=/dev/null
	source "$VENV_ACTIVATE"
fi
command -v codepercept-rl >/dev/null || { echo "start_worker.sh: codepercept-rl is not on PATH (VENV_ACTIVATE?)" >&2; exit 2; }

ray start --address="$head_address" --disable-usage-stats "$@"
