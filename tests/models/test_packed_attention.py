"""Per-example attention for packed rows (arena_dist.models.packed_attention): the base kernel runs once per example
on that example's tokens only, packed logits equal the whole-square ones and the padded ones, padded batches are
untouched, and an export records the base kernel."""

import sys

import pytest
import torch

from arena_dist.models.build import build_model
from arena_dist.models.config import ModelConfig
from arena_dist.models.packed_attention import base_kernel, example_starts, use_per_example_attention
from arena_dist.train.data import Example, collate, split_targets
from arena_dist.train.packing import collate_packed, packed_logits

LENGTHS = [5, 11, 3, 8]


def tiny(arch: str, attn: str) -> ModelConfig:
    return ModelConfig(arch=arch, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64,
                       vocab_size=256, head="mlp", head_dropout=0.0, attn_implementation=attn)


def examples(lengths=LENGTHS):
    generator = torch.Generator().manual_seed(0)
    return [Example(torch.randint(5, 250, (n,), generator=generator).tolist(), i % 3) for i, n in enumerate(lengths)]


def test_example_starts_reads_one_packed_row_only():
    packed = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    assert example_starts(packed, 9) == [0, 3, 5]
    assert example_starts(torch.arange(9)[None], 9) is None  # one example: nothing to split
    assert example_starts(packed.expand(2, -1), 9) is None  # a batch of rows
    assert example_starts(None, 9) is None
    assert example_starts(packed, 8) is None  # not the row being attended


def test_base_kernel_names():
    assert base_kernel("packed_eager") == "eager" and base_kernel("packed_sdpa") == "sdpa"
    assert base_kernel("flash_attention_2") == "flash_attention_2" and base_kernel("eager") == "eager"


@pytest.mark.parametrize("arch,attn", [("llama", "eager"), ("llama", "sdpa"), ("qwen2", "sdpa"), ("gemma2", "eager")])
def test_the_base_kernel_runs_once_per_example_and_gives_the_whole_square_result(arch, attn, monkeypatch):
    torch.manual_seed(0)
    model = build_model(tiny(arch, attn), 3, 0).eval()
    inputs = split_targets(collate_packed(examples()))[0]
    square = packed_logits(model, model, inputs)
    assert use_per_example_attention(model) == "packed_" + attn

    seen = []
    if attn == "sdpa":
        import transformers.integrations.sdpa_attention as module

        name = "sdpa_attention_forward"
    else:
        module, name = sys.modules[type(model.model.layers[0].self_attn).__module__], "eager_attention_forward"
    base = getattr(module, name)

    def spy(attention, query, *args, **kwargs):
        seen.append(query.shape[2])
        return base(attention, query, *args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    per_example = packed_logits(model, model, inputs)
    assert seen == LENGTHS * 2  # each of the 2 layers attends each example alone
    assert (per_example - square).abs().max() < 1e-6
    padded = model(**split_targets(collate(examples(), 0))[0]).logits
    assert (per_example - padded).abs().max() < 1e-5


def test_padded_batches_go_to_the_base_kernel_unchanged():
    torch.manual_seed(0)
    model = build_model(tiny("llama", "eager"), 3, 0).eval()
    inputs = split_targets(collate(examples(), 0))[0]
    before = model(**inputs).logits
    use_per_example_attention(model)
    assert torch.equal(model(**inputs).logits, before)


def test_flash_attention_is_left_alone():
    model = build_model(tiny("llama", "eager"), 3, 0)
    model.config._attn_implementation_internal = "flash_attention_2"  # stands in: no flash-attn on the CPU
    assert use_per_example_attention(model) == "flash_attention_2"


def test_an_export_of_a_packed_run_records_the_base_kernel(tmp_path):
    from arena_dist.formatting.tokenizer import load_tokenizer
    from arena_dist.models.export import load_export, read_export_meta, save_export

    tokenizer = load_tokenizer("local")
    model = build_model(tiny("llama", "eager"), 3, tokenizer.pad_token_id)
    use_per_example_attention(model)
    out = save_export(model, tokenizer, tmp_path / "export", {"label_mode": "3class", "template": "llama3",
                                                              "max_length": 64})
    assert read_export_meta(out)["attn_implementation"] == "eager"
    assert load_export(out)[0].config._attn_implementation == "eager"
