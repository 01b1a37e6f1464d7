"""Export -> reload (plain transformers for linear heads, load_export for all) gives identical logits."""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForSequenceClassification

from arena_dist.errors import InputError
from arena_dist.models.build import build_model
from arena_dist.models.export import load_export, read_export_meta, save_export
from arena_dist.models.tiny import TINY_ARCHS, tiny_model_config

META = {"label_mode": "3way", "template": "plain", "max_length": 64}


@pytest.fixture(scope="module")
def tokenizer():
    from arena_dist.formatting.tokenizer import load_tokenizer

    return load_tokenizer("local")


def inputs(tokenizer):
    enc = tokenizer(["which answer is better?", "a longer prompt with a few more words in it"],
                    padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def perturb(model):
    """Move every trainable weight off its init so a reload that silently re-initialises something is caught."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=gen) * 0.05)


@pytest.mark.parametrize("arch", TINY_ARCHS)
@pytest.mark.parametrize("head", ["linear", "mlp"])
@pytest.mark.parametrize("lora", [False, True])
def test_export_roundtrip(tmp_path, tokenizer, arch, head, lora):
    model = build_model(tiny_model_config(arch, head=head, lora=lora), 3, tokenizer.pad_token_id).eval()
    perturb(model)
    batch = inputs(tokenizer)
    with torch.no_grad():
        expected = model(**batch).logits
    out = save_export(model, tokenizer, tmp_path / "export", META)

    meta = read_export_meta(out)
    assert meta["head"] == head and meta["lora"] == lora and meta["num_labels"] == 3
    assert meta["max_length"] == 64 and meta["base"]["arch"] == arch
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pt"))

    reloaded, tok2, meta2 = load_export(out)
    assert tok2 is not None and tok2("hi")["input_ids"] == tokenizer("hi")["input_ids"]
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, expected)

    if lora:
        with safe_open(str(out / "adapter_model.safetensors"), framework="pt") as handle:
            keys = list(handle.keys())
            lora_b = [k for k in keys if "lora_B" in k]
            assert lora_b and any(handle.get_tensor(k).abs().sum() > 0 for k in lora_b)  # not an empty stub
            assert any("score" in k for k in keys)
    elif head == "linear":
        plain = AutoModelForSequenceClassification.from_pretrained(str(out), attn_implementation="eager").eval()
        with torch.no_grad():
            assert torch.equal(plain(**batch).logits, expected)


def test_missing_meta_keys(tmp_path, tokenizer):
    model = build_model(tiny_model_config("llama"), 2, tokenizer.pad_token_id)
    with pytest.raises(InputError, match="max_length"):
        save_export(model, tokenizer, tmp_path / "e", {"label_mode": "2way", "template": "plain"})
    assert not (tmp_path / "e").exists()


def test_not_an_export(tmp_path):
    with pytest.raises(InputError, match="arena_dist.json"):
        read_export_meta(tmp_path)
    (tmp_path / "arena_dist.json").write_text("{bad")
    with pytest.raises(InputError, match="unreadable"):
        read_export_meta(tmp_path)
