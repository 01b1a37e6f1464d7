"""Assemble a capacity plan (memory per GPU, fit, time estimates) from the plan stage's config, and print it."""

from __future__ import annotations

import dataclasses
import math

from arena_dist.planning.hardware import gpu_spec
from arena_dist.planning.memory import (
    GIB, activation_bytes, adapter_states, full_finetune_states, plan_memory,
)
from arena_dist.planning.models import count_params, resolve_dims
from arena_dist.planning.submission import estimate_submission
from arena_dist.planning.time import epoch_estimate, labelling_estimate


def plan_job(job, cluster, mfu: float) -> dict:
    """Memory and epoch time of one training job (teacher or student)."""
    dims = resolve_dims(job.model)
    params = count_params(dims, job.model.head, job.model.num_labels)
    gpu = gpu_spec(cluster.gpu, cluster.gpu_memory_gib, cluster.peak_tflops)
    nodes = job.nodes or cluster.nodes
    t = job.training
    if t.method == "full":
        states, detail = full_finetune_states(params, t.zero_stage, t.offload, cluster.gpus_per_node, nodes), {}
    else:
        states, detail = adapter_states(
            dims, params, t.method, t.lora_r, t.lora_target_modules, t.quant_bits, t.double_quant, t.zero_stage,
            t.offload, cluster.gpus_per_node, nodes, job.model.head)
    per_sample = activation_bytes(dims, t.seq_len, 1, t.activation_checkpointing, t.attention, job.model.head)
    memory = plan_memory(states, per_sample, t.micro_batch, gpu.memory_gib, cluster.reserved_gib)
    gpus = nodes * cluster.gpus_per_node
    epoch = epoch_estimate(dims, params, job.epoch_tokens, t.seq_len, t.method, t.activation_checkpointing, gpus,
                           gpu.peak_tflops_bf16, mfu)
    return {
        "model": job.model.name or "custom", "dims": dataclasses.asdict(dims), "params": params.as_dict(),
        "nodes": nodes, "gpus": gpus, "gpu": gpu.name, "method": t.method, "dtype": t.dtype, "zero_stage": t.zero_stage,
        "offload": t.offload, "seq_len": t.seq_len, "micro_batch": t.micro_batch,
        "activation_checkpointing": t.activation_checkpointing, "memory": dataclasses.asdict(memory),
        "adapters": detail, "epoch": epoch,
    }


def build_plan(config) -> dict:
    plan = {}
    if config.teacher is not None or config.student is not None:  # the cluster is theirs (and the labelling's)
        gpu = gpu_spec(config.cluster.gpu, config.cluster.gpu_memory_gib, config.cluster.peak_tflops)
        plan["cluster"] = {"nodes": config.cluster.nodes, "gpus_per_node": config.cluster.gpus_per_node,
                           "gpu": gpu.name, "gpu_memory_gib": gpu.memory_gib, "peak_tflops": gpu.peak_tflops_bf16,
                           "reserved_gib": config.cluster.reserved_gib}
        plan["mfu"] = config.mfu
    if config.teacher is not None:
        plan["teacher"] = plan_job(config.teacher, config.cluster, config.mfu)
    if config.label is not None:  # the config requires the teacher with it
        teacher_dims = resolve_dims(config.teacher.model)
        params = count_params(teacher_dims, config.teacher.model.head, config.teacher.model.num_labels)
        gpus = (config.label.nodes or config.cluster.nodes) * config.cluster.gpus_per_node
        plan["label"] = labelling_estimate(
            teacher_dims, params, config.label.rows, config.label.tokens_per_row, config.label.swap_tta, gpus,
            gpu.peak_tflops_bf16, config.label.mfu or config.mfu)
        plan["label"]["teachers"] = config.label.teachers
        # Inference keeps 16-bit weights only; a replica spans as many GPUs as its weights need.
        weights_gib = params.total * 2 / GIB
        usable = gpu.memory_gib - config.cluster.reserved_gib
        plan["label"]["weights_gib"] = round(weights_gib, 1)
        plan["label"]["gpus_per_replica"] = max(1, math.ceil(weights_gib / (usable * 0.8)))  # 20% for activations/KV
        plan["label"]["hours"] *= config.label.teachers
    if config.student is not None:
        plan["student"] = plan_job(config.student, config.cluster, config.mfu)
    if config.submission is not None:
        plan["submission"] = estimate_submission(config.submission)
    return plan


