"""A tiny distillation set-up through the real code paths, for the tests:

synthetic LMSYS train/test + pool (`arena-dist synth`) -> prepared dataset (`arena-dist prepare`) -> a fixed tiny
random teacher export (`tiny_fixtures`) -> its soft labels for the train and pool splits, scored with the
label stage's `TeacherScorer` and committed to real label stores (one per split).
"""

from __future__ import annotations

import os
from pathlib import Path


def make_distill_fixture(root: str | os.PathLike, n_train: int = 240, n_pool: int = 240, n_test: int = 60,
                         seed: int = 0, num_folds: int = 4, teacher_head_std: float = 2.0) -> dict:
    """-> {"synth_dir", "dataset_dir", "teacher_export", "teacher_init_seed", "soft_labels": [train, pool store]}.

    The teacher is a random-init tiny Llama whose linear head is scaled up (so its probabilities vary by row); a
    student built with `init_seed=teacher_init_seed` starts from the teacher's base, as a real student starts from
    a pretrained model that already has useful features, and has to learn the teacher's head through its own."""
    import yaml

    from arena_dist.label.scoring import TeacherScorer
    from arena_dist.label.store import LabelStore, input_shards
    from tiny_fixtures import make_teacher_export
    from arena_dist.stages import prepare as prepare_stage
    from arena_dist.stages import synth as synth_stage

    root = Path(root)
    synth_dir = root / "synth"
    synth_stage.run(synth_stage.Config(
        output_dir=str(synth_dir), seed=seed, n_train=n_train, n_test=n_test, n_pool=n_pool, n_wsdm_train=0,
        n_wsdm_test=0, n_pairwise=0, progress=False,
        prepare={"output_dir": str(root / "dataset"), "num_shards": 2, "num_folds": num_folds}))
    prepare_stage.run(prepare_stage.Config.model_validate(yaml.safe_load((synth_dir / "prepare.yaml").read_text())))
    dataset_dir = root / "dataset"
    teacher_seed = seed + 7
    teacher = make_teacher_export(root / "teacher", seed=teacher_seed, head_std=teacher_head_std, max_length=256)
    scorer = TeacherScorer(str(teacher))
    stores = []
    for split in ("train", "pool"):
        store = LabelStore(root / "labels" / split, teacher_id="tiny_teacher", config_hash="fixture")
        shards = input_shards(dataset_dir, split)
        for shard in shards:
            result = scorer.score_shard(str(shard.path), max_tokens=8192)
            store.commit(shard, result["ids"], result["p_ab"], result["p_ba_mapped"], result["p_mean"])
        store.finalize(shards)
        stores.append(str(store.directory))
    return {"synth_dir": str(synth_dir), "dataset_dir": str(dataset_dir), "teacher_export": str(teacher),
            "teacher_init_seed": teacher_seed, "soft_labels": stores}


# Student runs for the stage tests: one config shape, one in-process fit, checkpoint weights compared.
NO_DROPOUT = {"head_dropout": 0.0}


def student_config(fx, run_dir, quantization="4bit", ray=None, loss=None, init_seed=3, model=None,
                   **training) -> "StudentConfig":
    from arena_dist.distill.config import StudentConfig

    return StudentConfig.model_validate({
        "output": {"run_dir": str(run_dir)},
        "model": {"arch": "llama", "init_seed": init_seed, "head": "mlp", "quantization": quantization,
                  "lora": {"r": 8, "alpha": 16, "dropout": 0.0}, **(model or {})},
        "format": {"template": "llama3", "max_length": 256},
        "data": {"dataset_dir": fx["dataset_dir"], "soft_labels": fx["soft_labels"], "soft_on_hard_rows": True,
                 "fold": 0, "num_folds": 4, "swap_augment": "random"},
        "loss": loss or {"w_ce": 0.2, "w_kl": 1.0, "w_cos": 0.5},
        "training": {"lr": 3e-3, "epochs": 1, "global_batch": 16, "micro_batch": 8, "log_every": 5, "threads": 1,
                     "eval_micro_batch": 16, **training},
        "ray": ray or {"enabled": False},
    })


def fit(cfg) -> tuple:
    """One rank in this process (what `ray.enabled: false` runs): (trainer, summary)."""
    from arena_dist.distill.train import StudentRecipe
    from arena_dist.train.loop import Trainer

    trainer = Trainer(StudentRecipe(cfg), 0, 1, {"attempt_id": "test"}, under_ray=False)
    return trainer, trainer.fit()


def trainable(run_dir: Path, step: int) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "checkpoints" / f"step_{step:07d}" / "trainable.safetensors"))


def assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= atol, worst
