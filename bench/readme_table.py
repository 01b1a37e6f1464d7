"""Rewrite the README's performance table from bench/results/*.json (between the bench:start / bench:end markers).

Each row is a ratio with its anchor, measured side by side in one benchmark run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def rows_prepare(d: dict) -> list[tuple]:
    t, m = d["throughput"], d["memory"]
    ours, base = t["tokenise_encode_records"], t["baseline_datasets_map_tokenise"]
    both_cpu = t["prepare"]["cpu_s"] + ours["cpu_s"]

    def per_row_and_token(cpu: float) -> str:
        """Rates per CPU-s over `datasets.map`'s (tokens counted with the same tokenizer on both sides)."""
        return (f"rows/CPU-s {base['cpu_s'] / cpu:.2f}×, tokens/CPU-s "
                f"{(ours['tokens'] / cpu) / (base['tokens'] / base['cpu_s']):.2f}×")

    load = t.get("load_average_before", d["machine"].get("load_average_at_start"))
    return [
        ("prepare", f"prepare → tokenise, {t['rows']:,} rows, vs plain `datasets.map` tokenisation of the raw text "
                    f"(the template adds tokens: {ours['tokens'] / t['rows']:.0f} vs {base['tokens'] / t['rows']:.0f} "
                    f"a row; 1-min load {load[0]:.1f} on {d['machine']['cpus']} cores)",
         per_row_and_token(both_cpu), "—"),
        ("prepare", "tokenise only (`encode_records`) vs `datasets.map`", per_row_and_token(ours["cpu_s"]), "—"),
        ("prepare", "peak RSS of prepare, 1M vs 100k pool rows (streaming)",
         f"{m['peak_rss_ratio_large_vs_small']:.2f}× ({m['prepare_1000000_rows']['peak_rss_mib']:.0f} vs "
         f"{m['prepare_100000_rows']['peak_rss_mib']:.0f} MiB; 10× the rows)", "≈ 1"),
    ]


def rows_teacher(d: dict) -> list[tuple]:
    mem, ray = d["memory"], d["ray_overhead"]
    return [
        ("teacher", "ZeRO-3 model states per rank, 2 ranks vs 1",
         f"{mem['ratio_2_over_1']:.2f} ({mem['bytes_2rank_per_rank'] / 2**20:.1f} vs {mem['bytes_1rank'] / 2**20:.1f} MiB)",
         f"≤ {mem['target']}"),
        *(rows_ray_overhead(ray) if "tiny" in ray else [
            ("teacher", "step time through Ray Train vs bare torchrun, same DeepSpeed config (best median of 3 runs each)",
             f"{ray['overhead']:+.1%} ({ray['ray_best_median_step_s']:.3f} vs {ray['torchrun_best_median_step_s']:.3f}"
             f" s); median of the run medians {ray['overhead_of_medians']:+.1%}", f"≤ +{ray['target']:.0%}")]),
    ]


def rows_ray_overhead(ray: dict) -> list[tuple]:
    rows = []
    for size, label in (("tiny", "tiny step"), ("1s", "step of about 1 s")):
        o = ray[size]
        top = ", ".join(f"{name.removeprefix('ray::')} {share:.2f}"
                        for name, share in list(o["ray_process_core_share"].items())[:4])
        rows.append(("teacher", f"step time through Ray Train vs bare torchrun, 2 ranks ZeRO-3, {label} (global batch "
                                f"{o['global_batch']}; best median of the runs of each)",
                     f"{o['overhead_ms_per_step']:+.0f} ms/step = {o['overhead']:+.1%} ({o['ray_best_median_step_s']:.3f}"
                     f" vs {o['torchrun_best_median_step_s']:.3f} s); busiest Ray processes, cores: {top}",
                     f"≤ +{ray['target_at_1s']:.0%}" if size == "1s" else "—"))
    if "1s_quiet" in ray:
        o = ray["1s_quiet"]
        settings = ", ".join(f"{k}={v}" for k, v in o["ray_env"].items())
        rows.append(("teacher", f"the same at the ~1 s step, Ray Train's polling slowed ({settings})",
                     f"{o['overhead_ms_per_step']:+.0f} ms/step = {o['overhead']:+.1%} ({o['ray_best_median_step_s']:.3f}"
                     f" vs {o['torchrun_best_median_step_s']:.3f} s)", f"≤ +{ray['target_at_1s']:.0%}"))
    return rows


