# shellcheck shell=bash
# A Ray cluster across the nodes of a Slurm allocation. Source it from a batch script, then:
#
#   ray_cluster_start   # head on the first node of $SLURM_JOB_NODELIST, a worker on every other node;
#                       # returns once all nodes have joined, with RAY_ADDRESS exported (ray.address=auto)
#   ray_cluster_stop    # stops every node's Ray (call it from an EXIT trap)
#   slurm_gpus_per_node # prints the GPUs this allocation gives each node (0 when none)
#
# Every node runs `ray start --block` inside its own `srun --overlap` step, so Slurm accounts for its processes
# and ray_cluster_stop ends exactly this job's Ray (SIGTERM to those steps): never `ray stop`, which would also
# stop other jobs' Ray on a shared node.
#
# Settings (environment):
#   RAY_PORT           GCS port of the head (default 6379 + job id mod 1000, so two jobs sharing a node rarely
#                      collide); the Ray client server takes RAY_PORT + 1
#   RAY_HEAD_IP        address the workers reach the head at (default: `hostname --ip-address` on the head)
#   RAY_CLUSTER_TMPDIR Ray's --temp-dir on every node (default /tmp/ray-$SLURM_JOB_ID; keep it short, Ray's
#                      socket paths must stay under 107 characters)
#   RAY_START_ARGS     extra `ray start` arguments for every node, e.g. "--object-store-memory=20000000000"
#   RAY_CLUSTER_WAIT_S seconds to wait for all nodes to join (default 300)
#   RAY_AUTH_MODE      default "token": a fresh RAY_AUTH_TOKEN is made for the job unless one (or
#                      RAY_AUTH_TOKEN_PATH) is set; srun hands the environment to every node

RAY_CLUSTER_PIDS=()

_ray_cluster_log() {
	echo "[ray_cluster $(date +%H:%M:%S)] $*"
}

slurm_gpus_per_node() {
	# In this order: SLURM_GPUS_ON_NODE (set for --gpus-per-node and --gres=gpu:N), SLURM_GPUS_PER_NODE
	# ("[type:]N"), then the devices the batch step sees.
	if [[ -n ${SLURM_GPUS_ON_NODE:-} ]]; then
		echo "$SLURM_GPUS_ON_NODE"
	elif [[ -n ${SLURM_GPUS_PER_NODE:-} ]]; then
		echo "${SLURM_GPUS_PER_NODE##*:}"
	elif [[ -n ${CUDA_VISIBLE_DEVICES:-} ]]; then
		local devices
		IFS=, read -r -a devices <<<"$CUDA_VISIBLE_DEVICES"
		echo "${#devices[@]}"
	else
		echo 0
	fi
}

_ray_cluster_wait() {
	# _ray_cluster_wait NODES TIMEOUT_S PID...: connects to $RAY_ADDRESS and waits until NODES nodes are alive;
	# fails early when one of the `srun ray start` steps (PID...) has ended.
	python - "$@" <<'PY'
import os
import socket
import sys
import time

import ray

want, timeout, pids = int(sys.argv[1]), float(sys.argv[2]), [int(p) for p in sys.argv[3:]]
deadline = time.monotonic() + timeout


def check_steps():
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            sys.exit(f"ray_cluster: a `ray start` step (srun pid {pid}) ended before the cluster was up; see above")


address = os.environ["RAY_ADDRESS"]
host, _, port = address.rpartition(":")
error = None
while not ray.is_initialized():
    check_steps()
    if time.monotonic() > deadline:
        sys.exit(f"ray_cluster: no Ray head at {address} after {timeout:.0f} s: {error}")
    try:
        # A plain TCP probe first: ray.init against a head that is not listening yet retries for many seconds.
        socket.create_connection((host, int(port)), timeout=2).close()
        ray.init(address="auto", logging_level="ERROR", log_to_driver=False)
    except OSError as exc:  # the head is still starting (ray.init raises ConnectionError, an OSError)
        error = exc
        time.sleep(1)
alive = []
while len(alive) < want:
    check_steps()
    if time.monotonic() > deadline:
        sys.exit(f"ray_cluster: {len(alive)}/{want} nodes joined after {timeout:.0f} s")
    time.sleep(1)
    alive = [n for n in ray.nodes() if n["Alive"]]
resources = ray.cluster_resources()
print(f"ray cluster: {len(alive)}/{want} nodes alive at {address}, "
      f"CPU {resources.get('CPU', 0):g}, GPU {resources.get('GPU', 0):g}", flush=True)
ray.shutdown()
PY
}

