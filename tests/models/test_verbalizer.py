"""`model.head: verbalizer` on hub-layout checkpoints of each family (tests/hub_checkpoints.py): at step 0 the class
logits are the causal LM's next-token logits at the answer ids; the export round trip (full and LoRA) through the
label and predict loaders; the causal-LM export after training; a 4-bit student build."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hub_checkpoints import build_checkpoint, build_tokenizer  # noqa: E402

from arena_dist.errors import ConfigError  # noqa: E402
from arena_dist.formatting.templates import FormatConfig  # noqa: E402
from arena_dist.models.config import ModelConfig  # noqa: E402

TEMPLATE = {"llama": "llama3", "qwen2": "chatml", "gemma2": "gemma2"}
# Gemma-2's real cap (30) barely bends the tiny model's logits (|logit| ~ 0.1); this one makes a missing cap obvious.
GEMMA_SOFTCAP = 0.1


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    import json

    root = tmp_path_factory.mktemp("hub")
    paths = {family: build_checkpoint(root, family, "causal_lm") for family in TEMPLATE}
    config = json.loads((paths["gemma2"] / "config.json").read_text())
    (paths["gemma2"] / "config.json").write_text(json.dumps({**config, "final_logit_softcapping": GEMMA_SOFTCAP}))
    return paths


def records(n: int = 4):
    """Rows of different lengths, so a batch is right-padded."""
    return [{"id": f"r{i}", "source": "t", "prompt": ["which is the tie " * (i + 1)],
             "response_a": ["excellent answer " * (2 * i + 1)], "response_b": ["awful " * (3 - i % 3)],
             "model_a": None, "model_b": None, "language": "English", "label": i % 3, "fold": 0} for i in range(n)]


def batch(tokenizer, fmt):
    from arena_dist.formatting.encode import encode_records
    from arena_dist.label.batching import pad_right

    ids, mask = pad_right([row.input_ids for row in encode_records(records(), tokenizer, fmt)],
                          tokenizer.pad_token_id)
    assert len({sum(m) for m in mask}) > 1  # padding included
    return torch.tensor(ids), torch.tensor(mask)


def causal_answer_logits(path, ids, mask, answer_ids):
    """The full causal LM's next-token logits at the last real token, at the answer ids."""
    from transformers import AutoModelForCausalLM

    causal = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    with torch.no_grad():
        logits = causal(input_ids=ids, attention_mask=mask).logits
    return logits[torch.arange(len(ids)), mask.sum(1) - 1][:, answer_ids]


def classifier_logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits.float()


def setup(hub, family, **model):
    from arena_dist.formatting.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(hub[family]))
    fmt = FormatConfig(template=TEMPLATE[family], max_length=128)
    return tokenizer, fmt, ModelConfig(name_or_path=str(hub[family]), head="verbalizer", **model)


@pytest.mark.parametrize("family", sorted(TEMPLATE))
def test_step0_logits_are_the_causal_lms_next_token_logits(hub, family):
    from arena_dist.models.build import build_classifier
    from arena_dist.models.verbalizer import VerbalizerHead, answer_token_ids

    tokenizer, fmt, cfg = setup(hub, family)
    answer_ids = answer_token_ids(tokenizer, "3class")
    assert answer_ids == [tokenizer.convert_tokens_to_ids(w) for w in ("A", "B", "tie")]
    model = build_classifier(cfg, tokenizer, fmt).eval()
    assert isinstance(model.score, VerbalizerHead) and model.score.bias is None
    assert model.score.softcap == (GEMMA_SOFTCAP if family == "gemma2" else None)
    ids, mask = batch(tokenizer, fmt)
    got = classifier_logits(model, ids, mask)
    want = causal_answer_logits(hub[family], ids, mask, answer_ids)
    assert got.shape == (4, 3)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    if family == "gemma2":  # the cap matters here: without it the logits would be far off
        model.score.softcap = None
        assert (classifier_logits(model, ids, mask) - want).abs().max() > 1e-2


def family_tokenizer(family: str, answer_words: bool = True):
    from arena_dist.formatting.tokenizer import pad_token_for

    tokenizer = build_tokenizer(family, answer_words=answer_words)
    tokenizer.pad_token = pad_token_for(tokenizer)
    return tokenizer


def test_refuses_an_answer_word_that_is_not_one_token(hub, tmp_path):
    from arena_dist.models.build import build_classifier

    tokenizer = family_tokenizer("llama", answer_words=False)  # "tie" is two tokens here
    tokenizer.name_or_path = "split-tie-tokenizer"
    _, fmt, cfg = setup(hub, "llama")
    with pytest.raises(ConfigError, match="'tie' is 2 tokens in tokenizer 'split-tie-tokenizer'"):
        build_classifier(cfg, tokenizer, fmt)
    # 2-class mode only needs A and B
    two = build_classifier(cfg, tokenizer, fmt.model_copy(update={"label_mode": "2class"}))
    assert two.score.weight.shape[0] == 2
    with pytest.raises(ValueError, match="verbalizer needs model.name_or_path"):
        ModelConfig(arch="llama", head="verbalizer")
    classifier = build_checkpoint(tmp_path, "llama", "classifier")  # no LM head to read the rows from
    with pytest.raises(ConfigError, match="lm_head.weight"):
        build_classifier(cfg.model_copy(update={"name_or_path": str(classifier)}), family_tokenizer("llama"), fmt)
    from arena_dist.models.verbalizer import output_embedding_rows

    with pytest.raises(ConfigError, match="no model.safetensors"):
        output_embedding_rows(str(tmp_path), classifier_config(classifier), [1])