def rows_packing(d: dict) -> list[tuple]:
    """bench/packing.py: packed micro-batches (one run per token budget) vs padded ones on the same log-normal rows."""
    lengths, target, budgets = d["lengths"], d["targets"], d["budgets_tokens"]
    load = d["machine"]["load_average_at_start"][0]
    rows = []
    for stage in ("teacher", "student"):
        if stage not in d["stages"]:
            continue
        r = d["stages"][stage]
        padded = r["padded"]
        setup = "2-rank ZeRO-3" if stage == "teacher" else "4-bit NF4 + LoRA, 1 rank"
        speedups = "; ".join(f"{b}-token packs {r['speedup_tokens_per_s'][str(b)]:.2f}× "
                             f"({r[f'packed_{b}']['real_tokens_per_s']:,.0f} tokens/s)" for b in budgets)
        anchor = (f"rows log-normal, median {lengths['median']}, σ {lengths['sigma']}, cap {lengths['cap']}; 1-min load "
                  f"{load:.1f} on {d['machine']['cpus']} cores"
                  + (f"; best of {d['repeats']} runs each" if d.get("repeats", 1) > 1 else "")) if not rows else \
            "the same rows"
        rows.append(("packing", f"{stage} ({setup}, hidden {d['model']['hidden_size']}): real training tokens/s, "
                                f"packed vs {d['micro_batch']}-row padded micro-batches "
                                f"({padded['real_tokens_per_s']:,.0f} tokens/s); {anchor}",
                     speedups, f"≥ {target['speedup']}×"))
        rows.append(("packing", f"{stage}: padded / real tokens, packed ({', '.join(map(str, budgets))} tokens) vs "
                                "padded",
                     f"{' / '.join(format(r[f'packed_{b}']['padded_over_real'], '.3f') for b in budgets)} vs "
                     f"{padded['padded_over_real']:.3f}", f"≤ {target['padded_over_real']}"))
        if padded["world_size"] > 1:
            def spread(run: dict) -> str:
                return f"{run['rank_imbalance_mean']:.3f} ({run['rank_imbalance_max']:.3f})"

            rows.append(("packing", f"{stage}: rank imbalance (max / mean tokens per rank, mean over steps; worst "
                                    "step), packed vs padded",
                         f"{' / '.join(spread(r[f'packed_{b}']) for b in budgets)} vs {spread(padded)}",
                         f"≤ {target['rank_imbalance']}"))
    return rows


def rows_label(d: dict) -> list[tuple]:
    b, s = d["batching"], d["scaling"]
    return [
        ("label", "token-budget length-sorted batches vs naive 16-row padded batches, real tokens/s",
         f"{b['speedup_wall']:.2f}× wall, {b['speedup_cpu']:.2f}× per CPU-s", f"≥ {b['target_speedup']}×"),
        ("label", "padded / real tokens, token-budget vs naive",
         f"{b['token_budget']['padding_ratio']:.3f} vs {b['naive_fixed_size']['padding_ratio']:.3f}", "≤ 1.1"),
        ("label", "1 → 2 actors, rows/s",
         f"{s['scaling_1_to_2']:.2f}× (actors got {s['1_actor']['actor_cpu_share']:.2f} → "
         f"{s['2_actor']['actor_cpu_share']:.2f} of a core each; rows per actor CPU-s "
         f"{s['1_actor']['rows_per_actor_cpu_s']:.0f} → {s['2_actor']['rows_per_actor_cpu_s']:.0f})",
         f"≥ {s['target_scaling']}×"),
    ]


def rows_generate(d: dict) -> list[tuple]:
    s, p = d["scaling"], d["padding"]
    return [
        ("generate", f"1 → 2 actors, generated tokens/s ({d['prompts']} prompts × 2 replies of "
                     f"{d['new_tokens_per_reply']} tokens, tiny Llama / Qwen2 / Gemma-2 chat models)",
         f"{s['scaling_1_to_2']:.2f}× ({s['1_actor']['new_tokens_per_s']:,.0f} → {s['2_actor']['new_tokens_per_s']:,.0f}"
         f" tokens/s; actors got {s['1_actor']['actor_cpu_share']:.2f} → {s['2_actor']['actor_cpu_share']:.2f} of a "
         "core each)", f"≥ {s['target_scaling']}×"),
        *([("generate", "the machine's own ceiling: the same generation in 2 concurrent plain processes vs 1 "
                        f"(no Ray; {d['machine_ceiling']['prompts']} prompts, the Llama model)",
            f"{d['machine_ceiling']['scaling_1_to_2']:.2f}×", "—")] if "machine_ceiling" in d else []),
        ("generate", "padded / real prompt tokens, length-sorted token-budget batches vs fixed batches of "
                     f"{p['naive_fixed_size']['batch_size']} in dataset order",
         f"{p['token_budget_sorted']:.3f} vs {p['naive_fixed_size']['padding_ratio']:.3f}", "—"),
    ]


