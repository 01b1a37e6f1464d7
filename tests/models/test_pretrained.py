"""`build_model` from hub-layout checkpoints of each family (tests/hub_checkpoints.py), one process: the body is the
checkpoint's, a new head (linear or MLP) is the seeded one, a classifier checkpoint keeps its head, and a causal-LM
checkpoint quantises to 4-bit NF4 / 8-bit at load with the head left in full precision."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hub_checkpoints import FAMILIES, build_all  # noqa: E402

from arena_dist.models.build import build_model  # noqa: E402
from arena_dist.models.config import ModelConfig  # noqa: E402


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    return build_all(root)


def body(path: Path, dtype=torch.float32) -> dict:
    from transformers import AutoModelForCausalLM

    return {k: v for k, v in AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).state_dict().items()
            if not k.startswith("lm_head")}


def logits(model, ids=((5, 9, 30, 7, 2), (11, 3, 8, 40, 6))):
    with torch.no_grad():
        return model.eval()(input_ids=torch.tensor(ids)).logits.float()


def last_hidden(model, ids=((5, 9, 30, 7, 2), (11, 3, 8, 40, 6))):
    with torch.no_grad():
        out = model.eval()(input_ids=torch.tensor(ids), output_hidden_states=True)
    return out.hidden_states[-1][:, -1].float()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_new_head_on_a_causal_lm_checkpoint(hub, family, head):
    path = hub[(family, "causal_lm")]
    cfg = ModelConfig(name_or_path=str(path), head=head, init_seed=4)
    model = build_model(cfg, 3, 0, for_training=False)
    state = model.state_dict()
    for key, value in body(path).items():
        assert torch.equal(state[key], value), key  # the checkpoint's body, as loaded
    again = build_model(cfg, 3, 0, for_training=False)
    other = build_model(cfg.model_copy(update={"init_seed": 5}), 3, 0, for_training=False)
    heads = [{k: v for k, v in m.state_dict().items() if k.startswith("score.")} for m in (model, again, other)]
    assert heads[0].keys() == heads[1].keys() and all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])
    assert not all(torch.equal(heads[0][k], heads[2][k]) for k in heads[0])  # the seed decides it
    assert all(v.abs().sum() > 0 for k, v in heads[0].items() if k.endswith("weight"))
    out = logits(model)
    assert out.shape == (2, 3) and torch.isfinite(out).all() and out.std() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_a_classifier_checkpoint_keeps_its_head(hub, family):
    from transformers import AutoModelForSequenceClassification

    path = hub[(family, "classifier")]
    model = build_model(ModelConfig(name_or_path=str(path)), 3, 0, for_training=False)
    plain = AutoModelForSequenceClassification.from_pretrained(
        str(path), attn_implementation=model.config._attn_implementation, pad_token_id=0)  # sdpa; Gemma-2 eager
    assert torch.equal(model.score.weight, plain.score.weight)
    assert torch.equal(logits(model), logits(plain))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_causal_lm_checkpoint_quantises_at_load(hub, family, quantization):
    from arena_dist.models.quant import quantized_layer_counts

    path = hub[(family, "causal_lm")]
    cfg = ModelConfig(name_or_path=str(path), head="mlp", quantization=quantization,
                      lora={"r": 4, "alpha": 8, "dropout": 0.0})
    model = build_model(cfg, 3, 0)  # as the student trains it: k-bit preparation and LoRA
    kind = "Linear4bit" if quantization == "4bit" else "Linear8bitLt"
    assert quantized_layer_counts(model)[kind] == 14  # 2 layers x (q, k, v, o, gate, up, down)
    head = model.get_base_model().score
    assert all(p.dtype == torch.float32 for p in head.parameters())  # the head is never quantised
    full = build_model(cfg.model_copy(update={"quantization": "none", "lora": None}), 3, 0, for_training=False)
    assert torch.isfinite(logits(model)).all()
    # The checkpoint's body, quantised: the last token's final hidden state points where the full-precision one
    # does (a body of other weights would be near-orthogonal); quantisation error keeps it from being equal.
    quantised, reference = last_hidden(model), last_hidden(full)
    similarity = torch.nn.functional.cosine_similarity(quantised, reference, dim=-1)
    assert similarity.min() > 0.8 and not torch.equal(quantised, reference), similarity


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_a_bf16_checkpoint_quantises_at_load(hub, tmp_path, quantization):
    """Hub checkpoints are mostly stored in bf16: the same load path from bf16 tensors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from arena_dist.models.quant import quantized_layer_counts

    source = hub[("llama", "causal_lm")]
    path = tmp_path / "llama-bf16"
    AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.bfloat16).save_pretrained(path, max_shard_size="40KB")
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(path)
    cfg = ModelConfig(name_or_path=str(path), head="mlp", quantization=quantization, dtype="bfloat16",
                      lora={"r": 4, "alpha": 8, "dropout": 0.0})
    model = build_model(cfg, 3, 0)
    kind = "Linear4bit" if quantization == "4bit" else "Linear8bitLt"
    assert quantized_layer_counts(model)[kind] == 14
    assert torch.isfinite(logits(model)).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_pooling_reads_the_last_real_token_with_pad_and_eos_mid_sequence(hub, family):
    """Each family's pad id (Llama-3: <|finetune_right_pad_id|>, not its eos, which ends every turn) and eos inside
    rows, as prompts can hold them: a right-padded batch's logits equal the head on each row's own last token, run
    unpadded. transformers pools the rightmost non-pad token, which is right for every row that does not end in
    the pad id; our templates end in the answer cue, and scoring refuses a row that would."""
    from arena_dist.formatting.tokenizer import load_tokenizer
    from arena_dist.label.batching import pad_right

    path = hub[(family, "classifier")]
    tokenizer = load_tokenizer(str(path))
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    assert pad != eos and (family != "llama" or tokenizer.pad_token == "<|finetune_right_pad_id|>")
    model = build_model(ModelConfig(name_or_path=str(path)), 3, pad, for_training=False).eval()
    rows = [[7, pad, 30, eos, 12], [9, 4, pad, pad, 21, 8, eos, 5, 40, 3], [pad, 11, 6], [13, eos, 2, 8, 9, pad, 17]]
    ids, mask = pad_right(rows, pad)
    with torch.no_grad():
        batched = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
        alone = torch.cat([model.score(model.model(input_ids=torch.tensor([row])).last_hidden_state[:, -1])
                           for row in rows])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)