def _job_rows(name: str, job: dict) -> list[str]:
    m, e = job["memory"], job["epoch"]
    fits = "yes" if m["fits"] else "NO"
    return [
        f"{name}: {job['model']} ({job['params']['total'] / 1e9:.2f}B params), {job['method']}, ZeRO-{job['zero_stage']}"
        f" offload={job['offload']}, {job['nodes']} node(s) x {job['gpus'] // job['nodes']} {job['gpu']}",
        f"  seq {job['seq_len']}, micro-batch {job['micro_batch']}, activation checkpointing "
        f"{'on' if job['activation_checkpointing'] else 'off'}",
        f"  per GPU: model states {m['model_states_gib']:.1f} GiB ({m['model_states_formula']}) + activations "
        f"{m['activations_gib']:.1f} GiB + reserved {m['reserved_gib']:.1f} GiB = {m['total_gib']:.1f} / "
        f"{m['gpu_memory_gib']:.0f} GiB -> fits: {fits}; largest micro-batch {m['max_micro_batch']}",
        f"  CPU per node (model states): {m['cpu_per_node_gib']:.0f} GiB",
        f"  epoch of {e['tokens']:.3g} tokens: {e['hours']:.1f} h on {e['gpus']} GPUs "
        f"({e['tokens_per_s_per_gpu']:.0f} tokens/s/GPU)",
    ]


def _submission_rows(sub: dict) -> list[str]:
    cap = f", cut at {sub['max_length']}" if sub["max_length"] else ""
    lines = [f"submission: {sub['rows']:,} rows (mean {sub['mean_tokens']:.0f} tokens{cap}, padding "
             f"x{sub['padding']:.2f}) on {sub['devices']} x {sub['gpu']} ({sub['dtype']}, {sub['peak_tflops']:.0f} "
             f"dense TFLOP/s, {sub['memory_bandwidth_gb_s']:.0f} GB/s), one replica per GPU, budget "
             f"{sub['budget_hours']:.1f} h"]
    for m in sub["models"]:
        mem = m["memory"]
        activations = ("not modelled" if mem["activations_gib"] is None
                       else f"{mem['activations_gib']:.1f} GiB for {mem['batch_tokens']} tokens")
        largest = f"{mem['max_batch_tokens']:,} tokens" if mem["max_batch_tokens"] is not None else "n/a"
        rows_share = "" if m["max_rows_share"] is None else f", largest row share {m['max_rows_share']:.0%}"
        lines += [
            f"  {m['model']} ({m['params'] / 1e9:.2f}B params, {m['quantization']}): {m['rows_share']:.0%} of rows, "
            f"swap-TTA on {m['tta_share']:.0%} -> {m['row_passes']:,.0f} row passes, {m['flops']:.3g} FLOPs at "
            f"efficiency {m['efficiency']:.0%} ({m['tokens_per_s_per_gpu']:,.0f} tokens/s/GPU)",
            f"    per GPU: weights {mem['weights_gib']:.1f} GiB + activations {activations} + reserved "
            f"{mem['reserved_gib']:.1f} GiB = {mem['total_gib']:.1f} / {mem['gpu_memory_gib']:.0f} GiB -> fits: "
            f"{'yes' if mem['fits'] else 'NO'}; largest batch {largest}",
            f"    load {m['load_hours']:.2f} h + compute {m['compute_hours']:.2f} h + 4-bit dequantisation "
            f"{m['dequant_hours']:.2f} h = {m['hours']:.2f} h; largest swap-TTA share {m['max_tta_share']:.0%}"
            f"{rows_share}",
        ]
    verdict = "yes" if sub["fits"] else "NO" + ("" if sub["fits_memory"] else " (memory)")
    lines.append(f"  total {sub['hours']:.2f} h (setup {sub['setup_hours']:.2f} h) of {sub['budget_hours']:.1f} h "
                 f"-> fits: {verdict}, margin {sub['margin_hours']:+.2f} h")
    return lines


def format_plan(plan: dict) -> str:
    lines = []
    if "cluster" in plan:
        c = plan["cluster"]
        lines.append(f"cluster: {c['nodes']} node(s) x {c['gpus_per_node']} {c['gpu']} ({c['gpu_memory_gib']:.0f} "
                     f"GiB, {c['peak_tflops']:.0f} dense TFLOP/s bf16), MFU {plan['mfu']:.0%}")
    if "teacher" in plan:
        lines += _job_rows("teacher", plan["teacher"])
    if "label" in plan:
        lab = plan["label"]
        lines.append(f"label: {lab['rows']:,} rows x {lab['tokens_per_row']} tokens x {lab['passes']} pass(es) x "
                     f"{lab['teachers']} teacher(s) on {lab['gpus']} GPUs: {lab['hours']:.1f} h "
                     f"(16-bit weights {lab['weights_gib']:.0f} GiB: {lab['gpus_per_replica']} GPU(s) per replica)")
    if "student" in plan:
        lines += _job_rows("student", plan["student"])
    if "submission" in plan:
        lines += _submission_rows(plan["submission"])
    return "\n".join(lines)