def rows_predict(d: dict) -> list[tuple]:
    r = d["replicas"]
    one, two = r["1_replica"], r["2_replicas"]
    return [
        ("predict", "1 → 2 model replicas (worker processes, 1 thread each), rows/s",
         f"{r['scaling_1_to_2']:.2f}× (replicas got {one['replica_cpu_share']:.2f} → {two['replica_cpu_share']:.2f} "
         f"of a core each; token shares max/mean {two['token_share_max_over_mean']:.3f})",
         f"≥ {r['target_scaling']}×"),
    ] + rows_predict_budget(d.get("budget"))


def rows_predict_budget(b: dict | None) -> list[tuple]:
    if not b:
        return []
    budget, kills = b["budget"], b["kill"]["kills"]
    return [
        ("predict", f"time budget: share of the time left after the first submission used by refinement "
                    f"({budget['runs_with_time_to_refine']} of {len(budget['runs'])} random budgets left time to refine)",
         f"mean {budget['share_used_mean']:.2f}, min {budget['share_used_min']:.2f}; "
         f"{budget['runs_meeting_target']} runs ≥ {budget['target_share']}; refinement past the deadline: "
         f"{'yes' if budget['any_refinement_past_deadline'] else 'never'}", f"≥ {budget['target_share']}"),
        ("predict", f"SIGKILL during refinement ({len(kills)} random moments): time from kill to a valid submission",
         f"{max(k['seconds_from_kill_to_valid_submission'] for k in kills) * 1000:.0f} ms at most (the check's own "
         "time: the file on disk is always valid)", "0"),
    ]


def rows_student(d: dict) -> list[tuple]:
    small = d["ratios"]["small"]
    cells = ", ".join(f"{name} {small[name]['step_cpu_time_vs_fp32']:.2f}×"
                      for name in ("4bit", "4bit_bf16", "8bit", "bf16") if name in small)
    mem = ", ".join(f"{name} {small[name]['projection_bytes_vs_fp32']:.2f}×"
                    for name in ("4bit", "8bit", "bf16") if name in small)
    return [
        ("student", "LoRA step CPU time vs fp32 LoRA (small student: hidden 512, 4 layers)", cells, "—"),
        ("student", "projection weight bytes vs fp32", mem, "—"),
    ]


def rows_gpu(d: dict) -> list[tuple]:
    """`python -m bench.gpu` on one GPU (not part of `make bench`): MFU of the ~1B teacher step and label prefill."""
    cases, done = d["cases"], lambda name: d["cases"].get(name, {}).get("status") == "ok"
    rows = []
    if done("teacher_zero3_packed") and done("teacher_zero3_padded"):
        packed, padded = cases["teacher_zero3_packed"], cases["teacher_zero3_padded"]
        rows.append(("gpu", f"~1B Llama teacher step, ZeRO-3 bf16 on one {d['machine'].get('gpu', 'GPU')}: "
                            "packed vs padded micro-batches, MFU (6N × real tokens/s over the bf16 dense peak)",
                     f"{packed['mfu']:.1%} vs {padded['mfu']:.1%}", "—"))
    if done("label_prefill"):
        rows.append(("gpu", "label prefill (token-budget batches, bf16), MFU (2N × real tokens/s)",
                     f"{cases['label_prefill']['mfu']:.1%} ({cases['label_prefill']['real_tokens_per_s']:,.0f} "
                     "tokens/s)", "—"))
    if "student_4bit_over_bf16_step_time" in d.get("comparisons", {}):
        rows.append(("gpu", "student LoRA step time, 4-bit NF4 base vs bf16 base",
                     f"{d['comparisons']['student_4bit_over_bf16_step_time']:.2f}×", "—"))
    return rows


