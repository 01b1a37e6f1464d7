"""Segment embeddings: the part of each token is read off the template's markers, and exports keep the module."""

import pytest
import torch

from arena_dist.errors import ConfigError
from arena_dist.formatting.encode import encode_record, segment_markers
from arena_dist.formatting.templates import FormatConfig
from arena_dist.models.build import build_model
from arena_dist.models.export import load_export, save_export
from arena_dist.models.segments import OTHER, RESPONSE_A, RESPONSE_B, segment_ids
from tiny_fixtures import tiny_model_config

RECORD = dict(id="r1", source="test", label=0, prompt=["first question", "second question"],
              response_a=["alpha one", "alpha two"], response_b=["beta one", "beta two"])


@pytest.fixture(scope="module")
def tokenizer():
    from arena_dist.formatting.tokenizer import load_tokenizer

    return load_tokenizer("local")


def words_by_segment(tokenizer, fmt, record=RECORD):
    ids = encode_record(record, tokenizer, fmt).input_ids
    segments = segment_ids(torch.tensor([ids]), segment_markers(tokenizer, fmt))[0].tolist()
    out = {OTHER: "", RESPONSE_A: "", RESPONSE_B: ""}
    for token, segment in zip(ids, segments):
        out[segment] += tokenizer.decode([token])
    return out


@pytest.mark.parametrize("template", ["llama3", "chatml", "gemma2"])
def test_each_part_of_a_multi_turn_comparison_gets_its_segment(tokenizer, template):
    parts = words_by_segment(tokenizer, FormatConfig(template=template, max_length=256))
    assert "alpha one" in parts[RESPONSE_A] and "alpha two" in parts[RESPONSE_A]
    assert "beta one" in parts[RESPONSE_B] and "beta two" in parts[RESPONSE_B]
    for word in ("question", "Judge", "tie"):
        assert word in parts[OTHER]
    assert "beta" not in parts[RESPONSE_A] + parts[OTHER]
    assert "alpha" not in parts[RESPONSE_B] + parts[OTHER]
    assert "question" not in parts[RESPONSE_A] + parts[RESPONSE_B]


def test_swapping_the_responses_swaps_their_segments(tokenizer):
    fmt = FormatConfig(template="llama3", max_length=256)
    swapped = dict(RECORD, response_a=RECORD["response_b"], response_b=RECORD["response_a"])
    plain, crossed = words_by_segment(tokenizer, fmt), words_by_segment(tokenizer, fmt, swapped)
    assert "alpha one" in crossed[RESPONSE_B] and "beta one" in crossed[RESPONSE_A]
    assert plain[OTHER] == crossed[OTHER]


def test_right_padding_does_not_move_segments(tokenizer):
    fmt = FormatConfig(template="llama3", max_length=256)
    ids = encode_record(RECORD, tokenizer, fmt).input_ids
    markers = segment_markers(tokenizer, fmt)
    padded = torch.tensor([ids + [tokenizer.pad_token_id] * 7])
    assert segment_ids(padded, markers)[0, : len(ids)].tolist() == segment_ids(torch.tensor([ids]), markers)[0].tolist()


def test_build_needs_markers_when_enabled(tokenizer):
    with pytest.raises(ConfigError, match="segment_embeddings"):
        build_model(tiny_model_config("llama", segment_embeddings=True), 3, tokenizer.pad_token_id)


@pytest.mark.parametrize("lora", [False, True])
def test_segment_embeddings_change_logits_and_survive_the_export(tmp_path, tokenizer, lora):
    fmt = FormatConfig(template="llama3", max_length=256)
    markers = segment_markers(tokenizer, fmt)
    cfg = tiny_model_config("llama", head="mlp", lora=lora, segment_embeddings=True, initializer_range=0.1)
    model = build_model(cfg, 3, tokenizer.pad_token_id, segment_markers=markers).eval()
    base = model.get_base_model() if lora else model
    batch = torch.tensor([encode_record(RECORD, tokenizer, fmt).input_ids])
    trained = base.segment_embedding.modules_to_save["default"] if lora else base.segment_embedding
    with torch.no_grad():
        generator = torch.Generator().manual_seed(3)
        for param in trained.parameters():  # "trained" values, away from the init
            param.copy_(torch.randn(param.shape, generator=generator))
        expected = model(input_ids=batch).logits
        for param in trained.parameters():  # each one, alone, is on the forward path
            saved = param.clone()
            param.zero_()
            assert not torch.allclose(model(input_ids=batch).logits, expected)
            param.copy_(saved)
    out = save_export(model, tokenizer, tmp_path / "export", {"label_mode": "3class", "template": "llama3",
                                                               "max_length": 256})
    reloaded, _, meta = load_export(out)
    assert meta["segment_markers"] == markers
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=batch).logits, expected)
