"""`arena-dist synth`: write a synthetic arena benchmark whose Bayes-optimal scores are known exactly.

Outputs under `output_dir`: lmsys/{train,test,test_answers}.csv, wsdm/{train,test,test_answers}.parquet,
pool/{pool,pool_answers}.parquet, pairwise/{pairs,hh}.jsonl, bayes.json (the optimum per file), prepare.yaml (a
ready config for `arena-dist prepare` over these files) and resolved_config.yaml. The generator itself lives in
arena_dist.data.synth.

With `generated_pool` set, the pool is left to `arena-dist generate`: synth writes the pool's prompts instead
(prompts/prompts.jsonl, a `conversations` source, and prompts_prepare.yaml to prepare them), the synthetic world's
chat models to answer them (generators/<name>/, arena_dist.data.synth_generators), and prepare.yaml reads the pool
from `generated_pool`. The test files, and so every quality bar against the Bayes optimum, do not change.
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml
from pydantic import Field

from arena_dist.artefacts import write_artefact
from arena_dist.config import StrictModel, config_dict, save_resolved_config
from arena_dist.data import synth
from arena_dist.io import atomic_write_json, atomic_write_text, claim_output_dir


class PrepareHints(StrictModel):
    """What goes into the generated prepare.yaml."""

    output_dir: str | None = Field(None, description="dataset directory; default <output_dir>/dataset")
    num_shards: int = Field(8, gt=0)
    num_folds: int = Field(5, ge=2)


class Config(synth.SynthSpec):
    output_dir: str = "runs/synth"
    seed: int = 0
    n_train: int = Field(4000, ge=0)
    n_test: int = Field(1000, ge=0)
    n_pool: int = Field(4000, ge=0)
    n_wsdm_train: int = Field(2000, ge=0)
    n_wsdm_test: int = Field(500, ge=0)
    n_pairwise: int = Field(400, ge=0)
    quirks: synth.QuirkParams = Field(default_factory=synth.QuirkParams)
    prepare: PrepareHints = Field(default_factory=PrepareHints)
    # Where `arena-dist generate` will write the pool (its pool.parquet; absolute, or relative to output_dir).
    # None: synth writes the pool itself.
    generated_pool: str | None = None
    progress: bool = True


def prepare_config(config: Config, out: Path) -> dict:
    """The `arena-dist prepare` config over the files written (absolute paths: usable from any directory)."""
    written = [(config.n_train, "lmsys", "lmsys_csv", "lmsys/train.csv", "train"),
               (config.n_wsdm_train, "wsdm", "wsdm_parquet", "wsdm/train.parquet", "train"),
               (config.n_pairwise, "pairs", "pairwise_jsonl", "pairwise/pairs.jsonl", "train"),
               (config.n_pairwise, "hh", "pairwise_jsonl", "pairwise/hh.jsonl", "train"),
               (config.n_pool, "pool", "pool", config.generated_pool or "pool/pool.parquet", "pool")]
    sources = [{"name": name, "kind": kind, "path": str(out / path), "use_as": split}
               for rows, name, kind, path, split in written if rows]
    return {
        "output_dir": config.prepare.output_dir or str(out / "dataset"),
        "num_shards": config.prepare.num_shards,
        "num_folds": config.prepare.num_folds,
        "seed": config.seed,
        "sources": sources,
    }


def prompts_prepare_config(config: Config, out: Path) -> dict:
    """The `arena-dist prepare` config that turns prompts/prompts.jsonl into the dataset `generate` reads."""
    return {"output_dir": str(out / "prompts_dataset"), "num_shards": config.prepare.num_shards,
            "num_folds": config.prepare.num_folds, "seed": config.seed,
            "sources": [{"name": "pool", "kind": "conversations", "path": str(out / "prompts" / "prompts.jsonl")}]}


def rows_by_format(files: dict) -> dict[str, int]:
    """Rows written per competition format (`lmsys` train + test, `wsdm`, `pool`, `pairwise`)."""
    rows: dict[str, int] = {}
    for name, summary in files.items():
        if " " not in name:  # "pool/pool.parquet (2-class)" is the same rows scored another way
            rows[name.split("/")[0]] = rows.get(name.split("/")[0], 0) + summary["rows"]
    return rows


def run(config: Config) -> dict:
    started, wall_started = time.monotonic(), time.time()
    out = claim_output_dir(Path(config.output_dir).resolve(), "output_dir")
    spec = synth.SynthSpec.model_validate({k: getattr(config, k) for k in synth.SynthSpec.model_fields})
    world = synth.build_world(spec.preference)

    lmsys = synth.write_lmsys(out, config.n_train, config.n_test, config.seed, spec, config.quirks,
                              progress=config.progress)
    wsdm = synth.write_wsdm(out, config.n_wsdm_train, config.n_wsdm_test, config.seed, spec)
    files = {**lmsys["files"], **wsdm["files"]}
    generated: dict[str, Path] = {}
    if config.generated_pool is None:
        pool = synth.generate_pool(config.n_pool, config.seed, out / "pool" / "pool.parquet", spec,
                                   progress=config.progress)
        files.update({"pool/pool.parquet": pool["three_class"], "pool/pool.parquet (2-class)": pool["two_class"]})
    else:
        from arena_dist.data.synth_generators import write_generators

        synth.write_prompts(config.n_pool, config.seed, out / "prompts" / "prompts.jsonl", spec,
                            progress=config.progress)
        atomic_write_text(out / "prompts_prepare.yaml",
                          yaml.safe_dump(prompts_prepare_config(config, out), sort_keys=False))
        generated = {"prompts_prepare_config": out / "prompts_prepare.yaml",
                     **{f"generators/{name}": path for name, path in
                        write_generators(out / "generators", spec).items()}}
    if config.n_pairwise:
        files.update(synth.write_pairwise(out, config.n_pairwise, config.seed, spec)["files"])
    else:  # never leave pairwise files of an earlier run that no longer match this config
        for style in ("pairs", "hh"):
            (out / "pairwise" / f"{style}.jsonl").unlink(missing_ok=True)

    headline_file = "lmsys/test.csv" if config.n_test else "lmsys/train.csv"
    headline = files[headline_file]
    bayes = {
        "ln3": synth.LN3,
        "bayes_log_loss": headline.get("log_loss"),  # optimal predictor's log loss on the labels drawn
        "expected_bayes_log_loss": headline["expected_log_loss"],  # mean entropy of the true distributions
        "achievable_gain": synth.LN3 - headline["log_loss"] if "log_loss" in headline else None,
        "bayes_accuracy": headline.get("accuracy"),
        "tie_rate": headline.get("tie_rate"),
        "headline_file": headline_file,
        "wsdm_bayes_accuracy": files["wsdm/test.parquet"].get("accuracy") if config.n_wsdm_test else None,
        "files": files,
        "lmsys_train_valid_rows": lmsys["train_valid_rows"],
        "injected": lmsys["injected"],
        "parameters": config_dict(config),
        "model": {
            "quality_words": dict(zip(synth.QUALITY_WORDS, world.scores.round(6).tolist())),
            "model_skills": dict(zip(synth.MODEL_NAMES, world.skills.round(6).tolist())),
            "strength": "s = scale * mean(quality word scores over all turns) + length_effect * log(words)",
            "three_class": "P(A):P(B):P(tie) = exp(sA+bias) : exp(sB) : tie_strength*exp((sA+bias+sB)/2)",
            "two_class": "P(A) = sigmoid(sA - sB + bias); pairwise chosen/rejected: sigmoid(sA - sB)",
        },
    }
    atomic_write_json(out / "bayes.json", bayes)
    atomic_write_text(out / "prepare.yaml", yaml.safe_dump(prepare_config(config, out), sort_keys=False))
    save_resolved_config(config, out)

    seconds = time.monotonic() - started
    print(f"[synth] wrote {out} in {seconds:.1f} s")
    for name, summary in files.items():
        loss = summary.get("log_loss", summary["expected_log_loss"])
        print(f"[synth]   {name:28s} rows={summary['rows']:>8d}  bayes log loss={loss:.4f}  "
              f"bayes accuracy={summary.get('accuracy', summary['expected_accuracy']):.4f}")
    if bayes["bayes_log_loss"] is not None:
        print(f"[synth] LMSYS Bayes log loss {bayes['bayes_log_loss']:.4f} (expected "
              f"{bayes['expected_bayes_log_loss']:.4f}), ln3 {synth.LN3:.4f}, achievable gain "
              f"{bayes['achievable_gain']:.4f}, tie rate {bayes['tie_rate']:.3f}")
    print(f"[synth] injected quirks in lmsys/train.csv: {bayes['injected']}")
    print(f"[synth] bayes: {out / 'bayes.json'}  prepare config: {out / 'prepare.yaml'}")
    write_artefact(
        out, "synth", config, started=wall_started,
        outputs={"bayes": out / "bayes.json", "prepare_config": out / "prepare.yaml",
                 # `lmsys/train.csv` as `lmsys/train`: the record names the files written without their suffix
                 **{name.rsplit(".", 1)[0]: out / name for name in files if " " not in name},
                 **({"lmsys/test_answers": out / "lmsys" / "test_answers.csv"} if config.n_test else {}),
                 **generated},
        rows={**rows_by_format(files), **({"prompts": config.n_pool} if config.generated_pool else {})},
        metrics={key: bayes[key] for key in ("bayes_log_loss", "bayes_accuracy", "achievable_gain", "tie_rate")},
        headline="bayes_log_loss",
    )
    return {"output_dir": str(out), "seconds": seconds, "bayes_log_loss": bayes["bayes_log_loss"],
            "achievable_gain": bayes["achievable_gain"], "tie_rate": bayes["tie_rate"], "injected": bayes["injected"],
            "bayes_path": str(out / "bayes.json"), "prepare_config": str(out / "prepare.yaml")}
