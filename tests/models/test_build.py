"""build_model: every arch x head x (full, LoRA) builds, runs forward, and has the head / adapters it should."""

import pytest
import torch

from arena_dist.models.build import build_model, count_parameters
from arena_dist.models.config import ModelConfig
from arena_dist.models.heads import MLPHead
from tiny_fixtures import TINY_ARCHS, tiny_model_config

PAD = 0


def batch(vocab: int = 100, rows: int = 3, length: int = 9):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (rows, length), generator=gen)
    mask = torch.ones_like(ids)
    ids[0, -3:] = PAD  # right padding: the classifier must read the last real token
    mask[0, -3:] = 0
    return ids, mask


@pytest.mark.parametrize("arch", TINY_ARCHS)
@pytest.mark.parametrize("head", ["linear", "mlp"])
@pytest.mark.parametrize("lora", [False, True])
def test_build_forward(arch, head, lora):
    model = build_model(tiny_model_config(arch, head=head, lora=lora, vocab_size=128), num_labels=3, pad_token_id=PAD)
    ids, mask = batch()
    logits = model(input_ids=ids, attention_mask=mask).logits
    assert logits.shape == (3, 3)
    assert torch.isfinite(logits).all()
    base = model.get_base_model() if lora else model
    score = base.score.original_module if lora else base.score
    assert isinstance(score, MLPHead) == (head == "mlp")
    trainable, total = count_parameters(model)
    if lora:
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        assert any("lora_A" in n for n in names) and any("modules_to_save" in n and "score" in n for n in names)
        assert trainable < total / 2
    else:
        assert trainable == total


@pytest.mark.parametrize("head,lora", [("linear", False), ("mlp", True)])
def test_random_init_is_seeded(head, lora):
    cfg = tiny_model_config("llama", head=head, lora=lora, vocab_size=128)
    first = build_model(cfg, 2, PAD).state_dict()
    torch.manual_seed(123)  # the caller's RNG state must not matter
    second = build_model(cfg, 2, PAD).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = build_model(cfg.model_copy(update={"init_seed": 1}), 2, PAD).state_dict()
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_default_vocab_is_local_tokenizer():
    from arena_dist.formatting.tokenizer import load_tokenizer

    model = build_model(tiny_model_config("qwen2"), 2, PAD)
    assert model.config.vocab_size == len(load_tokenizer("local"))


def test_config_errors():
    with pytest.raises(ValueError, match="exactly one"):
        ModelConfig(arch="llama", name_or_path="x")
    with pytest.raises(ValueError):
        ModelConfig(arch="llama", hidden_size=64, num_heads=5)
    with pytest.raises(ValueError):
        ModelConfig(arch="mistral")


def test_pretrained_base_code_runs_only_with_the_stage_configs_flag(tmp_path, ship_code):
    """The teacher / student builders take trust_remote_code from their own model config, nothing else: a base
    folder that ships code (auto_map) is built with transformers' own class while the flag is off."""
    from transformers import LlamaForSequenceClassification

    base = tmp_path / "base"
    build_model(tiny_model_config("llama", vocab_size=128), 3, PAD).save_pretrained(base)
    marker = tmp_path / "imported.txt"
    ship_code(base, marker)
    model = build_model(ModelConfig(name_or_path=str(base)), num_labels=3, pad_token_id=PAD)
    assert type(model) is LlamaForSequenceClassification and not marker.exists()


def test_flash_attention_2_without_flash_attn_is_a_config_error():
    """flash-attn is not installed here: the config says so at load, naming the key, not the first forward."""
    from pathlib import Path

    from arena_dist.config import load_config
    from arena_dist.errors import ConfigError
    from arena_dist.stages.teacher import Config

    assert ModelConfig(arch="llama").attn_implementation == "sdpa"
    path = Path(__file__).resolve().parents[2] / "launch" / "configs" / "teacher_tiny.yaml"
    with pytest.raises(ConfigError, match=r"model\.attn_implementation: .*flash-attn package, which is not installed"):
        load_config(Config, path, ["model.attn_implementation=flash_attention_2"])


def test_gemma2_sdpa_runs_eager_with_one_warning(capsys):
    """transformers cannot soft-cap Gemma-2's attention logits in sdpa: the build runs eager (logits identical to an
    eager build) and warns once per process however many models it builds; other families keep sdpa."""
    from arena_dist.models.build import GEMMA2_SDPA
    from arena_dist.quiet import say_once

    say_once.cache_clear()
    ids, mask = batch()
    gemma = [build_model(tiny_model_config("gemma2", vocab_size=128), 3, PAD) for _ in range(2)]
    assert capsys.readouterr().err.count(GEMMA2_SDPA) == 1
    assert "attn_logit_softcapping" in GEMMA2_SDPA and "quadratic" in GEMMA2_SDPA  # the trade-off, named
    eager = build_model(tiny_model_config("gemma2", vocab_size=128, attn_implementation="eager"), 3, PAD)
    assert gemma[0].config._attn_implementation == "eager"
    assert torch.equal(gemma[0](input_ids=ids, attention_mask=mask).logits,
                       eager(input_ids=ids, attention_mask=mask).logits)
    llama = build_model(tiny_model_config("llama", vocab_size=128), 3, PAD)
    assert llama.config._attn_implementation == "sdpa" and capsys.readouterr().err == ""
    llama_eager = build_model(tiny_model_config("llama", vocab_size=128, attn_implementation="eager"), 3, PAD)
    torch.testing.assert_close(llama(input_ids=ids, attention_mask=mask).logits,
                               llama_eager(input_ids=ids, attention_mask=mask).logits, atol=1e-5, rtol=0)


def test_inference_dtype_from_the_device_capabilities():
    """bfloat16 becomes float16 on a GPU without bf16 (T4) only; this CPU machine keeps what was asked."""
    from arena_dist.models.build import device_dtype
    from arena_dist.models.config import inference_dtype

    assert inference_dtype("bfloat16", cuda=True, bf16_supported=False) == "float16"
    assert inference_dtype("bfloat16", cuda=True, bf16_supported=True) == "bfloat16"
    assert inference_dtype("bfloat16", cuda=False, bf16_supported=False) == "bfloat16"
    for other in ("float16", "float32"):
        assert inference_dtype(other, cuda=True, bf16_supported=False) == other
    assert not torch.cuda.is_available() and device_dtype("bfloat16") == "bfloat16"
