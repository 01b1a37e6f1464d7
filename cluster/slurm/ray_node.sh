#!/usr/bin/env bash
# One Ray node inside a SLURM allocation; started by launch/slurm/arena_dist.sbatch through `srun -w NODE`.
#
#   ray_node.sh head   HEAD_IP     -> Ray head (GCS + dashboard on HEAD_IP only)
#   ray_node.sh worker HEAD_IP     -> Ray worker joining HEAD_IP:$ARENA_RAY_PORT
#
# Runs `ray start --block` in the background and waits; on SIGTERM/SIGINT (srun forwards the launcher's teardown,
# Slurm's scancel / preemption) or when Ray exits, it ends exactly the processes of this node's Ray — its own child
# and whatever names its private temp dir — and removes that dir. Never a host-wide `ray stop`: other jobs may share
# the node.
set -uo pipefail

role=${1:?usage: ray_node.sh head|worker HEAD_IP}
head_ip=${2:?usage: ray_node.sh head|worker HEAD_IP}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
node_name=${SLURMD_NODENAME:-$(hostname -s)}
node_ip=$(bash "$here/node_ip.sh")
ray_port=${ARENA_RAY_PORT:-6379}

# Node-local, short temp dir (Unix socket paths must stay < 108 bytes), one per job and node: several nodes of a test
# cluster may share one filesystem (job ids restart per Slurm cluster: its name is part of the dir), and a requeued
# job must not reuse the previous attempt's sockets.
cluster=${SLURM_CLUSTER_NAME:-slurm}
temp_dir="${ARENA_RAY_TMPDIR:-/tmp}/ray-${cluster:0:12}-${SLURM_JOB_ID:-nojob}-${SLURM_RESTART_COUNT:-0}-${node_name}"
mkdir -p "$temp_dir"

# GPUs: give Ray every GPU of this node and let Ray hand out per-worker ids (it sets CUDA_VISIBLE_DEVICES for each
# task/actor from its own assignment). The classic SLURM/Ray pitfall is one Ray node per *task* with --gpus-per-task
# or a CUDA_VISIBLE_DEVICES=0 leaking from the batch step: every training worker then lands on GPU 0.
num_gpus=${ARENA_RAY_NUM_GPUS:-}
if [ -z "$num_gpus" ] && [ -n "${SLURM_GPUS_ON_NODE:-}" ]; then
  num_gpus=$SLURM_GPUS_ON_NODE
fi
if [ -z "$num_gpus" ] && [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
  IFS=, read -r -a visible <<<"$CUDA_VISIBLE_DEVICES"
  num_gpus=${#visible[@]}
fi
num_cpus=${ARENA_RAY_NUM_CPUS:-${SLURM_CPUS_ON_NODE:-}}

args=(start --block --disable-usage-stats "--node-ip-address=$node_ip" "--temp-dir=$temp_dir")
[ -n "$num_cpus" ] && args+=("--num-cpus=$num_cpus")
[ -n "$num_gpus" ] && args+=("--num-gpus=$num_gpus")
# Every node also carries a resource named after it, so work can be pinned to a node (and tests can check placement).
args+=("--resources={\"node:slurm:$node_name\": 1}")
if [ "$role" = head ]; then
  args+=(--head "--port=$ray_port" --include-dashboard=true "--dashboard-host=$head_ip"
         "--dashboard-port=${ARENA_DASHBOARD_PORT:-8265}")
else
  args+=("--address=$head_ip:$ray_port")
fi

echo "[ray_node] $role on $node_name ($node_ip): cpus=${num_cpus:-auto} gpus=${num_gpus:-auto}" \
     "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-unset} temp_dir=$temp_dir" >&2

ray_pid=""
ours() {  # this node's Ray processes: `ray start` itself and everything naming the private temp dir
  { [ -n "$ray_pid" ] && kill -0 "$ray_pid" 2>/dev/null && echo "$ray_pid"; pgrep -f -- "$temp_dir"; } \
    | grep -vx "$$" | sort -u
}
cleanup() {
  # Quick on purpose: when srun is told to stop, slurmstepd SIGKILLs the whole step after KillWait, and a SIGTERMed
  # `ray start --block` would "drain" for 30 s. The job is over: nothing here needs a graceful Ray shutdown.
  trap - TERM INT EXIT
  echo "[ray_node] stopping Ray on $node_name" >&2
  local pids
  pids=$(ours)
  [ -n "$pids" ] && kill -TERM $pids 2>/dev/null
  for _ in $(seq 1 4); do
    [ -z "$(ours)" ] && break
    sleep 0.5
  done
  pids=$(ours)
  [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
  rm -rf "$temp_dir"
  echo "[ray_node] stopped Ray on $node_name, removed $temp_dir" >&2
}
trap 'cleanup; exit 143' TERM
trap 'cleanup; exit 130' INT
trap cleanup EXIT

ray "${args[@]}" &
ray_pid=$!
wait "$ray_pid"
status=$?
echo "[ray_node] ray on $node_name exited with $status" >&2
exit "$status"