def classifier_config(path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(path))


def train_steps(model, ids, mask, steps: int = 3):
    """A few real optimizer steps on the trainable parameters (the head among them)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    labels = torch.tensor([0, 1, 2, 0])
    model.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(input_ids=ids, attention_mask=mask).logits, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


@pytest.mark.parametrize("family,lora", [("gemma2", False), ("llama", True)])
def test_export_loads_for_label_and_predict_and_writes_back_a_causal_lm(hub, tmp_path, family, lora, ship_code):
    from arena_dist.label.scoring import TeacherScorer, score_records
    from arena_dist.models.build import build_classifier
    from arena_dist.models.export import save_export
    from arena_dist.models.verbalizer import answer_token_ids, export_causal_lm
    from arena_dist.predict.infer import load_model, score

    tokenizer, fmt, cfg = setup(hub, family, lora={"r": 4, "alpha": 8, "dropout": 0.0} if lora else None)
    model = build_classifier(cfg, tokenizer, fmt)
    ids, mask = batch(tokenizer, fmt)
    start = classifier_logits(model, ids, mask)
    train_steps(model, ids, mask)
    trained = classifier_logits(model, ids, mask)
    assert (trained - start).abs().max() > 1e-2  # the head (and body / adapter) changed
    meta = {"label_mode": "3class", "template": fmt.template, "max_length": fmt.max_length,
            "format": fmt.model_dump()}
    export = save_export(model, tokenizer, tmp_path / "export", meta)

    scorer = TeacherScorer(str(export))  # the label stage's loader
    assert scorer.meta["head"] == "verbalizer" and scorer.meta["lora"] == lora
    assert scorer.meta["answer_token_ids"] == answer_token_ids(tokenizer, "3class")
    assert (scorer.meta["logit_softcap"] is not None) == (family == "gemma2")
    torch.testing.assert_close(classifier_logits(scorer.model, ids, mask), trained, atol=1e-5, rtol=0)
    labelled = score_records(scorer.model, scorer.tokenizer, scorer.format, records(), 4096, swap_tta=False)
    want = torch.softmax(trained.double(), -1).numpy()
    assert abs(labelled.p_ab - want).max() < 1e-5
    predicted, _ = score(load_model(str(export)), records(), False, 4096, None)  # the predict stage's loader
    assert abs(predicted - want).max() < 1e-5

    out = export_causal_lm(export, tmp_path / "causal_lm")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    written = causal_answer_logits(out, ids, mask, scorer.meta["answer_token_ids"])
    torch.testing.assert_close(written, trained, atol=1e-4, rtol=0)
    with pytest.raises(Exception, match="did not write"):
        export_causal_lm(export, hub[family])  # never over someone else's folder

    import shutil

    from arena_dist.errors import InputError

    shipping = ship_code(shutil.copytree(hub[family], tmp_path / "base_with_code"), tmp_path / "imported")
    with pytest.raises(InputError, match="ships Python code"):  # a base given at export time is checked too
        export_causal_lm(export, tmp_path / "causal_lm_2", base_path=str(shipping))
    assert not (tmp_path / "imported").exists() and not (tmp_path / "causal_lm_2").exists()


def test_4bit_student_build_keeps_the_answer_rows_in_full_precision(hub):
    from arena_dist.models.build import build_classifier
    from arena_dist.models.quant import quantized_layer_counts
    from arena_dist.models.verbalizer import VerbalizerHead, answer_token_ids, output_embedding_rows

    tokenizer, fmt, cfg = setup(hub, "gemma2", quantization="4bit", lora={"r": 4, "alpha": 8, "dropout": 0.0})
    model = build_classifier(cfg, tokenizer, fmt)
    assert quantized_layer_counts(model)["Linear4bit"] > 0
    score = model.get_base_model().score
    trained = score.modules_to_save["default"]
    assert isinstance(trained, VerbalizerHead) and trained.weight.requires_grad and trained.softcap
    rows = output_embedding_rows(str(hub["gemma2"]), model.config, answer_token_ids(tokenizer, "3class"))
    assert torch.equal(trained.weight.float(), rows.float())
    ids, mask = batch(tokenizer, fmt)
    logits = classifier_logits(model.eval(), ids, mask)
    assert torch.isfinite(logits).all() and logits.abs().max() <= trained.softcap
