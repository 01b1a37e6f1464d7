"""The README capacity table: `python -m arena_dist.planning.table` prints it in Markdown.

docs/cluster_cloud.md embeds this output; tests/planning/test_table.py checks the two still agree.
"""

from __future__ import annotations

import itertools

from arena_dist.config import load_config

TABLE_MODELS = ("meta-llama/Llama-3.3-70B-Instruct", "Qwen/Qwen2.5-72B-Instruct")
TABLE_NODES = (2, 4, 8)
TABLE_SETTINGS = {"gpu": "a100-80gb", "seq_len": 4096, "micro_batch": 1, "epoch_tokens": 1e9, "mfu": 0.4}


def table_rows(offloads: tuple[str, ...] = ("none", "optimizer")) -> list[dict]:
    from arena_dist.planning.config import Config
    from arena_dist.planning.report import plan_job

    rows = []
    for model, offload, nodes in itertools.product(TABLE_MODELS, offloads, TABLE_NODES):
        config = load_config(Config, overrides=[
            f"teacher.model.name={model}", f"cluster.nodes={nodes}", f"cluster.gpu={TABLE_SETTINGS['gpu']}",
            f"teacher.training.offload={offload}", f"teacher.training.seq_len={TABLE_SETTINGS['seq_len']}",
            f"teacher.training.micro_batch={TABLE_SETTINGS['micro_batch']}",
            f"teacher.epoch_tokens={TABLE_SETTINGS['epoch_tokens']}", f"mfu={TABLE_SETTINGS['mfu']}"])
        job = plan_job(config.teacher, config.cluster, config.mfu)
        rows.append({"model": model.split("/")[1], "nodes": nodes, "gpus": job["gpus"], "offload": offload,
                     **job["memory"], "hours": job["epoch"]["hours"]})
    return rows


def markdown_table() -> str:
    lines = [
        "| model | nodes x 8 A100-80GB | offload | model states / GPU | activations / GPU | fits | max micro-batch "
        "| CPU RAM / node (states) | epoch of 1B tokens |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table_rows():
        lines.append(
            f"| {r['model']} | {r['nodes']} ({r['gpus']} GPUs) | {r['offload']} | {r['model_states_gib']:.1f} GiB "
            f"| {r['activations_gib']:.1f} GiB | {'yes' if r['fits'] else 'no'} | {r['max_micro_batch']} "
            f"| {r['cpu_per_node_gib']:.0f} GiB | {r['hours']:.1f} h |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