def rows_scale(d: dict) -> list[tuple]:
    """`make bench-scale` (not part of `make bench`): prepare + label at N and N/10 rows, and the fan-out simulation."""
    small, large, r = d["small"], d["large"], d["peak_rss_ratio_large_vs_small"]
    label, fan, need = large["label"], large["fan_out"], d["fan_out_vs_needed"]
    n, kills = large["rows"], len(fan["kills"])
    label_load = label.get("load_average_before", d["machine"]["load_average_at_start"])[0]
    small_fan = small["fan_out"]
    return [
        ("scale", f"peak RSS at {n:,} vs {small['rows']:,} pool rows (prepare → label on 2 actors with a tiny model, "
                  "1 SIGKILLed → finalize → ensemble merge; every id labelled exactly once)",
         f"driver {r['label_driver']:.2f}×, finalize {r['label_finalize']:.2f}×, merge {r['merge']:.2f}×, prepare "
         f"{r['prepare']:.2f}× ({large['label']['peak_rss_mib']:.0f}, {large['label_finalize']['peak_rss_mib']:.0f}, "
         f"{large['merge']['peak_rss_mib']:.0f}, {large['prepare']['peak_rss_mib']:.0f} MiB)",
         f"≤ {d['target_rss_ratio']}×"),
        ("scale", f"label {n:,} rows (both orders), tiny model, 2 actors (1-min load {label_load:.1f} on "
                  f"{d['machine']['cpus']} cores)",
         f"{label['rows_per_s']:,.0f} rows/s; {label['actor_failures']} actor failures for "
         f"{len(label['kills'])} SIGKILL", "—"),
        ("scale", f"fan-out: {fan['actors']} no-model actors, {kills} SIGKILLed at random: driver commit rate vs the "
                  f"{need['rows_per_s_needed']:.1f} rows/s a 32-GPU run needs "
                  f"({d['planned_run']['rows'] / need['rows_per_s_needed'] / 3600:.0f} h "
                  "for 1M rows × 2 orders, docs/label_estimate.md)",
         f"{fan['rows_per_s']:,.0f} rows/s ({need['headroom']:,.0f}×), {fan['rows_per_driver_cpu_s']:,.0f} rows per "
         f"driver CPU-s ({need['headroom_driver_cpu']:,.0f}×); {fan['actor_failures']} failures for {kills} kills; "
         f"driver {fan['peak_rss_mib']:.0f} MiB ({r['fan_out_driver']:.2f}× its peak at N/10: "
         f"{small_fan['shards']} shards for {small_fan['actors']} actors × 2 in flight)", "≥ 1×"),
    ]


def describe_machine(machine: dict) -> str:
    """From a results file's `machine` block, e.g. "2 CPU cores, CPU-only torch"."""
    text = f"{machine.get('cpus', '?')} CPU cores"
    if "torch" in machine:  # benchmarks without torch (prepare) say nothing about accelerators
        text += ", CPU-only torch" if machine["torch"].endswith("+cpu") else f", torch {machine['torch']}"
    return text


def table(failed: tuple[str, ...] | list[str] = ()) -> str:
    """`failed`: benchmarks whose last run failed; their (older) results are not shown as current."""
    rows: list[tuple] = []
    machines: set[str] = set()
    for name, render in (("prepare", rows_prepare), ("teacher", rows_teacher), ("packing", rows_packing),
                         ("label", rows_label), ("generate", rows_generate), ("student", rows_student),
                         ("predict", rows_predict), ("gpu", rows_gpu), ("scale", rows_scale)):
        data = load(name)
        if name == "gpu" and (data is None or data.get("dry_run")):
            continue  # needs a GPU, so not part of `make bench`: shown once measured
        if name == "scale" and data is None:
            continue  # `make bench-scale` (tens of minutes), not part of `make bench`: shown once measured
        if data is not None and name not in failed:
            machines.add(describe_machine(data.get("machine") or {}))
        if name in failed:
            rows.append((name, "the last `make bench` run of this benchmark failed (see its output)", "", ""))
            continue
        if data is None:
            rows.append((name, "not run yet (`make bench`)", "", ""))
            continue
        try:
            rows += render(data)
        except (KeyError, TypeError, ValueError) as problem:
            rows.append((name, f"results file unreadable here ({type(problem).__name__}: {problem})", "", ""))
    lines = ["| stage | measurement (anchor) | result | target |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    lines.append("")
    machines = {m for m in machines if not any(o != m and o.startswith(m) for o in machines)}  # most specific
    lines.append(f"Measured by `make bench` (`bench/*.py`) on: {'; '.join(sorted(machines)) or 'no results yet'}. "
                 "Results in `bench/results/*.json` with the machine's load. "
                 + ("The GPU rows: `python -m bench.gpu` on one GPU." if (load("gpu") or {}).get("cases") and
                    not load("gpu").get("dry_run") else
                    "The GPU figures (MFU on an H200) need a GPU: `python -m bench.gpu` measures them, not run yet."))
    return "\n".join(lines)


def update_readme(readme: Path = REPO / "README.md", failed: tuple[str, ...] | list[str] = ()) -> None:
    text = readme.read_text()
    if START not in text or END not in text or text.index(START) > text.index(END):
        sys.exit(f"{readme}: markers {START} ... {END} not found in that order")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    from arena_dist.io import atomic_write_text

    atomic_write_text(readme, f"{head}{START}\n{table(failed)}\n{END}{tail}")


if __name__ == "__main__":
    update_readme()
    print(table())
