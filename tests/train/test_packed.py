"""Padding-free packed micro-batches (`training.micro_batch_tokens`, arena_dist.train.packing): the plan, per-row
logits and gradients equal to padded batches for tiny Llama / Qwen2 / Gemma-2, per-row segment embeddings under
LoRA, and a training step whose loss and gradient are the per-row mean of the padded loop on the same rows."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from arena_dist.models.build import build_model  # noqa: E402
from arena_dist.models.config import ModelConfig  # noqa: E402
from arena_dist.train.data import Example, collate, split_targets  # noqa: E402
from arena_dist.train.packing import (  # noqa: E402
    collate_packed,
    imbalance,
    pack_rows,
    packed_logits,
    plan_step,
    prepare_packing,
)

TOL = 1e-5


def tiny(arch: str, attn: str = "eager", **extra) -> ModelConfig:
    extra.setdefault("vocab_size", 256)
    return ModelConfig(arch=arch, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                       intermediate_size=64, attn_implementation=attn, **extra)


def rows(lengths, seed=0, labels=3):
    generator = torch.Generator().manual_seed(seed)
    return [Example(torch.randint(5, 250, (n,), generator=generator).tolist(), i % labels)
            for i, n in enumerate(lengths)]


# ------------------------------------------------------------------------------------------------ the plan
def test_pack_rows_places_every_row_once_within_the_budget():
    lengths = [7, 3, 12, 5, 5, 1, 9, 30, 2, 6]
    packs = pack_rows(lengths, budget=12)
    assert sorted(i for p in packs for i in p) == list(range(len(lengths)))
    assert [7] in packs  # longer than the budget: alone
    for pack in packs:
        assert len(pack) == 1 or sum(lengths[i] for i in pack) <= 12
    assert len(packs) == 1 + -(-sum(n for n in lengths if n <= 12) // 12)  # first-fit decreasing is tight here


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_plan_gives_every_rank_as_many_packs_and_uses_every_row_once(world_size):
    lengths = [40, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3]  # one big row, many small: few packs before splitting
    plan = plan_step(lengths, world_size, budget=40)
    assert len(plan) == world_size
    assert len({len(packs) for packs in plan}) == 1
    used = sorted(i for packs in plan for p in packs for i in p)
    assert used == list(range(len(lengths)))
    for packs in plan:
        assert all(p and (len(p) == 1 or sum(lengths[i] for i in p) <= 40) for p in packs)
    assert plan == plan_step(lengths, world_size, budget=40)  # every rank computes the same plan
    assert imbalance(plan, lengths) >= 1.0


def test_plan_balances_tokens_over_ranks():
    lengths = [10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 10, 9, 8, 7, 6, 5]
    plan = plan_step(lengths, 2, budget=20)
    assert imbalance(plan, lengths) < 1.05


# ------------------------------------------------------------------------------------------------ the forward
CASES = [("llama", "eager"), ("llama", "sdpa"), ("qwen2", "eager"), ("qwen2", "sdpa"), ("gemma2", "eager")]


@pytest.mark.parametrize("arch,attn", CASES)
def test_packed_logits_and_gradients_equal_padded_ones(arch, attn):
    torch.manual_seed(0)
    model = build_model(tiny(arch, attn, head="mlp", head_dropout=0.0), 3, 0)
    prepare_packing(model)
    examples = rows([5, 11, 3, 8])
    labels = torch.tensor([e.label for e in examples])

    inputs, _ = split_targets(collate(examples, 0))
    padded = model(**inputs).logits
    torch.nn.functional.cross_entropy(padded, labels, reduction="sum").backward()
    padded_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    packed_inputs, _ = split_targets(collate_packed(examples))
    packed = packed_logits(model, model, packed_inputs)
    torch.nn.functional.cross_entropy(packed, labels, reduction="sum").backward()

    assert packed.shape == (4, 3)
    assert (packed - padded).abs().max() < TOL
    for name, param in model.named_parameters():
        assert (param.grad - padded_grads[name]).abs().max() < TOL, name


@pytest.mark.parametrize("per_example", [False, True])
def test_gemma2_sliding_window_attention_stays_within_each_row(per_example):
    """A window shorter than the rows: the packed mask combines the window with the row boundaries, over the whole
    square or per example (`prepare_packing`)."""
    from transformers import Gemma2Config, Gemma2ForSequenceClassification

    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8,
                          sliding_window=4, num_labels=2, pad_token_id=0, attn_implementation="eager")
    model = Gemma2ForSequenceClassification(config).eval()
    if per_example:
        assert prepare_packing(model) == "packed_eager"
    examples = rows([9, 6, 12], labels=2)
    padded = model(**split_targets(collate(examples, 0))[0]).logits
    packed = packed_logits(model, model, split_targets(collate_packed(examples))[0])
    assert (packed - padded).abs().max() < TOL


def test_segment_embeddings_are_computed_per_row_under_lora():
    """Row 0 ends inside response A: without per-row segments the next row's first tokens would be read as A."""
    markers = {"a": [201, 202], "b": [203], "reset": [[204]]}
    torch.manual_seed(0)
    cfg = tiny("llama", segment_embeddings=True, segment_gate_std=1.0,
               lora={"r": 4, "alpha": 8, "dropout": 0.0})
    model = build_model(cfg, 2, 0, segment_markers=markers)
    prepare_packing(model)  # through PEFT's wrapper
    examples = [Example([5, 6, 201, 202, 7, 8], 0), Example([9, 10, 203, 11, 204, 12], 1),
                Example([13, 201, 202, 14, 203], 0)]
    padded = model(**split_targets(collate(examples, 0))[0]).logits
    packed = packed_logits(model, model, split_targets(collate_packed(examples))[0])
    assert (packed - padded).abs().max() < TOL


