"""Student stage on CPU: real bitsandbytes 4-bit / 8-bit QLoRA students distilled from a fixed tiny teacher's
pseudo-labels (scored by the label stage's code into real label stores), real Ray Train for the 2-worker run."""

import json

import numpy as np

import pytest
import torch

from arena_dist.config import load_config
from arena_dist.distill.config import StudentConfig
from arena_dist.distill.tiny import make_distill_fixture
from arena_dist.distill.train import encode_examples, load_examples, train_student
from arena_dist.errors import ConfigError


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    return make_distill_fixture(tmp_path_factory.mktemp("distill"), n_train=160, n_pool=200, n_test=40)


def student_config(fx, run_dir, quantization="4bit", ray=None, loss=None, init_seed=3, **training) -> StudentConfig:
    return StudentConfig.model_validate({
        "run_dir": str(run_dir),
        "model": {"arch": "llama", "init_seed": init_seed, "head": "mlp", "quantization": quantization,
                  "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
        "format": {"template": "llama3", "max_length": 256},
        "data": {"dataset_dir": fx["dataset_dir"], "soft_labels": fx["soft_labels"], "soft_on_hard_rows": True,
                 "eval_fold": 0},
        "loss": loss or {"w_ce": 0.2, "w_kl": 1.0, "w_cos": 0.5},
        "training": {"lr": 3e-3, "epochs": 1, "global_batch": 16, "micro_batch": 8, "log_every": 5, "threads": 1,
                     **training},
        "ray": ray or {"enabled": False},
    })


def pad_id():
    from arena_dist.formatting.tokenizer import load_tokenizer

    return load_tokenizer("local").pad_token_id


def build(cfg):
    from arena_dist.formatting.encode import segment_markers
    from arena_dist.formatting.tokenizer import load_tokenizer
    from arena_dist.models.build import build_model

    markers = segment_markers(load_tokenizer("local"), cfg.format) if cfg.model.segment_embeddings else None
    return build_model(cfg.model, 3, pad_id(), segment_markers=markers)


def eval_sequences(cfg, n=24):
    from arena_dist.formatting.tokenizer import load_tokenizer

    _, eval_examples, _ = load_examples(cfg, 0, 1, 3)
    eval_examples = eval_examples[:n]
    return encode_examples(eval_examples, np.zeros(len(eval_examples), bool), load_tokenizer("local"), cfg.format)[0]


@pytest.mark.slow
@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_qlora_student_trains_only_adapters_and_head(fixture, tmp_path, quantization):
    from arena_dist.models.quant import quantized_layer_counts

    cfg = student_config(fixture, tmp_path / "run", quantization, max_steps=12)
    model = build(cfg)
    layer_kind = "Linear4bit" if quantization == "4bit" else "Linear8bitLt"
    assert quantized_layer_counts(model)[layer_kind] == 14  # 2 layers x (q, k, v, o, gate, up, down)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    summary = train_student(cfg, model=model)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "nothing trained"
    assert all("lora_" in k or ".modules_to_save." in k for k in changed), sorted(changed)[:5]
    assert any("lora_B" in k for k in changed) and any(".modules_to_save." in k for k in changed)
    initial, final = summary["initial_eval"], summary["final_eval"]
    assert final["eval_kl_to_teacher"] < initial["eval_kl_to_teacher"]
    assert summary["finished"] and (tmp_path / "run" / "export" / "adapter_model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.parametrize("random_init_recipe", [False, True], ids=["plain", "segments+embeddings"])
def test_distillation_kl_falls_well_below_start_and_export_round_trips(fixture, tmp_path, random_init_recipe):
    from arena_dist.distill.export import logits_of
    from arena_dist.models.export import load_export
    from arena_dist.models.quant import keep_training_layout

    # The student starts from the teacher's (random) base, like a real student from a pretrained model, and has to
    # reproduce the teacher's outputs through its own LoRA adapters and MLP head.
    cfg = student_config(fixture, tmp_path / "run", "4bit", loss={"w_ce": 0.0, "w_kl": 1.0},
                         init_seed=fixture["teacher_init_seed"], epochs=10, max_steps=90, eval_every=30)
    if random_init_recipe:  # the demo student's recipe: segment embeddings and token embeddings trained in full
        cfg.model.segment_embeddings = True
        cfg.model.lora.modules_to_save = ["embed_tokens"]
    cfg.merge.enabled = True
    cfg.merge.check_rows = 24  # the same rows the test compares below
    model = build(cfg)
    summary = train_student(cfg, model=model)
    initial = summary["initial_eval"]["eval_kl_to_teacher"]
    final = summary["final_eval"]["eval_kl_to_teacher"]
    assert summary["final_eval"]["eval_rows_soft"] > 50
    assert final < 0.7 * initial, summary["eval_history"]

    # Adapter + head saved, base quantised again at load: the reloaded student gives identical logits.
    sequences = eval_sequences(cfg)
    model.eval()
    trained = logits_of(model, sequences, pad_id=pad_id())
    reloaded, tokenizer, meta = load_export(summary["export_dir"], quantization=meta_quant(summary))
    keep_training_layout(reloaded)  # the same bitsandbytes kernels as in training (no CPU bf16 repacking)
    assert meta["quantization"] == "4bit" and meta["lora"] and tokenizer is not None
    np.testing.assert_allclose(logits_of(reloaded, sequences, pad_id=pad_id()), trained, rtol=0, atol=1e-6)

    # The merge reports max |logit difference| merged vs unmerged, recorded in the merged export's metadata.
    merge = summary["merge"]
    assert merge["rows"] > 0 and merge["max_abs_logit_diff"] >= 0 and merge["passed"]
    merged_meta = json.loads((tmp_path / "run" / "export_merged" / "arena_dist.json").read_text())
    assert merged_meta["merge_check"]["max_abs_logit_diff"] == merge["max_abs_logit_diff"]
    merged, _, _ = load_export(summary["merged_export_dir"])
    merged_logits = logits_of(merged, sequences, pad_id=pad_id())
    # the reported number is the real difference (the check rows are the first held-out rows, as here)
    assert np.abs(merged_logits - trained).max() == pytest.approx(merge["max_abs_logit_diff"], abs=1e-5)
    assert merge["max_abs_logit_diff_vs_unmerged_full_precision"] < 1e-3  # the merge itself is exact


def meta_quant(summary):
    return json.loads(open(f"{summary['export_dir']}/arena_dist.json").read())["quantization"]


@pytest.mark.slow
def test_merge_refused_above_the_limit(fixture, tmp_path):
    from arena_dist.distill.export import MergeCheckError, merge_export

    cfg = student_config(fixture, tmp_path / "run", "4bit", max_steps=4)
    summary = train_student(cfg)
    with pytest.raises(MergeCheckError, match="merge refused"):
        merge_export(summary["export_dir"], tmp_path / "merged", eval_sequences(cfg, 8), max_logit_diff=1e-9)
    assert not (tmp_path / "merged").exists()


@pytest.mark.slow
def test_stop_and_resume_matches_an_uninterrupted_run(fixture, tmp_path):
    from safetensors.torch import load_file

    from arena_dist.distill.checkpoint import complete_checkpoints, latest_checkpoint

    full = student_config(fixture, tmp_path / "full", "8bit", max_steps=8, checkpoint_every=4)
    train_student(full)
    cut = student_config(fixture, tmp_path / "cut", "8bit", max_steps=8, checkpoint_every=4, stop_after_steps=6)
    first = train_student(cut)
    assert not first["finished"] and first["step"] == 6
    assert latest_checkpoint(tmp_path / "cut").name == "step_0000006"
    (tmp_path / "cut" / "checkpoints" / "step_0000007").mkdir()  # no COMPLETE marker: must be ignored
    second = train_student(cut.model_copy(update={"training": cut.training.model_copy(
        update={"stop_after_steps": None})}))
    assert second["finished"] and second["resumed_from"].endswith("step_0000006")
    third = train_student(cut.model_copy(update={"training": cut.training.model_copy(
        update={"stop_after_steps": None})}))  # a rerun of a finished run trains nothing
    assert third["resumed_from"].endswith("step_0000008") and third["train_seconds"] < 5
    # training.keep_last (default 2): of 4 and 6 (first run) and 8 (resumed run), 6 and 8 remain; the
    # folder without a marker is not the project's to remove
    assert [p.name for p in complete_checkpoints(tmp_path / "cut")] == ["step_0000006", "step_0000008"]
    assert sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()) == [
        "step_0000006", "step_0000007", "step_0000008"]
    assert [p.name for p in complete_checkpoints(tmp_path / "full")] == ["step_0000004", "step_0000008"]
    a = load_file(str(tmp_path / "full" / "export" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "export" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_two_ray_train_workers(fixture, tmp_path):
    """Through the CLI in a fresh process (as `ray job submit` runs it): Ray Train state from earlier in-process runs
    of this test session cannot leak in."""
    from stage_process import run_stage

    cfg = student_config(fixture, tmp_path / "run", "4bit", max_steps=6,
                         ray={"enabled": True, "num_workers": 2, "cpus_per_worker": 1})
    summary = run_stage("student", cfg, tmp_path, timeout=600)
    assert summary["world_size"] == 2 and summary["finished"]
    # both ranks' rows are counted: every train + pool row of the non-held-out folds
    assert summary["counts"]["used"] == summary["counts"]["train_rows"] + summary["counts"]["pool_rows"]
    assert (tmp_path / "run" / "export" / "arena_dist.json").exists()
    assert (tmp_path / "run" / "resolved_config.yaml").exists()


def test_config_errors_name_the_key(tmp_path):
    base = ["run_dir=x", "data.dataset_dir=d", "model.arch=llama"]
    with pytest.raises(ConfigError, match="model.lora is required"):
        load_config(StudentConfig, None, base + ["model.quantization=4bit"])
    with pytest.raises(ConfigError, match="global_batch"):
        load_config(StudentConfig, None, base + ["training.global_batch=10", "training.micro_batch=4",
                                                 "ray.enabled=false"])
    with pytest.raises(ConfigError, match="ray.num_workers"):
        load_config(StudentConfig, None, base + ["ray.num_workers=9"])
    with pytest.raises(ConfigError, match="loss.temperature"):
        load_config(StudentConfig, None, base + ["loss.temperature=0"])


def test_shipped_configs_validate():
    from pathlib import Path

    from arena_dist.stages import evaluate, predict

    configs = Path(__file__).resolve().parents[2] / "launch" / "configs"
    real = {}
    for name in ("student_gemma2_9b", "student_qwen25_14b", "student_tiny"):
        real[name] = load_config(StudentConfig, configs / f"{name}.yaml")
    for name in ("predict_lmsys", "predict_wsdm", "predict_tiny"):
        load_config(predict.Config, configs / f"{name}.yaml")
    load_config(evaluate.Config, configs / "evaluate_lmsys_synth.yaml")
    for name in ("student_gemma2_9b", "student_qwen25_14b"):
        cfg = real[name]
        assert cfg.model.quantization == "4bit" and cfg.model.lora.r == 64
        assert 2048 <= cfg.format.max_length <= 2500 and cfg.ray.num_workers == 8
