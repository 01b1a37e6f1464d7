"""Scale run of the data and label layers: a large pool through prepare, label, finalize and an ensemble merge, with
the peak memory of each step at N rows and at N/10 (flat: the ratio should stay near 1, not 10), then the cluster's
fan-out simulated on the same rows.

    python -m bench.scale                  # 1,000,000 and 100,000 rows: tens of minutes on 2 cores (`make bench-scale`)
    python -m bench.scale --rows 100000 --shard-rows 150   # 100,000 and 10,000 rows: a few minutes
    python -m bench.scale --prepare-only   # prepare alone again (after a change to it), into the results file

For each size (N and N/10):
1. a synthetic pool of N rows (a `pool` source) is prepared (`build_dataset`, as `arena-dist prepare` does) into
   shards of about `--shard-rows` rows (the shard count grows with N, as it would for a real pool: a fixed shard size
   keeps what one result costs the driver fixed). N/10 must still have at least as many shards as the fan-out keeps
   in flight (actors x 2): with fewer, the small run never fills the pipeline, holds fewer results at once, and the
   memory ratio measures that instead of the growth with N (4000-row shards gave 25 shards for 64 slots: 1.16x);
2. label: a tiny random teacher on 2 actors through the real driver, one actor SIGKILLed midway (at half the shards
   dispatched); the store is finalized, which proves every id labelled exactly once;
3. fan-out: the same shards through the same driver with a scorer that does no model work (`NoModelScorer`: fixed
   probabilities after a seeded random delay of up to `--sim-delay-ms`), `--sim-actors` actors with fractional CPUs,
   `--sim-kills` of them SIGKILLed at random moments (seeded dispatch numbers): every id exactly once again, and the
   driver's commit rate: rows/s over the run, and rows per CPU-second of the driver (the rate the driver could
   sustain if it were the bottleneck: its ceiling);
4. the two stores merged as an ensemble (`merge_label_stores`, streaming shard by shard).

Every step runs in a fresh child process that reports its own peak RSS (VmHWM, see `bench.prepare.vm_hwm_kib`).
The rate a real labelling run needs is worked out from the planning figures of docs/label_estimate.md (1M rows x 2
orders, a 70B teacher on 32 A100s at 40 % MFU) and reported next to the driver's rates.

Writes bench/results/scale.json (with the machine's load); `python -m bench.readme_table` renders its rows.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fixtures"))  # the tiny teacher export

for _key, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                     "RAY_USAGE_STATS_ENABLED": "0", "DS_ACCELERATOR": "cpu"}.items():
    os.environ.setdefault(_key, _value)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "scale.json"
# Small enough that 2M sequences score in minutes on 2 CPU cores; the driver's work per row is the same as for a 70B
# teacher's (one id and three probability vectors per row come back).
TINY_TEACHER = dict(hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=32)
TEACHER_MAX_LENGTH = 128
# docs/label_estimate.md, "Paper estimate": the run a real 32-GPU labelling job is planned as.
PLANNED_RUN = {"rows": 1_000_000, "orders": 2, "flops_per_teacher": 7.4e20, "gpus": 32,
               "gpu_peak_flops": 312e12, "mfu": 0.40, "source": "docs/label_estimate.md (4 nodes of 8xA100, 40 % MFU)"}
TARGET_RSS_RATIO = 1.1
RESULT_PREFIX = "[bench.scale result] "  # a child step's result line on its stdout


def planned_rate() -> dict:
    """Rows/s (each row in both orders) a 32-GPU run must sustain to finish in its planned wall time."""
    run = PLANNED_RUN
    seconds = run["flops_per_teacher"] / (run["gpus"] * run["gpu_peak_flops"] * run["mfu"])
    return {**run, "planned_hours": round(seconds / 3600, 2), "rows_per_s_needed": round(run["rows"] / seconds, 2)}


def machine_info() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


# ------------------------------------------------------------------------------------------------- the no-model scorer
class NoModelScorer:
    """A `ShardScorer` (arena_dist.label.driver) that does no model work: it reads the shard's ids and returns fixed
    probabilities after a short random delay, seeded per shard (the same delays on every run)."""

    P_AB = (0.45, 0.35, 0.20)

    def __init__(self, seed: int, max_delay_s: float):
        self.seed, self.max_delay_s = seed, max_delay_s

    def info(self) -> dict:
        return {"pid": os.getpid()}

    def score_shard(self, path: str, max_tokens: int, max_rows: int | None = None, swap_tta: bool = True) -> dict:
        import numpy as np
        import pyarrow.parquet as pq

        from arena_dist.io import sha256_file

        started, cpu_started = time.perf_counter(), time.process_time()
        ids = pq.read_table(path, columns=["id"]).column("id").to_pylist()
        time.sleep(random.Random(f"{self.seed}:{Path(path).name}").uniform(0.0, self.max_delay_s))
        p_ab = np.tile(np.array(self.P_AB), (len(ids), 1))
        p_ba = p_ab[:, [1, 0, 2]]
        return {"path": path, "input_sha256": sha256_file(path), "ids": ids, "p_ab": p_ab, "p_ba_mapped": p_ba,
                "p_mean": (p_ab + p_ba) / 2,
                "stats": {"rows": len(ids), "batches": 0, "real_tokens": 0, "padded_tokens": 0, "fp32_rows": 0},
                "seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu_started,
                "pid": os.getpid(), "name": Path(path).name}


# ------------------------------------------------------------------------------------------------------ child steps
def peak_rss_mib() -> float:
    from bench.prepare import vm_hwm_kib

    return round(vm_hwm_kib() / 1024, 1)


def child_prepare(a: dict) -> dict:
    import contextlib
    import io

    from arena_dist.data.sources import SourceConfig
    from arena_dist.data.store import build_dataset

    started, cpu = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        manifest = build_dataset([SourceConfig(name="pool", kind="pool", path=Path(a["pool"]))], a["dataset"],
                                 num_shards=a["shards"], num_folds=5)
    seconds = time.perf_counter() - started
    rows = manifest["splits"]["pool"]["rows"]
    return {"rows": rows, "shards": a["shards"], "seconds": round(seconds, 2),
            "cpu_s": round(time.process_time() - cpu, 2), "rows_per_s": round(rows / seconds, 1)}


def child_label(a: dict) -> dict:
    from arena_dist.label.driver import ActorSettings, ScorerSpec, label_shards
    from arena_dist.label.store import LabelStore, input_shards
    from arena_dist.ray_local import connect_ray

    connect_ray(a["address"], log_to_driver=False)
    shards = input_shards(a["dataset"], "pool")
    store = LabelStore(a["store"], a["teacher_id"], "scale")
    settings = ActorSettings(num_actors=a["actors"], cpus_per_actor=a["cpus_per_actor"], threads_per_actor=1,
                             max_restarts=a["max_restarts"], max_shard_attempts=a["max_restarts"] + 2)
    scorer = ScorerSpec(NoModelScorer, (a["seed"], a["max_delay_s"])) if a["no_model"] else None
    rng = random.Random(a["seed"])
    kill_at = set(a["kill_at_dispatch"])
    slots, kills = {}, []
    dispatches, due = [0], [0]

    def on_dispatch(slot, shard) -> None:
        slots[slot.index] = slot
        dispatches[0] += 1
        due[0] += dispatches[0] in kill_at
        # A loaded actor (it answered with its pid and has not been killed since): one kill, one failure expected.
        # None yet (the only ready one was just killed, the driver does not know yet): at a later dispatch.
        live = sorted((s for s in slots.values() if s.ready and not s.dead and s.pid not in {k["pid"] for k in kills}),
                      key=lambda s: s.index)
        if not due[0] or not live:
            return
        due[0] -= 1
        victim = rng.choice(live)
        os.kill(victim.pid, signal.SIGKILL)
        kills.append({"actor": victim.index, "pid": victim.pid, "at_dispatch": dispatches[0],
                      "shards_in_flight": len(victim.inflight)})

    started, cpu = time.perf_counter(), time.process_time()
    summary = label_shards(a["teacher_id"], a["export"], shards, store, settings, max_tokens=a["max_tokens"],
                           on_dispatch=on_dispatch, scorer=scorer)
    driver_cpu = time.process_time() - cpu
    import ray

    ray.shutdown()
    rows = summary["rows_scored"]
    return {
        "actors": a["actors"], "cpus_per_actor": a["cpus_per_actor"], "no_model": a["no_model"],
        "shards": len(shards), "rows_scored": rows, "kills": kills, "actor_failures": summary["actor_failures"],
        "failures_per_kill": round(summary["actor_failures"] / len(kills), 2) if kills else None,
        "pings_while_restarting": summary["pings_while_restarting"], "retries": summary["retries"],
        "seconds": round(time.perf_counter() - started, 2), "scoring_seconds": summary.get("scoring_seconds"),
        "rows_per_s": summary.get("rows_per_s"), "driver_cpu_s": round(driver_cpu, 2),
        # What the driver could commit if it were the bottleneck: rows per second of its own CPU time.
        "rows_per_driver_cpu_s": round(rows / driver_cpu, 1) if driver_cpu > 0 else None,
        "driver_cpu_share": (round(driver_cpu / summary["scoring_seconds"], 3) if summary.get("scoring_seconds")
                             else None),
    }


def child_finalize(a: dict) -> dict:
    from arena_dist.label.store import LabelStore, input_shards

    shards = input_shards(a["dataset"], "pool")
    started = time.perf_counter()
    manifest = LabelStore(a["store"], a["teacher_id"], "scale").finalize(
        shards, {"dataset_dir": a["dataset"], "split": "pool", "label_mode": "3class", "num_labels": 3})
    expected = sum(shard.rows for shard in shards)
    if manifest["rows"] != expected:
        raise AssertionError(f"{a['store']}: {manifest['rows']} rows labelled, the input has {expected}")
    return {"rows": manifest["rows"], "exactly_once": True, "seconds": round(time.perf_counter() - started, 2)}


def child_merge(a: dict) -> dict:
    import contextlib
    import io

    from arena_dist.label.ensemble import merge_label_stores

    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        manifest = merge_label_stores(a["stores"], a["out"], ensemble_id="scale-ensemble")
    return {"rows": manifest["rows"], "seconds": round(time.perf_counter() - started, 2)}


CHILDREN = {"prepare": child_prepare, "label": child_label, "finalize": child_finalize, "merge": child_merge}


def run_child(step: str, arguments: dict, env: dict | None = None) -> dict:
    """One step in a fresh process; its result with its own peak RSS."""
    load = os.getloadavg()
    done = subprocess.run([sys.executable, "-m", "bench.scale", "--child", step, json.dumps(arguments)],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise RuntimeError(f"bench.scale step {step} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    # The step's progress printer may still write a line after the result: find the result by its prefix.
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        raise RuntimeError(f"bench.scale step {step}: no result line; its output ends:\n{done.stdout[-2000:]}\n"
                           f"{done.stderr[-2000:]}")
    result = json.loads(lines[-1][len(RESULT_PREFIX):])
    result["load_average_before"] = [round(x, 2) for x in load]
    print(f"[bench.scale]   {step}: {json.dumps(result)}", flush=True)
    return result


# ----------------------------------------------------------------------------------------------------------- driver
def shard_count(rows: int, shard_rows: int) -> int:
    return max(8, math.ceil(rows / shard_rows))


def one_size(rows: int, work: Path, export: Path, head, args) -> dict:
    from arena_dist.data.synth import generate_pool

    directory = work / f"rows-{rows}"
    pool = directory / "pool" / "pool.parquet"
    print(f"[bench.scale] {rows:,} rows", flush=True)
    started = time.perf_counter()
    generate_pool(rows, args.seed, pool, progress=False)
    shards = shard_count(rows, args.shard_rows)
    out = {"rows": rows, "synth_seconds": round(time.perf_counter() - started, 1)}
    dataset = str(directory / "dataset")
    out["prepare"] = run_child("prepare", {"pool": str(pool), "dataset": dataset, "shards": shards})
    env = head.client_env()
    common = {"dataset": dataset, "export": str(export), "address": head.address, "seed": args.seed,
              "max_tokens": args.max_tokens, "max_delay_s": args.sim_delay_ms / 1000}
    stores = {"teacher": str(directory / "labels" / "tiny"), "no_model": str(directory / "labels" / "no-model")}
    out["label"] = run_child("label", {**common, "store": stores["teacher"], "teacher_id": "tiny", "actors": 2,
                                       "cpus_per_actor": 1.0, "max_restarts": 3, "no_model": False,
                                       "kill_at_dispatch": [shards // 2]}, env)
    out["label_finalize"] = run_child("finalize", {"dataset": dataset, "store": stores["teacher"],
                                                   "teacher_id": "tiny"})
    kill_rng = random.Random(args.seed + rows)
    kill_at = sorted(kill_rng.sample(range(max(2, shards // 10), max(3, shards * 8 // 10)),
                                     min(args.sim_kills, max(1, shards * 7 // 10 - 1))))
    out["fan_out"] = run_child("label", {**common, "store": stores["no_model"], "teacher_id": "no-model",
                                         "actors": args.sim_actors, "cpus_per_actor": round(1.5 / args.sim_actors, 4),
                                         "max_restarts": 4, "no_model": True, "kill_at_dispatch": kill_at}, env)
    out["fan_out_finalize"] = run_child("finalize", {"dataset": dataset, "store": stores["no_model"],
                                                     "teacher_id": "no-model"})
    out["merge"] = run_child("merge", {"stores": [stores["teacher"], stores["no_model"]],
                                       "out": str(directory / "labels" / "ensemble")})
    for step in ("label_finalize", "fan_out_finalize", "merge"):
        if out[step]["rows"] != out["prepare"]["rows"]:
            raise AssertionError(f"{step}: {out[step]['rows']} rows, prepared {out['prepare']['rows']}")
    shutil.rmtree(directory, ignore_errors=True)
    return out


def prepare_size(rows: int, work: Path, args) -> dict:
    from arena_dist.data.synth import generate_pool

    pool = work / f"pool-{rows}" / "pool.parquet"
    generate_pool(rows, args.seed, pool, progress=False)
    shards = shard_count(rows, args.shard_rows)
    result = run_child("prepare", {"pool": str(pool), "dataset": str(work / f"dataset-{rows}"), "shards": shards})
    shutil.rmtree(pool.parent, ignore_errors=True)
    shutil.rmtree(work / f"dataset-{rows}", ignore_errors=True)
    return result


def remeasure_prepare(args) -> dict:
    """Only the prepare step at N/10 and N (after a change to prepare): its entries in `--out` are replaced and the
    rerun is recorded with its own load, everything else is kept."""
    from arena_dist.io import atomic_write_json

    report = json.loads(args.out.read_text())
    if report["large"]["rows"] != args.rows:
        raise SystemExit(f"{args.out} holds a {report['large']['rows']:,}-row run, not {args.rows:,}")
    work = Path(tempfile.mkdtemp(prefix="bench-scale-prepare-"))
    load = [round(x, 2) for x in os.getloadavg()]
    try:
        small, large = (prepare_size(n, work, args) for n in (args.rows // 10, args.rows))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["small"]["prepare"], report["large"]["prepare"] = small, large
    report["peak_rss_ratio_large_vs_small"]["prepare"] = round(large["peak_rss_mib"] / small["peak_rss_mib"], 3)
    report["prepare_remeasured"] = {"load_average_at_start": load,
                                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}
    atomic_write_json(args.out, report)
    print(f"[bench.scale] prepare remeasured: {report['peak_rss_ratio_large_vs_small']['prepare']}x -> {args.out}")
    return report


def ratios(small: dict, large: dict) -> dict:
    """Peak RSS at N over N/10, per step."""
    steps = {"prepare": "prepare", "label_driver": "label", "label_finalize": "label_finalize",
             "fan_out_driver": "fan_out", "fan_out_finalize": "fan_out_finalize", "merge": "merge"}
    return {name: round(large[step]["peak_rss_mib"] / small[step]["peak_rss_mib"], 3) for name, step in steps.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="N; the same is run at N/10 for the ratios")
    parser.add_argument("--shard-rows", type=int, default=1000, help="rows per prepared shard (at least 8 shards)")
    parser.add_argument("--sim-actors", type=int, default=32)
    parser.add_argument("--sim-kills", type=int, default=4)
    parser.add_argument("--sim-delay-ms", type=float, default=50.0, help="the no-model scorer's delay, at most")
    parser.add_argument("--max-tokens", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--prepare-only", action="store_true",
                        help="measure prepare alone at N and N/10 and replace its figures in --out (kept otherwise)")
    parser.add_argument("--child", nargs=2, metavar=("STEP", "JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = CHILDREN[args.child[0]](json.loads(args.child[1]))
        print(RESULT_PREFIX + json.dumps({**result, "peak_rss_mib": peak_rss_mib()}), flush=True)
        return result
    if args.rows < 100:
        parser.error("--rows must be at least 100 (N/10 must still fill a few shards)")
    from arena_dist.label.driver import ActorSettings

    slots = args.sim_actors * ActorSettings.inflight_per_actor
    if not args.prepare_only and shard_count(args.rows // 10, args.shard_rows) < slots:
        parser.error(f"--shard-rows {args.shard_rows}: N/10 = {args.rows // 10:,} rows make "
                     f"{shard_count(args.rows // 10, args.shard_rows)} shards, fewer than the fan-out's {slots} "
                     "in-flight slots (--sim-actors x 2), so its memory ratio would not compare like with like")

    from arena_dist.io import atomic_write_json

    if args.prepare_only:
        return remeasure_prepare(args)
    from arena_dist.ray_local import LocalRayHead
    from tiny_fixtures import make_teacher_export

    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    report = {"benchmark": "scale", "machine": machine_info(), "shard_rows": args.shard_rows,
              "teacher": {**TINY_TEACHER, "max_length": TEACHER_MAX_LENGTH}, "planned_run": planned_rate()}
    head = LocalRayHead(num_cpus=2, dashboard=False).start()
    try:
        export = make_teacher_export(work / "teacher", max_length=TEACHER_MAX_LENGTH, **TINY_TEACHER)
        small, large = (one_size(n, work, export, head, args) for n in (args.rows // 10, args.rows))
        report["small"], report["large"] = small, large
        report["peak_rss_ratio_large_vs_small"] = ratios(small, large)
        report["target_rss_ratio"] = TARGET_RSS_RATIO
        fan_out = large["fan_out"]
        needed = report["planned_run"]["rows_per_s_needed"]
        report["fan_out_vs_needed"] = {
            "rows_per_s": fan_out["rows_per_s"], "rows_per_driver_cpu_s": fan_out["rows_per_driver_cpu_s"],
            "rows_per_s_needed": needed, "headroom": round(fan_out["rows_per_s"] / needed, 1),
            "headroom_driver_cpu": round(fan_out["rows_per_driver_cpu_s"] / needed, 1),
        }
        report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        head.stop()
        shutil.rmtree(work, ignore_errors=True)
    atomic_write_json(args.out, report)
    print(json.dumps({k: report[k] for k in ("peak_rss_ratio_large_vs_small", "fan_out_vs_needed")}, indent=2))
    print(f"[bench.scale] wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