def test_a_model_without_packed_masks_is_refused():
    from arena_dist.errors import ConfigError

    with pytest.raises(ConfigError, match="micro_batch_tokens"):
        prepare_packing(SimpleNamespace(config=SimpleNamespace(model_type="gpt2"), named_modules=lambda: []))


# ------------------------------------------------------------------------------------------------ the loss
def test_distillation_shares_add_up_to_the_batch_loss():
    from arena_dist.train.losses import LossWeights, distillation_loss

    torch.manual_seed(0)
    logits = torch.randn(7, 3)
    labels = torch.tensor([0, 1, -100, 2, -100, 1, 0])
    soft = torch.softmax(torch.randn(7, 3), -1)
    mask = torch.tensor([True, False, True, True, True, False, True])
    weights = LossWeights(w_ce=0.7, w_kl=1.3, w_cos=0.5, temperature=2.0)
    whole, _ = distillation_loss(logits, labels, soft, mask, weights)
    denominators = {"hard": int((labels != -100).sum()), "soft": int(mask.sum())}
    shares = sum(distillation_loss(logits[s], labels[s], soft[s], mask[s], weights, denominators)[0]
                 for s in (slice(0, 1), slice(1, 5), slice(5, 7)))
    assert abs(float(shares - whole)) < 1e-6


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    from arena_dist.data.store import read_records
    from signal_data import make_signal_dataset

    from arena_dist.train.data import Sample

    dataset = make_signal_dataset(tmp_path_factory.mktemp("packed"), rows=24, num_folds=2)
    return [Sample(r) for r in read_records(dataset, "train", 0, 1)][:16]


def one_rank_trainer(samples, micro_batch_tokens, loss=None, eval_samples=()):
    """A one-rank Trainer (replicated weights, `loss` or the teacher's cross-entropy) on `samples`."""
    from arena_dist.formatting.templates import FormatConfig
    from arena_dist.formatting.tokenizer import load_tokenizer
    from arena_dist.train.config import TrainingSettings
    from arena_dist.train.data import Encoder, GlobalOrder
    from arena_dist.train.losses import CrossEntropy
    from arena_dist.train.loop import Trainer
    from arena_dist.train.parallel import ReplicatedParallel

    training = TrainingSettings(global_batch=8, micro_batch=2, micro_batch_tokens=micro_batch_tokens, clip=None,
                                seed=1, schedule="constant", lr=1e-3, eval_micro_batch=3)
    tokenizer = load_tokenizer("local")
    torch.manual_seed(0)
    model = build_model(tiny("llama", vocab_size=None), 2, int(tokenizer.pad_token_id))
    trainer = Trainer.__new__(Trainer)
    trainer.config = SimpleNamespace(training=training)
    trainer.rank, trainer.world_size, trainer.device = 0, 1, torch.device("cpu")
    trainer.tokenizer, trainer.train_samples, trainer.loss = tokenizer, samples, loss or CrossEntropy()
    trainer.order = GlobalOrder(len(samples), training.global_batch, training.seed)
    trainer.encoder = Encoder(tokenizer, FormatConfig(template="llama3", max_length=96, label_mode="2class"),
                              require_label=loss is None)
    trainer.parallel = ReplicatedParallel(model, training, 4, 1, trainer.device)
    trainer.eval_samples, trainer.eval_lengths = list(eval_samples), None
    return trainer


