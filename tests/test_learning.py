"""Learning direction at small scale (issue 7): teacher -> pool pseudo-labels -> student, through the real parts.

The real teacher stage (Ray Train, 2 workers, DeepSpeed ZeRO-3 on CPU) learns a small synthetic arena set; the
label stage's scorer writes its swap-averaged soft labels for the pool into a real label store; a 4-bit QLoRA student
is distilled from those pool labels ONLY (no hard labels: `use_train_split: false`, `w_ce: 0`). Both are scored on
the same held-out fold against the drawn labels. The demo shows the full-scale numbers; this guards the direction:
the student beats the uniform guess by a clear margin and lands close to its teacher.

The small set makes ties rare (tie_strength 0.3) and has no position bias, so a few hundred steps reach a clear
margin over uniform that swap-averaged pool labels can carry (swap-TTA cancels position bias by construction).
"""

import json
import math

import pytest
import yaml
from stage_process import run_stage

LN3 = math.log(3)
MARGIN = 0.08  # nats below uniform that teacher and student must both reach on held-out rows
CLOSE = 0.03  # the student's held-out log loss may exceed the teacher's by at most this
# The demo's recipe for random-init models (launch/configs/demo/*.yaml): segment embeddings go through ZeRO-3, the
# export, the label scorer and the 4-bit student here.
RANDOM_INIT_RECIPE = {"initializer_range": 0.125, "segment_embeddings": True, "segment_gate_std": 1.0}


def make_dataset(root):
    from arena_dist.stages import prepare as prepare_stage
    from arena_dist.stages import synth as synth_stage

    synth_stage.run(synth_stage.Config.model_validate({
        "output_dir": str(root / "synth"), "seed": 3, "n_train": 1600, "n_test": 50, "n_pool": 1600,
        "n_wsdm_train": 0, "n_wsdm_test": 0, "n_pairwise": 0, "progress": False, "multi_turn_share": 0.0,
        "preference": {"tie_strength": 0.3, "position_bias": 0.0},
        "text": {"response_min_words": 6, "response_max_words": 16, "prompt_min_words": 4, "prompt_max_words": 10,
                 "quality_position_spread": 0.5},
        "prepare": {"output_dir": str(root / "dataset"), "num_shards": 2, "num_folds": 4},
    }))
    prepared = yaml.safe_load((root / "synth" / "prepare.yaml").read_text())
    prepare_stage.run(prepare_stage.Config.model_validate(prepared))
    return root / "dataset"


def train_teacher(root, dataset):
    from arena_dist.stages import teacher

    config = teacher.Config.model_validate({
        "data": {"dataset_dir": str(dataset), "fold": 0, "num_folds": 4, "swap_augment": "both"},
        "model": {"arch": "llama", "head": "mlp", "head_dropout": 0.0, **RANDOM_INIT_RECIPE},
        "format": {"template": "llama3", "max_length": 128},
        "training": {"lr": 3e-3, "weight_decay": 0.01, "epochs": 2, "global_batch": 16, "micro_batch": 8,
                     "warmup_steps": 10, "log_every": 50,
                     "ds_overrides": {"zero_optimization": {"stage3_param_persistence_threshold": 0}}},
        "ray": {"num_workers": 2, "cpus_per_worker": 1, "max_failures": 0, "storage_path": str(root / "ray")},
        "output": {"run_name": "teacher", "run_dir": str(root / "teacher")},
    })
    return run_stage("teacher", config, root)  # a fresh process, as a Ray job runs it


def label_pool(root, dataset, export):
    """The label stage's own scorer and store (in-process: the stage's Ray actor path has its own tests)."""
    from arena_dist.label.scoring import TeacherScorer
    from arena_dist.label.store import LabelStore, input_shards

    scorer = TeacherScorer(str(export))
    store = LabelStore(root / "labels" / "teacher", teacher_id="teacher", config_hash="learning-test")
    shards = input_shards(dataset, "pool")
    for shard in shards:
        result = scorer.score_shard(str(shard.path), max_tokens=8192)
        store.commit(shard, result["ids"], result["p_ab"], result["p_ba_mapped"], result["p_mean"])
    store.finalize(shards)
    return store.directory


def train_student(root, dataset, labels):
    from arena_dist.stages import student

    config = student.Config.model_validate({
        "output": {"run_dir": str(root / "student")},
        "model": {"arch": "llama", "head": "mlp", "head_dropout": 0.0, "quantization": "4bit", **RANDOM_INIT_RECIPE,
                  "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "modules_to_save": ["embed_tokens"]}},
        "format": {"template": "llama3", "max_length": 128},
        "data": {"dataset_dir": str(dataset), "soft_labels": str(labels), "use_train_split": False,
                 "use_pool": True, "fold": 0, "num_folds": 4, "swap_augment": "random"},
        "loss": {"w_ce": 0.0, "w_kl": 1.0, "w_cos": 0.0},
        "training": {"lr": 3e-3, "epochs": 1, "global_batch": 16, "micro_batch": 8, "log_every": 25, "threads": 1},
        "ray": {"enabled": False},
    })
    return student.run(config)  # ray.enabled false: this process


@pytest.mark.slow
def test_student_from_pool_pseudo_labels_only_beats_uniform_and_stays_close_to_teacher(tmp_path):
    dataset = make_dataset(tmp_path)
    teacher_summary = train_teacher(tmp_path, dataset)
    teacher_ll = teacher_summary["final"]["eval_log_loss"]
    labels = label_pool(tmp_path, dataset, teacher_summary["export_dir"])
    student_summary = train_student(tmp_path, dataset, labels)
    student_ll = student_summary["final"]["eval_log_loss"]
    record = {"teacher_eval_log_loss": teacher_ll, "student_eval_log_loss": student_ll, "uniform": LN3,
              "student_initial_eval_log_loss": student_summary["initial"]["eval_log_loss"]}
    print(json.dumps(record))

    assert teacher_ll < LN3 - MARGIN, record  # the teacher learned something a uniform guess does not know
    assert student_ll < LN3 - MARGIN, record  # ... and it reached the student through the pool labels alone
    assert student_ll < teacher_ll + CLOSE, record
    assert student_ll < student_summary["initial"]["eval_log_loss"] - MARGIN / 2, record