ray_cluster_start() {
	if [[ -z ${SLURM_JOB_NODELIST:-} ]]; then
		echo "ray_cluster_start: SLURM_JOB_NODELIST is unset: run inside an allocation (sbatch/salloc)" >&2
		return 2
	fi
	if ! command -v ray >/dev/null; then
		echo "ray_cluster_start: 'ray' is not on PATH: activate the project's virtualenv first" >&2
		return 2
	fi
	local nodes gpus cpus port ip tmp
	mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
	gpus=$(slurm_gpus_per_node)
	cpus=${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-1}}
	port=${RAY_PORT:-$((6379 + ${SLURM_JOB_ID:-0} % 1000))}
	tmp=${RAY_CLUSTER_TMPDIR:-/tmp/ray-${SLURM_JOB_ID:-$$}}
	ip=${RAY_HEAD_IP:-}
	if [[ -z $ip ]]; then
		ip=$(srun --overlap --nodes=1 --ntasks=1 -w "${nodes[0]}" hostname --ip-address)
		ip=${ip%% *} # several addresses: take the first
	fi
	export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
	if [[ $RAY_AUTH_MODE == token && -z ${RAY_AUTH_TOKEN:-} && -z ${RAY_AUTH_TOKEN_PATH:-} ]]; then
		RAY_AUTH_TOKEN=$(python -c 'import secrets; print(secrets.token_hex(32))')
		export RAY_AUTH_TOKEN
	fi
	export RAY_USAGE_STATS_ENABLED=0
	# On SIGTERM a Ray node first drains (for Ray Serve) for up to 30 s; a training job's nodes have nothing to
	# hand over, and Slurm SIGKILLs a step KillWait seconds after its SIGTERM anyway.
	export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-0}
	export RAY_ADDRESS="$ip:$port"

	local extra common
	read -r -a extra <<<"${RAY_START_ARGS:-}"
	common=(--num-cpus="$cpus" --num-gpus="$gpus" --temp-dir="$tmp" --disable-usage-stats --block "${extra[@]}")
	# --overlap: the steps share the job's CPUs/GPUs with the driver; --cpus-per-task: without it a step gets one
	# CPU, and with task/affinity or task/cgroup Ray's workers would all be pinned to it.
	local step=(srun --overlap --nodes=1 --ntasks=1 --cpus-per-task="$cpus")
	_ray_cluster_log "head on ${nodes[0]} at $RAY_ADDRESS; ${#nodes[@]} node(s), $cpus CPU and $gpus GPU each"
	"${step[@]}" -w "${nodes[0]}" ray start --head --node-ip-address="$ip" --port="$port" \
		--ray-client-server-port=$((port + 1)) --include-dashboard=false "${common[@]}" &
	RAY_CLUSTER_PIDS+=("$!")
	# Workers start at once: `ray start --address` keeps retrying until the head's GCS answers.
	local node
	for node in "${nodes[@]:1}"; do
		_ray_cluster_log "worker on $node"
		"${step[@]}" -w "$node" ray start --address="$RAY_ADDRESS" "${common[@]}" &
		RAY_CLUSTER_PIDS+=("$!")
	done
	_ray_cluster_wait "${#nodes[@]}" "${RAY_CLUSTER_WAIT_S:-300}" "${RAY_CLUSTER_PIDS[@]}"
}

ray_cluster_stop() {
	((${#RAY_CLUSTER_PIDS[@]})) || return 0
	_ray_cluster_log "stopping Ray on ${#RAY_CLUSTER_PIDS[@]} node(s)"
	local pid
	# SIGTERM to an srun cancels its step: `ray start --block` gets SIGTERM and stops that node's Ray processes.
	for pid in "${RAY_CLUSTER_PIDS[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in "${RAY_CLUSTER_PIDS[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	RAY_CLUSTER_PIDS=()
	_ray_cluster_log "Ray stopped"
}