def one_step(samples, micro_batch_tokens, loss=None):
    """The first training step of a one-rank Trainer; returns (loss parts, tokens, stats, the gradient the optimizer
    stepped with)."""
    trainer = one_rank_trainer(samples, micro_batch_tokens, loss)
    model = trainer.parallel.module
    stepped = {}
    trainer.parallel.optimizer.register_step_pre_hook(
        lambda *_: stepped.update({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    parts, tokens, stats = trainer.train_step(0)
    return parts, tokens, stats, stepped


def test_a_packed_step_is_the_padded_step_on_the_same_rows(samples):
    padded_parts, padded_tokens, _, padded_grads = one_step(samples, None)
    packed_parts, packed_tokens, stats, packed_grads = one_step(samples, 150)
    assert stats["micro_batches"] >= 3  # unequal row counts per micro-batch: 1/rows weighting matters
    assert packed_tokens == padded_tokens
    assert abs(packed_parts["loss"] - padded_parts["loss"]) < 1e-6
    assert padded_grads and padded_grads.keys() == packed_grads.keys()
    for name, grad in padded_grads.items():
        assert (packed_grads[name] - grad).abs().max() < TOL, name


# ------------------------------------------------------------------------------------------------ ZeRO-3, 2 ranks
@pytest.mark.slow
def test_zero3_packed_run_on_two_ranks_follows_the_padded_run(tmp_path):
    """DeepSpeed ZeRO-3 on 2 torchrun ranks (the ranks a Ray worker group runs): packed micro-batches, two per rank
    with unequal rows, end the step where the engine is told to, and 3 steps give the padded run's losses."""
    import json

    from stage_process import torchrun
    from teacher_fixtures import make_dataset, tiny_config

    from arena_dist.train.config import TeacherConfig
    from arena_dist.train.launch import make_payload

    make_dataset(tmp_path, rows=64)
    losses = {}
    # micro_batch 1: DeepSpeed's nominal accumulation (4) is not the packed micro-batches per rank (2)
    for name, budget, micro in (("padded", None, 2), ("packed", 250, 1)):
        config = TeacherConfig.model_validate(tiny_config(
            tmp_path / "dataset", tmp_path / "runs", name, data={"max_eval_records": 2},
            training={"max_steps": 3, "epochs": 1, "micro_batch_tokens": budget, "micro_batch": micro, "log_every": 1, "lr": 1e-3}))
        payload = tmp_path / f"{name}.json"
        payload.write_text(json.dumps(make_payload(config, "teacher")))
        done = torchrun(payload, 2)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        lines = [json.loads(line) for line in (config.experiment_dir / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [m for m in lines if "train_loss" in m]
    assert [m["step"] for m in losses["packed"]] == [1, 2, 3]
    assert all(m["micro_batches"] == 2 and 1.0 <= m["rank_imbalance"] < 1.1 for m in losses["packed"])
    for padded, packed in zip(losses["padded"], losses["packed"]):
        assert abs(padded["train_loss"] - packed["train_loss"]) < 1e-5


def test_packed_distillation_step_is_the_per_row_mean_whatever_the_packing(samples):
    """Student rows: some with a soft label only, some with a hard label only, some with both. One pack of the
    whole step is `distillation_loss` on all its rows; smaller packs (unequal row counts) must give the same step."""
    from arena_dist.train.data import Sample
    from arena_dist.train.losses import Distillation, LossWeights

    mixed = []
    for i, sample in enumerate(samples):
        record = dict(sample.record)
        if i % 3 == 0:
            record["label"] = None
        soft = None if i % 3 == 1 else [0.2 + 0.05 * (i % 5), 0.8 - 0.05 * (i % 5)]
        mixed.append(Sample(record, soft))
    loss = Distillation(LossWeights(w_ce=0.5, w_kl=1.0, w_cos=0.3, temperature=2.0))
    whole_parts, _, whole_stats, whole_grads = one_step(mixed, 10_000, loss)
    split_parts, _, split_stats, split_grads = one_step(mixed, 150, loss)
    assert whole_stats["micro_batches"] == 1 and split_stats["micro_batches"] >= 3
    for key in ("loss", "ce", "kl", "cos"):
        assert abs(whole_parts[key] - split_parts[key]) < 1e-6, key
    assert whole_parts["ce"] > 0 and whole_parts["kl"] > 0
    for name, grad in whole_grads.items():
        assert (split_grads[name] - grad).abs().max() < TOL, name


def test_packed_evaluation_gives_the_padded_metrics(samples):
    """Held-out log loss, accuracy and KL to the teacher over packs of unequal row counts = over padded batches."""
    from arena_dist.train.data import Sample

    held_out = [Sample(s.record, [0.1 + 0.05 * i, 0.9 - 0.05 * i] if i % 2 else None) for i, s in
                enumerate(samples[:11])]
    padded = one_rank_trainer(samples, None, eval_samples=held_out)
    packed = one_rank_trainer(samples, 150, eval_samples=held_out)
    assert len(packed.eval_micro_batches()) >= 3 and all(real for _, real in packed.eval_micro_batches())
    assert sorted(i for pack, _ in packed.eval_micro_batches() for i in pack) == list(range(11))
    shapes = []  # what the model was really fed: one packed row per forward, no padding
    packed.parallel.module.register_forward_pre_hook(
        lambda _, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    expected, got = padded.evaluate(), packed.evaluate()
    assert len(shapes) == len(packed.eval_micro_batches()) and all(rows == 1 for rows, _ in shapes)
    assert sum(tokens for _, tokens in shapes) == sum(packed.eval_lengths)
    assert expected.keys() == got.keys() and expected["eval_records"] == got["eval_records"] == 11
    assert expected["eval_kl_to_teacher"] > 0
    for key, value in expected.items():
        assert abs(got[key] - value) < 1e-5, key
