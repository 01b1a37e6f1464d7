"""A Ray driver the Slurm tests submit through launch/slurm/arena_dist.sbatch.

    probe_cluster.py OUT.json [EXIT_CODE]

Writes what it sees of the cluster: alive nodes, where a task pinned to each node ran, the network interface settings
the tasks inherited, and (when the nodes offer GPUs) the GPU ids Ray gave to one-GPU tasks. Then exits EXIT_CODE.
"""

import json
import os
import sys
import time

import ray

ray.init()


@ray.remote(num_cpus=0)
def where():
    return {
        "ip": ray.util.get_node_ip_address(),
        "node": os.environ.get("SLURMD_NODENAME"),
        "gloo": os.environ.get("GLOO_SOCKET_IFNAME"),
        "nccl": os.environ.get("NCCL_SOCKET_IFNAME"),
        "job": os.environ.get("SLURM_JOB_ID"),
    }


@ray.remote(num_cpus=0, num_gpus=1)
def gpu_ids():
    time.sleep(2)  # hold the GPU so all one-GPU tasks run at the same time and must get different ids
    return {"node": os.environ.get("SLURMD_NODENAME"), "ray": ray.get_gpu_ids(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


nodes = [node for node in ray.nodes() if node["Alive"]]
placed = []
for node in nodes:
    strategy = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
    placed.append(ray.get(where.options(scheduling_strategy=strategy).remote()))
total_gpus = int(ray.cluster_resources().get("GPU", 0))
gpus = ray.get([gpu_ids.remote() for _ in range(total_gpus)]) if total_gpus else []
report = {
    "nodes": sorted(node["NodeManagerAddress"] for node in nodes),
    "gpus_per_node": sorted(node["Resources"].get("GPU", 0) for node in nodes),
    "placed": placed,
    "gpu_tasks": gpus,
    "restart_count": os.environ.get("SLURM_RESTART_COUNT", "0"),
}
out = sys.argv[1]
with open(out + ".tmp", "w") as handle:
    json.dump(report, handle)
os.replace(out + ".tmp", out)
print("probe_cluster:", json.dumps(report), flush=True)
sys.exit(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
