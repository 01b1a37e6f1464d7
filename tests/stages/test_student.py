"""Student stage on CPU: real bitsandbytes 4-bit / 8-bit QLoRA students distilled from a fixed tiny teacher's
pseudo-labels (scored by the label stage's code into real label stores), on the shared training loop. In-process runs
(one rank) for what one rank shows. More than one worker: test_student_workers.py."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "distill"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from distill_fixtures import assert_same_weights, fit, make_distill_fixture, student_config  # noqa: E402

from arena_dist.config import load_config  # noqa: E402
from arena_dist.distill.config import StudentConfig  # noqa: E402
from arena_dist.distill.train import load_examples  # noqa: E402
from arena_dist.errors import ConfigError  # noqa: E402
from arena_dist.train.checkpoint import complete_checkpoints  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    return make_distill_fixture(tmp_path_factory.mktemp("distill"), n_train=160, n_pool=200, n_test=40)


def pad_id():
    from arena_dist.formatting.tokenizer import load_tokenizer

    return load_tokenizer("local").pad_token_id


def build(cfg, run_dir):
    """The student model as the trainer builds it (same seeded init)."""
    from arena_dist.distill.train import build_student_model
    from arena_dist.formatting.tokenizer import load_tokenizer

    return build_student_model(cfg.model_copy(update={"output": cfg.output.model_copy(
        update={"run_dir": run_dir}), }), load_tokenizer("local"), 0)


def eval_sequences(cfg, n=24):
    from arena_dist.formatting.tokenizer import load_tokenizer
    from arena_dist.train.data import Encoder

    _, eval_examples, _ = load_examples(cfg, 3)
    encoder = Encoder(load_tokenizer("local"), cfg.format, require_label=False)
    return [e.input_ids for e in encoder.encode(eval_examples[:n], [False] * min(n, len(eval_examples)))]


@pytest.mark.slow
@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_qlora_student_trains_only_adapters_and_head(fixture, tmp_path, quantization):
    from arena_dist.models.quant import quantized_layer_counts

    cfg = student_config(fixture, tmp_path / "run", quantization, max_steps=12)
    before_model = build(cfg, tmp_path / "before")  # the seeded build the trainer makes too
    layer_kind = "Linear4bit" if quantization == "4bit" else "Linear8bitLt"
    assert quantized_layer_counts(before_model)[layer_kind] == 14  # 2 layers x (q, k, v, o, gate, up, down)
    before = {k: v.detach().clone() for k, v in before_model.state_dict().items()}
    trainer, summary = fit(cfg)
    after = trainer.parallel.module.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "nothing trained"
    assert all("lora_" in k or ".modules_to_save." in k for k in changed), sorted(changed)[:5]
    assert any("lora_B" in k for k in changed) and any(".modules_to_save." in k for k in changed)
    initial, final = summary["initial"], summary["final"]
    assert final["eval_kl_to_teacher"] < initial["eval_kl_to_teacher"]
    assert summary["finished"] and (tmp_path / "run" / "export" / "adapter_model.safetensors").exists()
    assert (tmp_path / "run" / "summary.json").is_file() and (tmp_path / "run" / "metrics.jsonl").is_file()


@pytest.mark.slow
def test_distillation_kl_falls_well_below_start_and_export_round_trips(fixture, tmp_path):
    """With the demo student's random-init recipe (segment embeddings, token embeddings trained in full), a superset
    of the plain LoRA + head student (which test_learning distils from pool labels and the QLoRA test trains)."""
    from arena_dist.models.merge import logits_of
    from arena_dist.models.export import load_export
    from arena_dist.models.quant import keep_training_layout

    # The student starts from the teacher's (random) base, like a real student from a pretrained model, and has to
    # reproduce the teacher's outputs through its own LoRA adapters and MLP head.
    cfg = student_config(fixture, tmp_path / "run", "4bit", loss={"w_ce": 0.0, "w_kl": 1.0},
                         init_seed=fixture["teacher_init_seed"], epochs=10, max_steps=90, eval_every=30)
    cfg.model.segment_embeddings = True
    cfg.model.lora.modules_to_save = ["embed_tokens"]
    cfg.merge.enabled = True
    cfg.merge.check_rows = 24  # the same rows the test compares below
    trainer, summary = fit(cfg)
    model = trainer.parallel.module
    initial = summary["initial"]["eval_kl_to_teacher"]
    final = summary["final"]["eval_kl_to_teacher"]
    assert summary["final"]["eval_rows_soft"] > 50
    assert final < 0.7 * initial, (initial, final)

    # Adapter + head saved, base quantised again at load: the reloaded student gives identical logits.
    sequences = eval_sequences(cfg)
    model.eval()
    trained = logits_of(model, sequences, pad_id=pad_id())
    meta = json.loads((Path(summary["export_dir"]) / "arena_dist.json").read_text())
    reloaded, tokenizer, meta = load_export(summary["export_dir"], quantization=meta["quantization"])
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


@pytest.mark.slow
def test_merge_refused_above_the_limit(fixture, tmp_path):
    from arena_dist.models.merge import MergeCheckError, merge_export

    _, summary = fit(student_config(fixture, tmp_path / "run", "4bit", max_steps=4))
    with pytest.raises(MergeCheckError, match="merge refused"):
        merge_export(summary["export_dir"], tmp_path / "merged",
                     eval_sequences(student_config(fixture, tmp_path / "x"), 8), max_logit_diff=1e-9)
    assert not (tmp_path / "merged").exists()


@pytest.mark.slow
def test_stop_and_resume_matches_an_uninterrupted_run(fixture, tmp_path):
    full = student_config(fixture, tmp_path / "full", "8bit", max_steps=8, checkpoint_every=4)
    fit(full)
    cut = student_config(fixture, tmp_path / "cut", "8bit", max_steps=8, checkpoint_every=4, stop_after_steps=6)
    _, first = fit(cut)
    assert not first["finished"] and first["steps"] == 6 and first["export_dir"] is None
    (tmp_path / "cut" / "checkpoints" / "step_0000007").mkdir()  # no COMPLETE marker: must be ignored
    resumed = cut.model_copy(update={"training": cut.training.model_copy(update={"stop_after_steps": None})})
    _, second = fit(resumed)
    assert second["finished"] and second["resumed_from"] == "step_0000006"
    # training.keep_last (default 2): of 4 and 6 (first run) only these two complete ones exist; the folder without
    # a marker is not the project's to remove
    assert [tag for _, tag, _ in complete_checkpoints(tmp_path / "cut" / "checkpoints")] == [
        "step_0000004", "step_0000006"]
    assert (tmp_path / "cut" / "checkpoints" / "step_0000007").is_dir()
    a = load_file(str(tmp_path / "full" / "export" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "export" / "adapter_model.safetensors"))
    assert_same_weights(a, b, atol=0.0)  # same world size: bit for bit


# Equality across world sizes needs the same forward on every row: no dropout anywhere.
def test_config_errors_name_the_key(tmp_path):
    base = ["output.run_dir=x", "data.dataset_dir=d", "model.arch=llama"]
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
    from arena_dist.stages import evaluate, predict

    configs = REPO / "launch" / "configs"
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
