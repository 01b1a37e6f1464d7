"""Assemble a capacity plan (memory per GPU, fit, time estimates) from the plan stage's config, and print it."""

from __future__ import annotations

import dataclasses
import math

from arena_dist.errors import ConfigError
from arena_dist.planning.hardware import gpu_spec
from arena_dist.planning.memory import (
    GIB, activation_bytes, adapter_states, full_finetune_states, plan_memory,
)
from arena_dist.planning.models import ModelDims, count_params, known_model, with_overrides
from arena_dist.planning.time import epoch_estimate, labelling_estimate

DIM_FIELDS = tuple(field.name for field in dataclasses.fields(ModelDims))  # the six core dims come first


def resolve_dims(model) -> ModelDims:
    """Built-in dims of `model.name`, with any explicit dims on top; explicit dims alone need the six core fields."""
    explicit = {field: getattr(model, field) for field in DIM_FIELDS}
    if model.name:
        return with_overrides(known_model(model.name), **explicit)
    missing = [f for f in DIM_FIELDS[:6] if explicit[f] is None]
    if missing:
        raise ConfigError(f"model: give model.name or all of the dims; missing {', '.join(missing)}")
    return ModelDims(**{k: v for k, v in explicit.items() if v is not None})


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
    gpu = gpu_spec(config.cluster.gpu, config.cluster.gpu_memory_gib, config.cluster.peak_tflops)
    plan = {
        "cluster": {"nodes": config.cluster.nodes, "gpus_per_node": config.cluster.gpus_per_node, "gpu": gpu.name,
                    "gpu_memory_gib": gpu.memory_gib, "peak_tflops": gpu.peak_tflops_bf16,
                    "reserved_gib": config.cluster.reserved_gib},
        "mfu": config.mfu,
        "teacher": plan_job(config.teacher, config.cluster, config.mfu),
    }
    if config.label is not None:
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


def format_plan(plan: dict) -> str:
    c = plan["cluster"]
    lines = [f"cluster: {c['nodes']} node(s) x {c['gpus_per_node']} {c['gpu']} ({c['gpu_memory_gib']:.0f} GiB, "
             f"{c['peak_tflops']:.0f} dense TFLOP/s bf16), MFU {plan['mfu']:.0%}"]
    lines += _job_rows("teacher", plan["teacher"])
    if "label" in plan:
        lab = plan["label"]
        lines.append(f"label: {lab['rows']:,} rows x {lab['tokens_per_row']} tokens x {lab['passes']} pass(es) x "
                     f"{lab['teachers']} teacher(s) on {lab['gpus']} GPUs: {lab['hours']:.1f} h "
                     f"(16-bit weights {lab['weights_gib']:.0f} GiB: {lab['gpus_per_replica']} GPU(s) per replica)")
    if "student" in plan:
        lines += _job_rows("student", plan["student"])
    return "\n".join(lines)
