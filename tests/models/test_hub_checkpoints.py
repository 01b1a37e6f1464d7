"""The hub-layout stand-ins (tests/hub_checkpoints.py) are what the hub serves: sharded safetensors with an index,
configs, and tokenizers with each family's real special tokens, loadable by path with plain transformers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hub_checkpoints import FAMILY, build_all  # noqa: E402


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    return build_all(root)


@pytest.mark.parametrize("family", sorted(FAMILY))
def test_layout_is_the_hubs(hub, family):
    causal = hub[(family, "causal_lm")]
    index = json.loads((causal / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and all((causal / shard).is_file() for shard in shards)
    assert not list(causal.glob("*.bin"))
    assert (causal / "generation_config.json").is_file() and (causal / "config.json").is_file()
    assert (causal / "tokenizer.json").is_file() and (causal / "tokenizer_config.json").is_file()


@pytest.mark.parametrize("family", sorted(FAMILY))
def test_loads_by_path_with_the_familys_special_tokens(hub, family):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    spec = FAMILY[family]
    path = hub[(family, "causal_lm")]
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    for token in spec.special_tokens:
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1, token
    assert tokenizer.eos_token == spec.eos and tokenizer.pad_token == spec.pad and tokenizer.bos_token == spec.bos
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                           add_generation_prompt=True)
    assert all(marker in prompt for marker in spec.special_tokens if marker in spec.chat_template)
    model = AutoModelForCausalLM.from_pretrained(str(path))
    assert type(model).__name__.endswith("ForCausalLM") and model.config.eos_token_id == tokenizer.eos_token_id
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    assert model(input_ids=ids).logits.shape[-1] == len(tokenizer)
    # A classifier on the causal-LM checkpoint: the body loads, the head is new (as for a hub instruct model).
    classifier = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=3)
    body = dict(classifier.named_parameters())
    for name, param in model.named_parameters():
        if not name.startswith("lm_head"):
            assert torch.equal(body[name], param), name
    saved = AutoModelForSequenceClassification.from_pretrained(str(hub[(family, "classifier")]))
    assert saved.config.num_labels == 3 and type(saved).__name__.endswith("ForSequenceClassification")


def test_llama3_pads_with_its_reserved_pad_token_not_eos(hub):
    from arena_dist.formatting.tokenizer import load_tokenizer

    llama = load_tokenizer(str(hub[("llama", "causal_lm")]))
    assert llama.pad_token == "<|finetune_right_pad_id|>" and llama.pad_token_id != llama.eos_token_id
    assert load_tokenizer(str(hub[("qwen2", "causal_lm")])).pad_token == "<|endoftext|>"  # declared: kept
    assert load_tokenizer(str(hub[("gemma2", "causal_lm")])).pad_token == "<pad>"
